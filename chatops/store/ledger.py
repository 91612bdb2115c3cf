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

from .common import dumps, iso, parse_ts


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


class LedgerMixin:
    # --- records ---------------------------------------------------------------------------

    def record_ledger(self, underlying: str, fills: tuple[Fill, ...] | list[Fill],
                      settlements: tuple[Settlement, ...] | list[Settlement], cursor: dict[str, Any],
                      snapshot: Snapshot | None = None) -> tuple[int, int]:
        """Add new fills and settlements (ones already stored are skipped), move the cursor and keep
        the snapshot, in one transaction; returns how many fills and settlements were new."""
        now = iso(self._now())
        nf = ns = 0
        with self.write() as conn:
            for f in fills:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO ledger_fills (trade_id, ts, ts_ms, underlying, instrument_name, direction, "
                    "amount, price, fee, order_id, label, index_price, order_state, recorded_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [f.trade_id, iso(to_datetime(f.timestamp)), f.timestamp, underlying, f.instrument_name, f.direction,
                     f.amount, f.price, f.fee, f.order_id, f.label, f.index_price, f.order_state, now])
                nf += cur.rowcount
            for s in settlements:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO ledger_settlements (ts, ts_ms, underlying, instrument_name, position, payoff, "
                    "delivery_price, cash_flow, type, recorded_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    [iso(to_datetime(s.timestamp)), s.timestamp, underlying, s.instrument_name, s.position, s.payoff,
                     s.delivery_price, s.cash_flow, s.type, now])
                ns += cur.rowcount
            conn.execute("INSERT INTO ledger_cursor (underlying, cursor_json, updated_at) VALUES (?, ?, ?) "
                         "ON CONFLICT(underlying) DO UPDATE SET cursor_json = excluded.cursor_json, "
                         "updated_at = excluded.updated_at", [underlying, dumps(cursor), now])
            if snapshot is not None:
                self._insert_snapshot(conn, underlying, snapshot)
        return nf, ns

    def _insert_snapshot(self, conn, underlying: str, s: Snapshot) -> None:
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
            cur = conn.execute("INSERT OR IGNORE INTO notices_sent (key, ts, kind, text) VALUES (?, ?, ?, ?)",
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
