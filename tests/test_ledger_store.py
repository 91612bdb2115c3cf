"""The ledger's tables on both engines: records stored once (and chained), the cursor, snapshots,
notices said once, bot runs; and metadata.yml (Datasette: SQLite): every table it describes exists
and every canned query runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sqlalchemy.exc import IntegrityError

from agent.ledger import Fill, Mark, Settlement, Snapshot
from chatops.store import TABLES, Store

ROOT = Path(__file__).resolve().parents[1]
A = "BTC-4DEC26-100000-C"


@pytest.fixture
def store(target):
    s = Store(target)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path):
    s = Store(tmp_path / "chatops.db")
    yield s
    s.close()


def test_records_are_stored_once_and_read_back(store):
    f = Fill("BTC-1", 1_000, A, "sell", 0.1, 0.01, 0.00003, "BTC-9", "cc-x-1", 95_000.0, "filled")
    s = Settlement(A, 5_000, -0.1, 0.02, 102_000.0)
    snap = Snapshot(6_000, 0.99, 102_000.0, (Mark(A, -0.1, 0.0),))
    assert store.record_ledger("BTC", [f], [s], {"trades_ms": 1_000}, snap) == (1, 1)
    assert store.record_ledger("BTC", [f], [s], {"trades_ms": 1_000}) == (0, 0)  # a re-read adds nothing
    assert store.ledger_fills("BTC") == [f] and store.ledger_settlements("BTC") == [s]
    assert store.ledger_cursor("BTC") == {"trades_ms": 1_000} and store.ledger_cursor("ETH") is None
    assert store.last_snapshot("BTC") == snap and store.snapshots("ETH") == []
    assert store.snapshot_at("BTC", None, first=True) == snap  # ts_ms is epoch ms: past 2**31 on PostgreSQL too
    for table in ("ledger_fills", "ledger_settlements"):
        with pytest.raises(IntegrityError, match="append-only"):
            store.db.execute(f"DELETE FROM {table}")
        with pytest.raises(IntegrityError, match="append-only"):
            store.db.execute(f"UPDATE {table} SET ts = 'x'")
    # Both joined the audit chain, once each (the re-read added no entry), and it verifies.
    chain = store.db.query("SELECT tbl FROM audit_chain WHERE tbl LIKE 'ledger_%' ORDER BY seq")
    assert [r["tbl"] for r in chain] == ["ledger_fills", "ledger_settlements"]
    assert store.verify_audit().ok


def test_a_fill_changed_behind_the_stores_back_breaks_the_chain(store, target):
    f = Fill("BTC-1", 1_764_000_000_000, A, "sell", 0.1, 0.01, 0.00003)
    store.record_ledger("BTC", [f], [], {})
    for stmt in store.db.drop_trigger("ledger_fills_no_update", "ledger_fills"):
        store.db.execute(stmt)
    store.db.execute("UPDATE ledger_fills SET price = 0.02")
    report = store.verify_audit()
    assert not report.ok and "ledger_fills #1" in report.as_text() and "rewritten" in report.as_text()


def test_decision_state_view_reads_nested_keys(store):
    from tests.store_helpers import decision

    store.record_decision(decision())
    row = store.db.query("SELECT spot, equity, candidates FROM decision_state")[0]
    assert row["spot"] > 0 and row["equity"] > 0 and row["candidates"] == 11


def test_a_notice_is_claimed_once(store):
    assert store.claim_notice("deep_itm:X", "deep_itm", "deep") is True
    assert store.claim_notice("deep_itm:X", "deep_itm", "deep") is False
    assert [n["key"] for n in store.notices_sent("deep_itm")] == ["deep_itm:X"]


def test_bot_runs_are_per_underlying(store):
    rid = store.record_bot_run(underlying="BTC", brain="rule", profile="research", dry_run=False,
                               exchange="paper (in process)", approval_mode="manual", channels=("telegram",))
    assert store.last_bot_run("ETH") is None
    run = store.last_bot_run("BTC")
    assert (run["id"], run["brain"], run["channels"], run["dry_run"], run["stopped_at"]) == (rid, "rule", ("telegram",), False, None)
    store.bot_heartbeat(rid, stopped=True)
    assert store.last_bot_run("BTC")["stopped_at"] is not None


def test_metadata_yml_describes_real_tables_and_its_queries_run(sqlite_store):
    store = sqlite_store
    meta = yaml.safe_load((ROOT / "metadata.yml").read_text())
    db = meta["databases"]["chatops"]
    names = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    assert set(db["tables"]) <= names, set(db["tables"]) - names
    assert {"premium_per_week", "fills", "decisions_by_source"} <= set(db["queries"])
    store.record_ledger("BTC", [Fill("BTC-1", 1_764_000_000_000, A, "sell", 0.1, 0.01, 0.00003)], [], {},
                        Snapshot(1_764_000_000_000, 1.0, 95_000.0))
    for name, q in db["queries"].items():
        store.db.execute(q["sql"]).fetchall()  # raises on a bad query
    week = store.db.execute(db["queries"]["premium_per_week"]["sql"]).fetchone()
    assert week[2] == pytest.approx(0.001) and week[4] == pytest.approx(0.00003)
    assert {"ledger_fills", "ledger_settlements", "account_snapshots"} <= set(TABLES)


def test_a_partial_fill_is_named_so():
    from chatops.ledger_service import fill_text

    part = Fill("BTC-2", 1_000, A, "sell", 0.1, 0.01, 0.00003, "BTC-9", "cc-x-2", 95_000.0, "open")
    full = Fill("BTC-3", 2_000, A, "sell", 0.1, 0.01, 0.00003, "BTC-9", "cc-x-2", 95_000.0, "filled")
    assert fill_text(part, "BTC").startswith("Partial fill: Sold 0.1 " + A + " at 0.0100 BTC ($95.00), fee 0.000030")
    assert fill_text(full, "BTC").startswith("Fill: Sold") and "[cc-x-2]" in fill_text(full, "BTC")
