"""The SQLite store: migrations, append-only audit, the proposal CAS, votes under concurrency
(threads and processes), expiry, flags, the event hash chain, outbox, review queries."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.models import (Action, ActionType, Decision, ExecutionResult, ExecutionStatus, OrderOutcome, OrderRequest,
                          RiskResult)
from agent.tick import compress_state, config_snapshot
from chatops import store as store_mod
from chatops.store import common as store_common
from chatops.store import (APPEND_ONLY_TABLES, MIGRATIONS, SCHEMA_VERSION, Store, StoreBusyError, connect, label_for,
                           migrate, schema_version, serialize_decision)
from tests.builders import NOW, candidate, settings, short_call, state

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self, t: datetime = NOW) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "sub" / "chatops.db"


@pytest.fixture
def store(db_path, clock):
    s = Store(db_path, now=clock)
    yield s
    s.close()


def open_action(n: int = 1, size: float = 0.1) -> Action:
    c = candidate(n)
    return Action(action=ActionType.OPEN_COVERED_CALL, underlying="BTC", symbol=c.instrument_name, size=size,
                  reasoning=f"Open: sell {c.instrument_name}", ref_sell_price=c.bid)


def decision(*, final: Action | None = None, ts: datetime = NOW, config: dict | None = None,
             llm_calls: tuple = (), proposed: Action | None = None, allowed: bool = True) -> Decision:
    st = state(candidates=[candidate(i, strike=96_000 + 2_000 * i) for i in range(1, 12)],
               positions=[short_call(1), short_call(2, strike=104_000)], ts=ts)
    proposed = proposed or final or Action(action=ActionType.DO_NOTHING, underlying="BTC",
                                           reasoning="Hold BTC-1POS-100000-C: no rule fires. | Hold BTC-2POS-104000-C: "
                                                     "no rule fires.")
    return Decision(
        timestamp=ts, underlying="BTC", state=compress_state(st), proposed_action=proposed,
        risk_check=RiskResult(allowed=allowed, checks=("margin ok", "delta ok")), final_action=final or proposed,
        config_snapshot=config if config is not None else config_snapshot(settings()),
        timings_ms={"state_ms": 120.5, "brain_ms": 0.7, "risk_ms": 0.1, "total_ms": 121.4}, requests=5,
        llm_calls=llm_calls,
    )


def new_proposal(store: Store, clock: Clock, *, n: int = 1, ttl: float = 300, required: int = 1):
    a = open_action(n)
    did = store.record_decision(decision(final=a, ts=clock()))
    return store.create_proposal(did, a, expires_at=clock() + timedelta(seconds=ttl), approvals_required=required)


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(path), isolation_level=None, timeout=5)


def kinds(store: Store, proposal_id: int | None = None) -> Counter:
    return Counter(e["kind"] for e in store.list_events(proposal_id=proposal_id, limit=100_000))


# --- opening and migrations --------------------------------------------------------------------


def test_fresh_file_has_schema_wal_foreign_keys_and_busy_timeout(store, db_path):
    assert db_path.exists()  # parent dir created
    names = set(store.db.table_names())
    for t in ("decisions", "proposals", "votes", "executions", "orders", "questions", "answers", "llm_calls", "events",
              "settings_changes", "flags", "messages", "outbox", "config_snapshots", "_migrations"):
        assert t in names
    assert store.db.journal_mode == "wal"
    assert store.db.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.db.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert schema_version(store.db) == SCHEMA_VERSION == len(MIGRATIONS)
    assert store.db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_migrations_are_idempotent(db_path, clock):
    Store(db_path, now=clock).close()
    first = list(connect(db_path).query("SELECT * FROM _migrations ORDER BY version"))
    clock.advance(3600)
    s = Store(db_path, now=clock)
    assert migrate(s.db) == []  # nothing left to apply
    assert list(s.db.query("SELECT * FROM _migrations ORDER BY version")) == first
    assert [r["name"] for r in first] == [name for name, _ in MIGRATIONS]
    s.close()


def test_a_v1_database_is_upgraded_keeping_its_rows(db_path, clock):
    db = connect(db_path)
    assert migrate(db, MIGRATIONS[:1]) == [1]
    assert schema_version(db) == 1
    assert not [i for i in db["decisions"].indexes if i.name == "idx_decisions_ts"]
    row = serialize_decision(decision())
    row.pop("config_json")
    db.conn.execute(f"INSERT INTO decisions ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))
    db.close()

    s = Store(db_path, now=clock)
    assert schema_version(s.db) == SCHEMA_VERSION
    assert {i.name for i in s.db["decisions"].indexes} >= {"idx_decisions_ts", "idx_decisions_action_ts"}
    assert {i.name for i in s.db["events"].indexes} >= {"idx_events_proposal"}
    old = s.get_decision(1)
    assert old["final_action"] == "DO_NOTHING" and old["state"]["n_cand"] == 11
    assert s.verify_audit().ok  # the old row joined the audit chain in the upgrade
    s.close()


def test_a_newer_schema_is_refused_with_one_line(db_path, clock):
    Store(db_path, now=clock).close()
    with raw(db_path) as c:
        c.execute("INSERT INTO _migrations VALUES (99, 'future', '2030-01-01T00:00:00.000000Z')")
    with pytest.raises(RuntimeError, match=r"schema v99 is newer than this code") as err:
        Store(db_path, now=clock)
    assert "\n" not in str(err.value)


# --- append-only audit -------------------------------------------------------------------------


@pytest.fixture
def full_store(store, clock):
    """One row in every table."""
    p = new_proposal(store, clock)
    store.add_vote(p.id, "alice", "telegram", "approve")
    store.transition(p.id, "pending", "approved", actor="alice", channel="telegram")
    store.transition(p.id, "approved", "executing", actor="agent", channel="executor")
    store.record_execution(p.id, execution_result(p.label))
    store.transition(p.id, "executing", "executed", actor="agent", channel="executor")
    q = store.record_question("bob", "slack", "why", "why this strike?", p.id)
    store.record_answer(q, "delta 0.25 at 7 DTE", "db")
    store.record_llm_call(mode="ask", valid=True, model="m", prompt="p", raw_response="{}")
    store.record_setting_change("max_delta", 0.3, 0.35, actor="alice", channel="cli")
    store.set_flag("paused", "0", actor="alice", channel="cli")
    store.save_message_ref(p.id, "telegram", 42, 1001)
    store.enqueue_outbox("slack", {"text": "hi"}, "timeout")
    from agent.orders import Leg, OrderEvent

    leg = Leg(label=p.label, role="single", instrument="BTC-1TEST-100000-C", side="sell", amount=0.1, state="filled",
              order_id="ord-1", filled=0.1, average_price=0.006)
    store.save_leg(p.id, 0, leg, [OrderEvent(kind="fill", label=p.label, order_id="ord-1", amount=0.1, filled=0.1,
                                             text="filled 0.1")])
    return store, p


def execution_result(label: str, status=ExecutionStatus.FILLED) -> ExecutionResult:
    req = OrderRequest(instrument_name="BTC-1TEST-100000-C", side="sell", amount=0.1, price=0.006, label=label)
    return ExecutionResult(status=status, dry_run=False, message="filled 0.1 at 0.006",
                           orders=(OrderOutcome(request=req, order_id="ord-1", order_state="filled", filled_amount=0.1,
                                                average_price=0.006),))


@pytest.mark.parametrize("table", APPEND_ONLY_TABLES)
def test_audit_tables_refuse_update_and_delete(full_store, db_path, table):
    store, _ = full_store
    c = raw(db_path)
    assert c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] >= 1
    with pytest.raises(sqlite3.IntegrityError, match="append-only table"):
        c.execute(f"UPDATE {table} SET id = id")
    with pytest.raises(sqlite3.IntegrityError, match="append-only table"):
        c.execute(f"DELETE FROM {table}")
    assert c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] >= 1
    c.close()


def test_proposals_are_never_deleted_and_only_status_changes(full_store, db_path):
    _, p = full_store
    c = raw(db_path)
    with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
        c.execute("DELETE FROM proposals WHERE id = ?", [p.id])
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        c.execute("UPDATE proposals SET size = 5 WHERE id = ?", [p.id])
    with pytest.raises(sqlite3.IntegrityError, match="label is set once"):
        c.execute("UPDATE proposals SET label = 'cc-999' WHERE id = ?", [p.id])
    c.close()


def test_mutable_tables_can_change(full_store, db_path):
    store, p = full_store
    store.save_message_ref(p.id, "telegram", 42, 2002)  # re-post replaces the ref
    assert [m.message_id for m in store.message_refs(p.id)] == ["2002"]
    store.set_flag("paused", "1", actor="alice", channel="cli")
    assert store.get_flag("paused") == "1"


# --- proposals and the compare-and-swap --------------------------------------------------------


def test_create_proposal_sets_label_status_and_event(store, clock):
    p = new_proposal(store, clock, required=2)
    assert p.status == "pending" and p.label == label_for(p.id, store.instance_id) == f"cc-{store.instance_id}-{p.id}"
    assert p.approvals_required == 2 and p.symbol == open_action().symbol and p.size == 0.1
    assert p.expires_at == clock() + timedelta(seconds=300)
    assert p.to_action() == open_action()
    ev = store.list_events(proposal_id=p.id)
    assert [e["kind"] for e in ev] == ["proposal_created"]
    assert ev[0]["data"]["approvals_required"] == 2 and ev[0]["decision_id"] == p.decision_id


def test_transition_wins_once_and_loses_on_wrong_status(store, clock):
    p = new_proposal(store, clock)
    clock.advance(10)
    assert store.add_vote(p.id, "alice", "slack", "approve")  # the quorum trigger wants the vote on record
    assert store.transition(p.id, "pending", "approved", actor="alice", channel="slack", reason="looks fine")
    assert not store.transition(p.id, "pending", "approved", actor="bob", channel="telegram")
    assert not store.transition(p.id, "pending", "rejected", actor="bob", channel="telegram")
    assert not store.transition(p.id, ("executing",), "executed", actor="agent", channel="executor")
    assert not store.transition(9999, "pending", "approved", actor="x", channel="cli")
    row = store.get_proposal(p.id)
    assert (row.status, row.decided_by, row.status_reason) == ("approved", "alice", "looks fine")
    assert row.decided_at == clock() and row.updated_at == clock()
    assert kinds(store, p.id)["proposal_approved"] == 1
    ev = store.list_events(proposal_id=p.id, kind="proposal_approved")[0]
    assert (ev["actor"], ev["channel"], ev["data"]) == ("alice", "slack", {"from": "pending", "to": "approved"})
    assert store.transition(p.id, ("approved",), "executing", actor="agent", channel="executor")
    assert store.get_proposal(p.id).decided_by == "alice"  # decided_by is who moved it out of pending


def test_illegal_transitions_and_unknown_statuses_are_refused(store, clock):
    p = new_proposal(store, clock)
    with pytest.raises(ValueError, match="illegal proposal transition pending -> executed"):
        store.transition(p.id, "pending", "executed", actor="x", channel="cli")
    with pytest.raises(ValueError, match="unknown proposal status"):
        store.transition(p.id, "pending", "done", actor="x", channel="cli")
    assert store.get_proposal(p.id).status == "pending"


def test_a_failed_write_leaves_nothing(store, clock):
    p = new_proposal(store, clock)
    store.add_vote(p.id, "alice", "cli", "approve")
    before = store.list_events()
    with pytest.raises(RuntimeError, match="boom"):
        with store.write():
            store.transition(p.id, "pending", "approved", actor="alice", channel="cli")
            raise RuntimeError("boom")
    assert store.get_proposal(p.id).status == "pending"
    assert store.list_events() == before


# --- votes -------------------------------------------------------------------------------------


def test_add_vote_once_per_person(store, clock):
    p = new_proposal(store, clock)
    assert store.add_vote(p.id, "alice", "telegram", "approve", person="alice")
    assert not store.add_vote(p.id, "U1", "slack", "reject", person="alice")  # same person, other channel: one vote
    assert store.add_vote(p.id, "bob", "slack", "reject", "too close to spot")  # no person given: slack:bob
    assert store.add_vote(p.id, "bob", "cli", "approve")  # console:bob is another identity than slack:bob
    assert not store.add_vote(p.id, "bob", "console", "approve")  # the CLI and the terminal share a namespace
    assert [(v.user, v.channel, v.vote, v.reason, v.person) for v in store.votes(p.id)] == [
        ("alice", "telegram", "approve", None, "alice"), ("bob", "slack", "reject", "too close to spot", "slack:bob"),
        ("bob", "cli", "approve", None, "console:bob")]
    assert store.approve_count(p.id) == 2
    assert kinds(store, p.id)["vote"] == 3
    with pytest.raises(ValueError, match="vote must be"):
        store.add_vote(p.id, "carol", "cli", "maybe")


def test_n_approvals_are_required(store, clock):
    p = new_proposal(store, clock, required=3)
    outs = [store.vote_and_maybe_approve(p.id, u, "telegram", "approve") for u in ("a", "b", "a", "c", "d")]
    assert [o.kind for o in outs] == ["recorded", "recorded", "already_voted", "approved", "not_pending"]
    assert [o.approvals for o in outs] == [1, 2, 2, 3, 3]
    assert outs[3].status == "approved" and outs[4].status == "approved"
    assert store.get_proposal(p.id).decided_by == "c"
    assert kinds(store, p.id)["proposal_approved"] == 1 and store.approve_count(p.id) == 3


def test_one_reject_vetoes(store, clock):
    p = new_proposal(store, clock, required=2)
    assert store.vote_and_maybe_approve(p.id, "a", "slack", "approve").kind == "recorded"
    out = store.vote_and_maybe_approve(p.id, "b", "telegram", "reject", "strike too low")
    assert (out.kind, out.status) == ("rejected", "rejected")
    assert store.vote_and_maybe_approve(p.id, "c", "slack", "approve").kind == "not_pending"
    row = store.get_proposal(p.id)
    assert (row.status, row.decided_by, row.status_reason) == ("rejected", "b", "strike too low")


def test_the_quorum_is_the_proposals_own_not_the_callers(store, clock):
    p = new_proposal(store, clock, required=3)
    with pytest.raises(ValueError, match="needs 3 approvals"):
        store.vote_and_maybe_approve(p.id, "a", "cli", "approve", "in a hurry", 1)
    with pytest.raises(ValueError, match="manual mode"):  # `auto` approves only what was made in auto mode
        store.vote_and_maybe_approve(p.id, "auto", "auto", "approve", "within limits")
    assert store.votes(p.id) == [] and store.get_proposal(p.id).status == "pending"


def test_vote_after_expiry_expires_and_unknown_is_reported(store, clock):
    p = new_proposal(store, clock, ttl=60)
    clock.advance(61)
    out = store.vote_and_maybe_approve(p.id, "a", "slack", "approve")
    assert (out.kind, out.status) == ("expired", "expired")
    assert store.votes(p.id) == []  # a vote on an expired proposal is not recorded
    assert store.vote_and_maybe_approve(p.id, "b", "slack", "approve").kind == "not_pending"
    assert store.vote_and_maybe_approve(4242, "a", "slack", "approve").kind == "unknown"


def _race(n: int, fn) -> list:
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_50_threads_on_one_store_give_exactly_one_approval(store, clock):
    p = new_proposal(store, clock, required=3)
    outs = _race(50, lambda i: store.vote_and_maybe_approve(p.id, f"u{i}", "telegram", "approve").kind)
    assert Counter(outs) == {"approved": 1, "recorded": 2, "not_pending": 47}
    assert kinds(store, p.id)["proposal_approved"] == 1
    assert store.approve_count(p.id) == 3
    assert store.verify_chain().ok


def test_50_threads_with_their_own_connections_give_exactly_one_approval(db_path, clock):
    s = Store(db_path, now=clock)
    p = new_proposal(s, clock, required=1)
    stores = [Store(db_path, now=clock) for _ in range(50)]
    outs = _race(50, lambda i: stores[i].vote_and_maybe_approve(p.id, f"u{i}", "slack", "approve").kind)
    for x in stores:
        x.close()
    assert Counter(outs) == {"approved": 1, "not_pending": 49}
    assert kinds(s, p.id)["proposal_approved"] == 1 and len(s.votes(p.id)) == 1
    assert s.verify_chain().ok
    s.close()


CHILD = r"""
import json, os, sys, time
from chatops.store import Store
path, pid, first, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
s = Store(path)
open(f"{go}.ready{first}", "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
print(json.dumps([s.vote_and_maybe_approve(pid, f"u{i}", "cli", "approve", None, 3).kind
                  for i in range(first, first + n)]))
"""


def test_50_votes_from_5_processes_give_exactly_one_approval(db_path):
    s = Store(db_path)  # real clock: the children use theirs
    did = s.record_decision(decision(final=open_action(), ts=datetime.now(timezone.utc)))
    p = s.create_proposal(did, open_action(), expires_at=datetime.now(timezone.utc) + timedelta(hours=1),
                          approvals_required=3)
    go = db_path.parent / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(db_path), str(p.id), str(10 * k), "10", str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for k in range(5)]
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.ready{10 * k}").exists() for k in range(5)):  # all imported and open
        assert time.monotonic() < deadline and all(proc.poll() is None for proc in procs), "a child did not start"
        time.sleep(0.01)
    go.touch()
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outs += json.loads(out)
    assert len(outs) == 50
    assert Counter(outs) == {"approved": 1, "recorded": 2, "not_pending": 47}
    assert kinds(s, p.id)["proposal_approved"] == 1
    assert s.get_proposal(p.id).status == "approved" and s.approve_count(p.id) == 3
    assert s.verify_chain().ok
    s.close()


# --- expiry, flags, settings -------------------------------------------------------------------


def test_expiry_sweep(store, clock):
    short = new_proposal(store, clock, n=1, ttl=60)
    long = new_proposal(store, clock, n=2, ttl=600)
    approved = new_proposal(store, clock, n=3, ttl=60)
    assert store.vote_and_maybe_approve(approved.id, "a", "cli", "approve").kind == "approved"
    assert store.expire_due(clock() + timedelta(seconds=59)) == []
    assert store.expire_due(clock() + timedelta(seconds=120)) == [short.id]
    assert store.expire_due(clock() + timedelta(seconds=120)) == []  # each expires once
    assert [p.id for p in store.pending_proposals("BTC")] == [long.id]
    assert store.get_proposal(approved.id).status == "approved"  # only pending ones expire
    assert kinds(store)["proposal_expired"] == 1
    assert store.vote_and_maybe_approve(short.id, "b", "cli", "approve").kind == "not_pending"


def test_paused_flag_survives_reopen(db_path, clock):
    s = Store(db_path, now=clock)
    assert s.get_flag("paused", "0") == "0"
    s.set_flag("paused", "1", actor="alice", channel="telegram", reason="market is wild")
    s.close()
    s = Store(db_path, now=clock)
    assert s.get_flag("paused", "0") == "1"
    ev = s.list_events(kind="flag_set")
    assert len(ev) == 1 and ev[0]["data"] == {"key": "paused", "old": None, "new": "1"}
    assert ev[0]["reason"] == "market is wild" and ev[0]["actor"] == "alice"
    s.close()


def test_setting_changes_are_recorded_and_secrets_redacted(store):
    store.record_setting_change("max_delta", 0.3, 0.35, actor="alice", channel="cli", reason="wider band")
    store.record_setting_change("TELEGRAM_BOT_TOKEN", "123:abc", "456:def", actor="alice", channel="cli")
    rows = store.settings_changes()
    assert [(r["key"], r["old"], r["new"]) for r in rows] == [
        ("TELEGRAM_BOT_TOKEN", "***", "***"), ("max_delta", "0.3", "0.35")]
    assert kinds(store)["setting_changed"] == 2
    assert "abc" not in json.dumps(store.list_events())


# --- the hash chain ----------------------------------------------------------------------------


def _events(store: Store, n: int) -> None:
    for i in range(n):
        store.append_event("note", actor="t", channel="cli", reason=f"event {i}", data={"i": i})


def test_verify_chain_accepts_an_intact_chain(store):
    _events(store, 10)
    rep = store.verify_chain(batch=3)  # batches cross row boundaries
    assert (rep.ok, rep.checked, rep.first_broken_id) == (True, 10, None)
    assert rep.head_hash == store.list_events(order="desc", limit=1)[0]["hash"]


def test_verify_chain_names_an_edited_row(store, db_path):
    _events(store, 6)
    c = raw(db_path)
    c.execute("DROP TRIGGER events_no_update")
    c.execute("UPDATE events SET reason = 'nothing happened' WHERE id = 4")
    c.close()
    rep = store.verify_chain()
    assert (rep.ok, rep.first_broken_id, rep.checked) == (False, 4, 3)
    assert "event 4 content changed" in rep.reason


def test_verify_chain_names_a_rehashed_row_by_its_successor(store, db_path):
    _events(store, 6)
    ev = store.list_events()[2]  # id 3
    forged = dict(ev, reason="forged", data_json=json.dumps(ev["data"], separators=(",", ":")))
    forged_hash = store_common._hash_event(ev["prev_hash"], forged)
    c = raw(db_path)
    c.execute("DROP TRIGGER events_no_update")
    c.execute("UPDATE events SET reason = 'forged', hash = ? WHERE id = 3", [forged_hash])
    c.close()
    rep = store.verify_chain()
    assert (rep.ok, rep.first_broken_id) == (False, 4)
    assert "does not link to event 3" in rep.reason


def test_verify_chain_names_a_deleted_row(store, db_path):
    _events(store, 6)
    c = raw(db_path)
    c.execute("DROP TRIGGER events_no_delete")
    c.execute("DELETE FROM events WHERE id = 3")
    c.close()
    rep = store.verify_chain()
    assert (rep.ok, rep.first_broken_id) == (False, 4)
    assert "deleted" in rep.reason and "jump from 2 to 4" in rep.reason


# --- outbox and message refs -------------------------------------------------------------------


def test_outbox_cycle(store, clock):
    a = store.enqueue_outbox("telegram", {"text": "first"}, "HTTP 502")
    b = store.enqueue_outbox("telegram", {"text": "second"}, "HTTP 502")
    other = store.enqueue_outbox("slack", {"text": "x"}, "timeout")
    assert [(i.id, i.payload["text"], i.attempts) for i in store.due_outbox("telegram")] == [
        (a, "first", 1), (b, "second", 1)]
    store.mark_outbox_attempt(a, "HTTP 429", clock() + timedelta(seconds=30))
    assert [i.id for i in store.due_outbox("telegram")] == [b]
    assert store.mark_outbox_delivered(b)
    assert not store.mark_outbox_delivered(b)
    assert store.due_outbox("telegram") == []
    clock.advance(31)
    due = store.due_outbox("telegram")
    assert [(i.id, i.attempts, i.last_error) for i in due] == [(a, 2, "HTTP 429")]
    assert store.mark_outbox_delivered(a)
    assert store.due_outbox("telegram") == []
    assert store.outbox_item(a).delivered_at == clock()
    assert [i.id for i in store.due_outbox("slack")] == [other]


def test_message_refs_per_channel_and_chat(store, clock):
    p = new_proposal(store, clock)
    store.save_message_ref(p.id, "telegram", -100123, 55)
    store.save_message_ref(p.id, "slack", "C042", "1712345678.000100")
    refs = store.message_refs(p.id)
    assert [(r.channel, r.chat_id, r.message_id) for r in refs] == [
        ("telegram", "-100123", "55"), ("slack", "C042", "1712345678.000100")]
    assert [r.message_id for r in store.message_refs(p.id, "slack")] == ["1712345678.000100"]


# --- decisions ---------------------------------------------------------------------------------


def test_decision_row_is_compact_and_round_trips(store, clock):
    d = decision()
    did = store.record_decision(d)
    c = store.db.conn
    size = c.execute("SELECT " + " + ".join(f"COALESCE(LENGTH(CAST({col} AS BLOB)), 8)" for col in store_mod.DECISION_COLUMNS)
                     + " FROM decisions WHERE id = ?", [did]).fetchone()[0]
    assert size < 2048, size
    assert c.execute("SELECT final_json FROM decisions WHERE id = ?", [did]).fetchone()[0] is None  # same as proposed
    assert c.execute("SELECT json_extract(state_json, '$.n_cand') FROM decisions WHERE id = ?", [did]).fetchone()[0] == 11
    assert c.execute("SELECT json_extract(final_json, '$.action') FROM decisions_full WHERE id = ?",
                     [did]).fetchone()[0] == "DO_NOTHING"
    back = store.decision_model(did)
    assert back == d.model_copy(update={"state": back.state})
    assert back.state == json.loads(json.dumps(d.state))


def test_config_snapshots_are_stored_once(store):
    for i in range(3):
        store.record_decision(decision(ts=NOW + timedelta(minutes=5 * i)))
    store.record_decision(decision(ts=NOW + timedelta(minutes=15), config={**config_snapshot(settings()), "max_delta": 0.35}))
    assert store.db["config_snapshots"].count == 2
    assert [d["config"]["max_delta"] for d in store.list_decisions(order="asc")] == [0.3, 0.3, 0.3, 0.35]


def test_blocked_decision_keeps_both_actions(store):
    a = open_action()
    blocked = Action(action=ActionType.DO_NOTHING, underlying="BTC", reasoning="Risk engine blocked: margin")
    did = store.record_decision(decision(proposed=a, final=blocked, allowed=False))
    d = store.get_decision(did)
    assert (d["proposed_action"], d["final_action"], d["risk_allowed"]) == ("OPEN_COVERED_CALL", "DO_NOTHING", False)
    assert d["proposed"]["symbol"] == a.symbol and d["final"]["reasoning"].startswith("Risk engine blocked")


@pytest.mark.parametrize("config", [
    {"openai_api_key": "sk-live-123"},
    {"TELEGRAM_BOT_TOKEN": "123:abc"},
    {"deribit": {"client_secret": "s3cr3t"}},
    {"db_password": "hunter2"},
])
def test_record_decision_refuses_unredacted_secrets(store, config):
    with pytest.raises(ValueError, match="looks like a secret and is not redacted"):
        store.record_decision(decision(config=config))
    assert store.db["decisions"].count == 0


def test_redacted_or_harmless_keys_are_accepted(store):
    did = store.record_decision(decision(config={"openai_api_key": "***", "slack_bot_token": None,
                                                 "deribit_client_secret": "", "max_tokens": 1000, "monkey": "x"}))
    assert store.get_decision(did)["config"] == {"openai_api_key": "***", "deribit_client_secret": "",
                                                  "max_tokens": 1000, "monkey": "x"}


def test_llm_calls_of_a_decision_and_stats(store, clock):
    calls = ({"model": "gpt-4.1-mini", "prompt": "p", "raw_response": '{"action":"DO_NOTHING"}', "parsed": {"a": 1},
              "valid": True, "tokens_in": 900, "tokens_out": 40, "latency_ms": 800.0, "cost_usd": 0.0004},
             {"model": "gpt-4.1-mini", "raw_response": "garbage", "valid": False, "error": "not JSON",
              "prompt_tokens": 900, "completion_tokens": 3, "mode": "weird"})
    did = store.record_decision(decision(llm_calls=calls))
    store.record_llm_call(mode="ask", valid=True, model="m", tokens_in=100, tokens_out=10, decision_id=None)
    rows = list(store.iter_rows("llm_calls"))
    assert [r["decision_id"] for r in rows] == [did, did, None]
    assert rows[1]["tokens_in"] == 900 and json.loads(rows[1]["extra_json"]) == {"mode": "weird"}
    stats = store.llm_stats(NOW - timedelta(days=1))
    assert (stats["calls"], stats["invalid"], stats["fallbacks"], stats["tokens_in"], stats["tokens_out"]) == (
        3, 1, 1, 1900, 53)
    assert stats["tokens"] == 1953 and stats["errors"] == 1
    assert stats["by_mode"] == {"drive": 2, "ask": 1}
    assert store.llm_stats(NOW + timedelta(days=1))["calls"] == 0


def test_llm_call_records_of_the_llm_module_are_stored(store):
    from dataclasses import asdict

    from agent.llm import LLMCallRecord

    rec = LLMCallRecord(model="gpt-4.1-mini", prompt="p", raw_response='{"action":"DO_NOTHING"}',
                        parsed={"action": "DO_NOTHING"}, valid=True, error=None, tokens_in=700, tokens_out=30,
                        latency_ms=512.0, cost_usd=0.0003, finish_reason="stop", attempts=2, reasoning_tokens=12,
                        cached_tokens=640)
    did = store.record_decision(decision(llm_calls=(asdict(rec),)))
    qid = store.record_llm_call(decision_id=None, **{**asdict(rec), "mode": "ask", "parsed": None,
                                                       "parsed_json": '{"a": 1}', "tokens_in": None, "prompt_tokens": 5})
    first, second = store.iter_rows("llm_calls")
    assert (first["decision_id"], first["mode"], json.loads(first["parsed_json"])) == (did, "drive",
                                                                                      {"action": "DO_NOTHING"})
    assert json.loads(first["extra_json"]) == {"finish_reason": "stop", "tokens_estimated": False, "attempts": 2,
                                               "structured": True}
    assert (first["reasoning_tokens"], first["cached_tokens"]) == (12, 640)
    assert store.llm_stats()["reasoning_tokens"] == 24 and store.llm_stats()["cached_tokens"] == 1280
    assert (second["id"], json.loads(second["parsed_json"]), second["tokens_in"]) == (qid, {"a": 1}, 5)


@pytest.mark.parametrize("ref, pid, did", [(12, 12, None), ("12", 12, None), ("#12", 12, None), ("cc-12", 12, None),
                                           ("d34", None, 34), ("D34", None, 34), ("yesterday", None, None),
                                           (None, None, None)])
def test_question_refs_are_parsed(store, ref, pid, did):
    qid = store.record_question("bob", "slack", "why", "why?", ref)
    (q,) = store.iter_rows("questions", id=qid)
    assert (q["proposal_id"], q["decision_id"]) == (pid, did)
    assert q["ref"] == (None if ref is None else str(ref))


def test_review_queries(store, clock):
    for i in range(6):
        final = open_action(i) if i % 3 == 0 else None
        store.record_decision(decision(final=final, ts=NOW + timedelta(minutes=5 * i)))
    last = store.list_decisions(limit=2)
    assert [d["ts"] for d in last] == [store_mod.iso(NOW + timedelta(minutes=25)), store_mod.iso(NOW + timedelta(minutes=20))]
    assert last[0]["reasoning"].startswith("Hold")
    opens = store.list_decisions(action="OPEN_COVERED_CALL", order="asc", full=False)
    assert [d["final_symbol"] for d in opens] == [open_action(0).symbol, open_action(3).symbol]
    window = store.list_decisions(since=NOW + timedelta(minutes=5), until=NOW + timedelta(minutes=15))
    assert len(window) == 2
    assert store.last_tick_at() == NOW + timedelta(minutes=25)
    assert store.last_decision()["id"] == 6
    p1, p2 = new_proposal(store, clock, n=1), new_proposal(store, clock, n=2)
    store.transition(p1.id, "pending", "cancelled", actor="a", channel="cli")
    assert [p.id for p in store.list_proposals(status="cancelled")] == [p1.id]
    assert [p.id for p in store.list_proposals()] == [p2.id, p1.id]
    assert store.latest_proposal().id == p2.id
    assert [p.id for p in store.proposals_in_status("pending", "cancelled")] == [p1.id, p2.id]
    assert [e["kind"] for e in store.list_events(kind="proposal_cancelled")] == ["proposal_cancelled"]
    all_ids = [e["id"] for e in store.list_events()]
    assert all_ids == [1, 2, 3]
    assert [e["id"] for e in store.list_events(limit=2)] == [2, 3]  # the latest 2, oldest first
    assert [e["id"] for e in store.list_events(limit=2, order="desc")] == [3, 2]


def test_iter_rows_pages_and_filters(store, clock):
    for i in range(7):
        store.append_event("tick" if i % 2 else "note", actor="t", channel="cli", data={"i": i})
    assert [r["id"] for r in store.iter_rows("events", batch_size=2)] == list(range(1, 8))
    assert [json.loads(r["data_json"])["i"] for r in store.iter_rows("events", kind="tick", batch_size=2)] == [1, 3, 5]
    assert [r["id"] for r in store.iter_rows("events", order="desc", batch_size=3)] == list(range(7, 0, -1))
    store.set_flag("paused", "1", actor="a", channel="cli")
    assert [r["key"] for r in store.iter_rows("flags")] == ["instance_id", "paused"]
    with pytest.raises(ValueError, match="unknown table"):
        list(store.iter_rows("sqlite_master"))
    with pytest.raises(ValueError, match="no column"):
        list(store.iter_rows("events", nope=1))


def test_review_queries_use_the_indexes(store):
    plan = lambda sql: " ".join(r[3] for r in store.db.conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall())  # noqa: E731
    assert "idx_decisions_ts" in plan("SELECT * FROM decisions ORDER BY ts DESC, id DESC LIMIT 100")
    assert "idx_decisions_action_ts" in plan(
        "SELECT * FROM decisions WHERE final_action = 'OPEN_COVERED_CALL' ORDER BY ts DESC, id DESC LIMIT 100")
    assert "idx_events_proposal" in plan("SELECT * FROM events WHERE proposal_id = 1 ORDER BY id")
    assert "idx_proposals_status" in plan("SELECT id FROM proposals WHERE status = 'pending' AND expires_at <= 'x'")
    assert "idx_proposals_underlying_status" in plan(
        "SELECT * FROM proposals WHERE underlying = 'BTC' AND status = 'executed'")
    assert "sqlite_autoindex_votes" in plan("SELECT * FROM votes WHERE proposal_id = 1")


# --- a proposal's story and the policy's history ----------------------------------------------


def test_proposal_story(full_store):
    store, p = full_store
    story = store.proposal_story(p.id)
    assert story["proposal"]["status"] == "executed" and story["proposal"]["label"] == p.label
    assert story["proposal"]["action_obj"]["symbol"] == p.symbol
    assert story["decision"]["id"] == p.decision_id and story["decision"]["final"]["symbol"] == p.symbol
    assert [(v["user"], v["vote"]) for v in story["votes"]] == [("alice", "approve")]
    assert [e["kind"] for e in story["events"]] == ["proposal_created", "vote", "proposal_approved",
                                                    "proposal_executing", "execution_recorded", "proposal_executed",
                                                    "order_fill"]
    (ex,) = story["executions"]
    assert ex["status"] == "filled" and ex["dry_run"] is False and ex["result"]["message"] == "filled 0.1 at 0.006"
    assert [(o["order_id"], o["label"], o["filled_amount"]) for o in ex["orders"]] == [("ord-1", p.label, 0.1)]
    (q,) = story["questions"]
    assert q["text"] == "why this strike?" and [a["source"] for a in q["answers"]] == ["db"]
    assert [(m["channel"], m["chat_id"], m["message_id"]) for m in story["messages"]] == [("telegram", "42", "1001")]
    assert store.proposal_story(9999) is None


def _executed(store: Store, clock: Clock, action: Action) -> int:
    did = store.record_decision(decision(final=action, ts=clock()))
    p = store.create_proposal(did, action, expires_at=clock() + timedelta(minutes=5), approvals_required=1)
    store.vote_and_maybe_approve(p.id, "alice", "cli", "approve")
    store.transition(p.id, "approved", "executing", actor="agent", channel="executor")
    store.transition(p.id, "executing", "executed", actor="agent", channel="executor")
    return p.id


def test_history_for_policy(store, clock):
    A, B, C, X = "BTC-A-100000-C", "BTC-B-104000-C", "BTC-C-108000-C", "BTC-X-99000-C"
    t_open = clock()
    _executed(store, clock, Action(action=ActionType.OPEN_COVERED_CALL, underlying="BTC", symbol=A, size=0.1))
    _executed(store, clock, Action(action=ActionType.OPEN_COVERED_CALL, underlying="BTC", symbol=X, size=0.1))
    clock.advance(3600)
    t_roll1 = clock()
    _executed(store, clock, Action(action=ActionType.ROLL_COVERED_CALL, underlying="BTC", symbol=B, roll_from=A,
                                   size=0.1))
    clock.advance(3600)
    _executed(store, clock, Action(action=ActionType.CLOSE_COVERED_CALL, underlying="BTC", symbol=X, size=0.1))
    clock.advance(3600)
    t_roll2 = clock()
    _executed(store, clock, Action(action=ActionType.ROLL_COVERED_CALL, underlying="BTC", symbol=C, roll_from=B,
                                   size=0.1))
    # Not executed: ignored.
    new_proposal(store, clock, n=7)
    clock.advance(60)

    h = store.history_for_policy("BTC", clock())
    assert h.roll_count == {C: 2}
    assert h.last_action_at[A] == t_roll1 and h.last_action_at[B] == t_roll2 and h.last_action_at[C] == t_roll2
    assert X in h.last_action_at
    assert "OPEN_COVERED_CALL" in h.previous_decision and "\n" not in h.previous_decision

    earlier = store.history_for_policy("BTC", t_roll1 + timedelta(seconds=1))
    assert earlier.roll_count == {B: 1, X: 0} and earlier.last_action_at[A] == t_roll1
    assert earlier.last_action_at.get(C) is None
    assert store.history_for_policy("ETH", clock()).roll_count == {}
    assert store.history_for_policy("ETH", clock()).previous_decision is None
    assert t_open <= min(h.last_action_at.values())


# --- a locked database -------------------------------------------------------------------------


def test_locked_database_gives_a_one_line_store_busy_error(db_path, clock):
    s = Store(db_path, now=clock, busy_timeout=0.2)
    holder = raw(db_path)
    holder.execute("BEGIN IMMEDIATE")
    t0 = time.monotonic()
    with pytest.raises(StoreBusyError) as err:
        s.set_flag("paused", "1", actor="a", channel="cli")
    waited = time.monotonic() - t0
    msg = str(err.value)
    assert msg.startswith("database is locked: ") and "\n" not in msg and str(db_path) in msg
    assert 0.15 <= waited < 3
    assert s.get_flag("paused") is None  # reads still work while another process writes
    holder.execute("ROLLBACK")
    holder.close()
    s.set_flag("paused", "1", actor="a", channel="cli")  # and the store recovers
    assert s.get_flag("paused") == "1"
    s.close()


def test_in_process_lock_timeout_is_a_store_busy_error(db_path, clock):
    s = Store(db_path, now=clock, busy_timeout=0.2)
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with s.write():
            entered.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    entered.wait(5)
    with pytest.raises(StoreBusyError, match="^database is locked: "):
        s.append_event("note", actor="a", channel="cli")
    release.set()
    t.join(5)
    assert s.append_event("note", actor="a", channel="cli") == 1
    s.close()


def test_a_new_database_never_reuses_an_old_databases_labels(tmp_path, clock):
    a = Store(tmp_path / "a.db", now=clock)
    b = Store(tmp_path / "b.db", now=clock)
    try:
        pa, pb = new_proposal(a, clock), new_proposal(b, clock)
        assert pa.id == pb.id == 1 and pa.label != pb.label
        assert a.instance_id != b.instance_id
    finally:
        a.close()
        b.close()
    reopened = Store(tmp_path / "a.db", now=clock)
    try:
        assert reopened.instance_id == pa.label.split("-")[1]  # the tag is the database's, kept across restarts
    finally:
        reopened.close()
