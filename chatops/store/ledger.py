"""Ledger records: the exchange's fills and settlements, account snapshots, the feed's cursor,
notices said once, and the bot runs (what a running bot runs with)."""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime
from typing import Any

from agent.clock import to_datetime
from agent.ledger import Fill, Mark, Settlement, Snapshot

from .chain import chained
from .common import dumps, iso, parse_ts
from .db import Database

LEDGER_DDL = [
    # The exchange's own records, append-only: what the P&L is computed from (agent/ledger.py).
    # An integer id (the audit chain's row id) beside the exchange's trade id (unique: read once).
    # ts_ms is epoch milliseconds: BIGINT (PostgreSQL's INTEGER is 4 bytes; SQLite's is 8 either way).
    """CREATE TABLE ledger_fills (
        id INTEGER PRIMARY KEY, trade_id TEXT NOT NULL UNIQUE, ts TEXT NOT NULL, ts_ms BIGINT NOT NULL,
        underlying TEXT NOT NULL, instrument_name TEXT NOT NULL, direction TEXT NOT NULL, amount REAL NOT NULL,
        price REAL NOT NULL, fee REAL NOT NULL, order_id TEXT, label TEXT, index_price REAL, order_state TEXT,
        recorded_at TEXT NOT NULL)""",
    """CREATE TABLE ledger_settlements (
        id INTEGER PRIMARY KEY, ts TEXT NOT NULL, ts_ms BIGINT NOT NULL, underlying TEXT NOT NULL,
        instrument_name TEXT NOT NULL, position REAL NOT NULL, payoff REAL NOT NULL, delivery_price REAL NOT NULL,
        cash_flow REAL NOT NULL, type TEXT NOT NULL, recorded_at TEXT NOT NULL,
        UNIQUE (underlying, instrument_name, ts_ms))""",
    # One row per tick: equity, the index and the open positions' marks (the P&L's start and end points).
    """CREATE TABLE account_snapshots (
        id INTEGER PRIMARY KEY, ts TEXT NOT NULL, ts_ms BIGINT NOT NULL, underlying TEXT NOT NULL,
        equity REAL NOT NULL, spot REAL NOT NULL, options_value REAL NOT NULL, marks_json TEXT NOT NULL)""",
    """CREATE TABLE ledger_cursor (
        underlying TEXT PRIMARY KEY, cursor_json TEXT NOT NULL, updated_at TEXT NOT NULL)""",
    """CREATE TABLE notices_sent (
        key TEXT PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL)""",
    # What each running bot runs with, so `chatops status` describes the bot, not the CLI's settings.
    """CREATE TABLE bot_runs (
        id INTEGER PRIMARY KEY, started_at TEXT NOT NULL, heartbeat_at TEXT NOT NULL, stopped_at TEXT,
        underlying TEXT NOT NULL, brain TEXT NOT NULL, profile TEXT NOT NULL, dry_run INTEGER NOT NULL,
        exchange TEXT NOT NULL, approval_mode TEXT NOT NULL, channels TEXT NOT NULL, pid INTEGER, host TEXT)""",
    "CREATE INDEX idx_ledger_fills_ts ON ledger_fills(underlying, ts_ms)",
    "CREATE INDEX idx_ledger_settlements_ts ON ledger_settlements(underlying, ts_ms)",
    "CREATE INDEX idx_account_snapshots_ts ON account_snapshots(underlying, ts_ms)",
    "CREATE INDEX idx_bot_runs_underlying ON bot_runs(underlying, started_at)",
]
LEDGER_APPEND_ONLY = ("ledger_fills", "ledger_settlements")
for _t in LEDGER_APPEND_ONLY:
    chained(_t)  # the exchange's records join the audit chain (empty tables when created: nothing to backfill)


def _decision_state_view(db: Database) -> str:
    """Decision state by name, for Datasette and ad-hoc SQL (state_json keeps named keys too)."""
    cols = [("spot", "spot", True), ("eq", "equity", True), ("od", "options_delta", True),
            ("mu", "margin_used_pct", True), ("n_cand", "candidates", True), ("sel.instrument_name", "chosen", False),
            ("sel.delta", "chosen_delta", True), ("sel.dte", "chosen_dte", True)]
    exprs = ", ".join(f"{(db.json_number if num else db.json_text)('state_json', key)} AS {name}"
                      for key, name, num in cols)
    return (f"CREATE VIEW decision_state AS SELECT id, ts, underlying, decision_source, final_action, final_symbol, "
            f"{exprs} FROM decisions")


def _m007_ledger(db: Database) -> None:
    """The ledger (fills, settlements, account snapshots, cursor), notices said once, bot runs."""
    stmts = list(LEDGER_DDL)
    for t in LEDGER_APPEND_ONLY:
        stmts += (db.refuse_trigger(f"{t}_no_update", "BEFORE UPDATE", t, f"append-only table: {t}")
                  + db.refuse_trigger(f"{t}_no_delete", "BEFORE DELETE", t, f"append-only table: {t}"))
    stmts.append(_decision_state_view(db))
    for stmt in stmts:
        db.execute(stmt)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


class LedgerMixin:
    # --- records ---------------------------------------------------------------------------

    def record_ledger(self, underlying: str, fills: tuple[Fill, ...] | list[Fill],
                      settlements: tuple[Settlement, ...] | list[Settlement], cursor: dict[str, Any] | None,
                      snapshot: Snapshot | None = None) -> tuple[int, int]:
        """Add new fills and settlements (ones already stored are skipped), move the cursor (None:
        it did not move) and keep the snapshot, in one transaction; returns how many fills and
        settlements were new."""
        now = iso(self._now())
        nf = ns = 0
        with self.write() as conn:
            for f in fills:  # one already stored (its trade id) is skipped; a new one joins the audit chain
                nf += bool(self._insert(conn, "ledger_fills", {
                    "trade_id": f.trade_id, "ts": iso(to_datetime(f.timestamp)), "ts_ms": f.timestamp,
                    "underlying": underlying, "instrument_name": f.instrument_name, "direction": f.direction,
                    "amount": f.amount, "price": f.price, "fee": f.fee, "order_id": f.order_id, "label": f.label,
                    "index_price": f.index_price, "order_state": f.order_state, "recorded_at": now}, or_ignore=True))
            for s in settlements:
                ns += bool(self._insert(conn, "ledger_settlements", {
                    "ts": iso(to_datetime(s.timestamp)), "ts_ms": s.timestamp, "underlying": underlying,
                    "instrument_name": s.instrument_name, "position": s.position, "payoff": s.payoff,
                    "delivery_price": s.delivery_price, "cash_flow": s.cash_flow, "type": s.type,
                    "recorded_at": now}, or_ignore=True))
            if cursor is not None:
                conn.execute("INSERT INTO ledger_cursor (underlying, cursor_json, updated_at) VALUES (?, ?, ?) "
                             "ON CONFLICT(underlying) DO UPDATE SET cursor_json = excluded.cursor_json, "
                             "updated_at = excluded.updated_at", [underlying, dumps(cursor), now])
            if snapshot is not None:
                self._insert_snapshot(conn, underlying, snapshot)
        return nf, ns

    def _insert_snapshot(self, conn: Database, underlying: str, s: Snapshot) -> None:
        marks = [{"instrument_name": m.instrument_name, "size": m.size, "mark": m.mark} for m in s.marks]
        self._insert(conn, "account_snapshots", {
            "ts": iso(to_datetime(s.timestamp)), "ts_ms": s.timestamp, "underlying": underlying, "equity": s.equity,
            "spot": s.spot, "options_value": s.options_value, "marks_json": json.dumps(marks, separators=(",", ":"))})

    def ledger_cursor(self, underlying: str) -> dict[str, Any] | None:
        r = self._row("SELECT cursor_json FROM ledger_cursor WHERE underlying = ?", [underlying])
        return None if r is None else json.loads(r["cursor_json"])

    def ledger_fills(self, underlying: str, since: datetime | None = None, until: datetime | None = None) -> list[Fill]:
        where, params = self._ms_filter(underlying, since, until)
        return [Fill(trade_id=r["trade_id"], timestamp=r["ts_ms"], instrument_name=r["instrument_name"],
                     direction=r["direction"], amount=r["amount"], price=r["price"], fee=r["fee"], order_id=r["order_id"],
                     label=r["label"] or "", index_price=r["index_price"], order_state=r["order_state"])
                for r in self._rows(f"SELECT * FROM ledger_fills {self._where(where)} ORDER BY ts_ms, trade_id", params)]

    def ledger_settlements(self, underlying: str, since: datetime | None = None,
                           until: datetime | None = None) -> list[Settlement]:
        where, params = self._ms_filter(underlying, since, until)
        return [Settlement(instrument_name=r["instrument_name"], timestamp=r["ts_ms"], position=r["position"],
                           payoff=r["payoff"], delivery_price=r["delivery_price"], type=r["type"])
                for r in self._rows(f"SELECT * FROM ledger_settlements {self._where(where)} ORDER BY ts_ms, id", params)]

    def snapshots(self, underlying: str, since: datetime | None = None, until: datetime | None = None,
                  limit: int | None = None) -> list[Snapshot]:
        where, params = self._ms_filter(underlying, since, until)
        lim = f" LIMIT {int(limit)}" if limit else ""
        return [_snapshot(r) for r in
                self._rows(f"SELECT * FROM account_snapshots {self._where(where)} ORDER BY ts_ms, id{lim}", params)]

    def snapshot_at(self, underlying: str, at: datetime | None, *, first: bool = False) -> Snapshot | None:
        """The latest snapshot at or before `at` (else the earliest: the baseline); `first`: the baseline."""
        if first or at is None:
            r = self._row("SELECT * FROM account_snapshots WHERE underlying = ? ORDER BY ts_ms, id LIMIT 1", [underlying])
            return None if r is None else _snapshot(r)
        r = self._row("SELECT * FROM account_snapshots WHERE underlying = ? AND ts_ms <= ? ORDER BY ts_ms DESC, id DESC "
                      "LIMIT 1", [underlying, _ms(at)])
        return _snapshot(r) if r is not None else self.snapshot_at(underlying, None, first=True)

    def last_snapshot(self, underlying: str) -> Snapshot | None:
        r = self._row("SELECT * FROM account_snapshots WHERE underlying = ? ORDER BY ts_ms DESC, id DESC LIMIT 1",
                      [underlying])
        return None if r is None else _snapshot(r)

    def _ms_filter(self, underlying: str, since: datetime | None, until: datetime | None) -> tuple[list[str], list[Any]]:
        where, params = ["underlying = ?"], [underlying]
        if since is not None:  # inclusive: agent.ledger.pnl decides what falls inside a window
            where.append("ts_ms >= ?")
            params.append(_ms(since))
        if until is not None:
            where.append("ts_ms <= ?")
            params.append(_ms(until))
        return where, params

    # --- notices said once -------------------------------------------------------------------

    def claim_notice(self, key: str, kind: str, text: str) -> bool:
        """True the first time a notice key is claimed (say it), False ever after (said already)."""
        with self.write() as conn:
            cur = conn.execute("INSERT INTO notices_sent (key, ts, kind, text) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                               [key, iso(self._now()), kind, text])
            return cur.rowcount == 1

    def notices_sent(self, kind: str | None = None) -> list[dict[str, Any]]:
        where, params = ([], []) if kind is None else (["kind = ?"], [kind])
        return self._rows(f"SELECT * FROM notices_sent {self._where(where)} ORDER BY ts", params)

    # --- bot runs ------------------------------------------------------------------------------

    def record_bot_run(self, *, underlying: str, brain: str, profile: str, dry_run: bool, exchange: str,
                       approval_mode: str, channels: tuple[str, ...] | list[str]) -> int:
        """A bot starting: what it runs with (read back by `chatops status`)."""
        now = iso(self._now())
        with self.write() as conn:
            return self._insert(conn, "bot_runs", {
                "started_at": now, "heartbeat_at": now, "underlying": underlying, "brain": brain, "profile": profile,
                "dry_run": int(bool(dry_run)), "exchange": exchange, "approval_mode": approval_mode,
                "channels": ",".join(channels), "pid": os.getpid(), "host": socket.gethostname()})

    def bot_heartbeat(self, run_id: int, *, stopped: bool = False) -> None:
        now = iso(self._now())
        with self.write() as conn:
            if stopped:
                conn.execute("UPDATE bot_runs SET heartbeat_at = ?, stopped_at = ? WHERE id = ?", [now, now, run_id])
            else:
                conn.execute("UPDATE bot_runs SET heartbeat_at = ? WHERE id = ?", [now, run_id])

    def last_bot_run(self, underlying: str | None = None) -> dict[str, Any] | None:
        # A bot trading several coins records them comma-separated (BTC,ETH): it runs each of them.
        where, params = ([], []) if underlying is None else (["',' || underlying || ',' LIKE ?"], [f"%,{underlying},%"])
        r = self._row(f"SELECT * FROM bot_runs {self._where(where)} ORDER BY started_at DESC, id DESC LIMIT 1", params)
        if r is None:
            return None
        r = dict(r)
        r["dry_run"] = bool(r["dry_run"])
        r["channels"] = tuple(c for c in (r["channels"] or "").split(",") if c)
        r["started"] = parse_ts(r["started_at"])
        r["heartbeat"] = parse_ts(r["heartbeat_at"])
        return r


def _snapshot(r: dict[str, Any]) -> Snapshot:
    marks = tuple(Mark(m["instrument_name"], float(m["size"]), float(m["mark"])) for m in json.loads(r["marks_json"]))
    return Snapshot(timestamp=int(r["ts_ms"]), equity=float(r["equity"]), spot=float(r["spot"]), marks=marks)
