"""Review queries: a proposal's story, table iteration for exports, the policy's history."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any


from agent.models import ActionType, PositionHistory, Rejection
from agent.pricing import realized_vol_pct

from .common import TABLES, _TS_COLUMN, iso, parse_ts
from .base import _order

# How far back the policy's history reads. Every leg the policy manages was sold inside the
# candidates' DTE window (at most 30 days, the research profile) and a roll goes to a later
# expiry in it, so a chain of MAX_ROLLS (3) rolls spans at most 4 x 30 = 120 days: a chain older
# than this has expired, and with it its roll count and hysteresis. Bounding the scan keeps a tick
# as fast on the millionth proposal as on the first.
HISTORY_LOOKBACK = timedelta(days=180)



_ROW_KEY = {"flags": "key"}  # every other exported table has an integer `id`


class ReviewMixin:
    def proposal_story(self, proposal_id: int) -> dict[str, Any] | None:
        """Everything about one proposal: proposal (with `action` parsed as `action_obj`), decision,
        votes, events, executions (with orders), questions (with answers), messages."""
        p = self.get_proposal(proposal_id)
        if p is None:
            return None
        proposal = asdict(p)
        proposal["action_obj"] = json.loads(p.action_json)
        questions = []
        for q in self._rows("SELECT * FROM questions WHERE proposal_id = ? ORDER BY id", [proposal_id]):
            q = dict(q)
            q["answers"] = self._rows("SELECT * FROM answers WHERE question_id = ? ORDER BY id", [q["id"]])
            questions.append(q)
        return {
            "proposal": proposal,
            "decision": self.get_decision(p.decision_id) if p.decision_id is not None else None,
            "votes": [asdict(v) for v in self.votes(proposal_id)],
            "events": self.list_events(proposal_id=proposal_id, limit=10_000),
            "executions": self.executions(proposal_id),
            "questions": questions,
            "messages": [asdict(m) for m in self.message_refs(proposal_id)],
        }

    def iter_rows(self, table: str, *, since: datetime | None = None, until: datetime | None = None,
                  order: str = "asc", batch_size: int = 1000, **equals: Any) -> Iterator[dict[str, Any]]:
        """Every row of `table` (raw column values), filtered by time and column equality, fetched in
        batches (the lock is not held between them), for CSV / JSON-lines exports."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r} (one of {', '.join(TABLES)})")
        with self._locked():
            columns = set(self.db.columns(table))
        bad = [c for c in equals if c not in columns]
        if bad:
            raise ValueError(f"{table} has no column {', '.join(bad)}")
        where, params = self._time_filter(_TS_COLUMN[table], since, until)
        for col, value in equals.items():
            where.append(f'"{col}" = ?')
            params.append(value)
        o = _order(order)
        cmp = ">" if o == "ASC" else "<"
        key = _ROW_KEY.get(table, "id")  # keyset pagination on the primary key (no rowid on PostgreSQL)
        last: Any = None
        while True:
            w = list(where) + ([f"{key} {cmp} ?"] if last is not None else [])
            p = list(params) + ([last] if last is not None else [])
            rows = self._rows(f"SELECT * FROM {table} {self._where(w)} ORDER BY {key} {o} LIMIT ?", p + [batch_size])
            for r in rows:
                last = r[key]
                yield r
            if len(rows) < batch_size:
                return

    def history_for_policy(self, underlying: str, now: datetime | None = None,
                           lookback: timedelta = HISTORY_LOOKBACK, *, realized_vol: bool = True) -> PositionHistory:
        """What the policy needs from the past (executed proposals in the `lookback` before `now`): the last action
        time per symbol (its symbol and roll_from), rolls per chain (a roll's new symbol inherits
        roll_from's count + 1; a close ends the chain), the last executions (newest first, one line
        each, with what the exchange reported), and a one-line previous decision. The realized
        vols are for an LLM's prompt (the rules never read them): `realized_vol=False` skips them."""
        at_now = now or self._now()
        cutoff = iso(at_now)
        last_at: dict[str, datetime] = {}
        rolls: dict[str, int] = {}
        fills: list[str] = []
        for r in self._rows("SELECT action, symbol, roll_from, size, status_reason, updated_at "
                            "FROM proposals WHERE underlying = ? AND status = 'executed' AND updated_at > ? "
                            "AND updated_at <= ? ORDER BY updated_at, id", [underlying, iso(at_now - lookback), cutoff]):
            at = parse_ts(r["updated_at"])
            for sym in (r["symbol"], r["roll_from"]):
                if sym:
                    last_at[sym] = at
            if r["action"] == ActionType.OPEN_COVERED_CALL.value and r["symbol"]:
                rolls[r["symbol"]] = 0
            elif r["action"] == ActionType.ROLL_COVERED_CALL.value and r["symbol"]:
                rolls[r["symbol"]] = rolls.pop(r["roll_from"], 0) + 1
            elif r["action"] == ActionType.CLOSE_COVERED_CALL.value and r["symbol"]:
                rolls.pop(r["symbol"], None)
            leg = f"{r['roll_from']} -> " if r["roll_from"] else ""
            fills.append(f"{at:%m-%d %H:%M}Z {r['action'].split('_')[0]} {leg}{r['symbol']} {r['size']:g}"
                         + (f": {' '.join(str(r['status_reason']).split())[:100]}" if r["status_reason"] else ""))
        reasoning = self.db.json_text("COALESCE(final_json, proposed_json)", "reasoning")
        d = self._row("SELECT ts, final_action, final_symbol, decision_source, "
                      f"{reasoning} AS reasoning "
                      "FROM decisions WHERE underlying = ? AND ts <= ? ORDER BY ts DESC, id DESC LIMIT 1",
                      [underlying, cutoff])
        previous = None
        if d is not None:
            why = " ".join((d["reasoning"] or "").split())
            why = why if len(why) <= 160 else why[:157] + "..."
            sym = f" {d['final_symbol']}" if d["final_symbol"] else ""
            previous = f"{parse_ts(d['ts']):%Y-%m-%d %H:%M}Z {d['final_action']}{sym} ({d['decision_source']}): {why}"
        return PositionHistory(last_action_at=last_at, roll_count=rolls, previous_decision=previous,
                               recent_fills=tuple(reversed(fills[-3:])),
                               **(self._realized_vols(underlying, now) if realized_vol else {}),
                               rejections=self._recent_rejections(underlying, now or self._now()))

    def _recent_rejections(self, underlying: str, now: datetime, hours: float = 24.0) -> tuple[Rejection, ...]:
        """Proposals rejected in the `hours` before `now`, newest first, one per action key."""
        rows = self._rows("SELECT id, action, symbol, roll_from, decided_at, decided_by, status_reason, action_json "
                          "FROM proposals WHERE underlying = ? AND status = 'rejected' AND decided_at <= ? "
                          "AND decided_at >= ? ORDER BY decided_at DESC, id DESC LIMIT 50",
                          [underlying, iso(now), iso(now - timedelta(hours=hours))])
        out: dict[tuple, Rejection] = {}
        for r in rows:
            key = (r["action"], r["symbol"], r["roll_from"])
            if key in out:
                continue
            try:
                a = json.loads(r["action_json"] or "{}")
            except ValueError:
                a = {}
            reason = r["status_reason"]
            if reason == f"rejected by {r['decided_by']}":
                reason = None  # the default text, not a reason anyone gave
            ref = a.get("ref_buy_price") if r["action"] == ActionType.CLOSE_COVERED_CALL.value else a.get("ref_sell_price")
            out[key] = Rejection(proposal_id=r["id"], action=r["action"], symbol=r["symbol"], roll_from=r["roll_from"],
                                 at=parse_ts(r["decided_at"]), by=str(r["decided_by"] or "?"), reason=reason,
                                 ref_price=ref)
        return tuple(out.values())

    def _realized_vols(self, underlying: str, now: datetime | None) -> dict[str, float]:
        """Realized vol over 7 and 30 days from the index price the ticks recorded, sampled hourly
        (the last tick of each hour): no exchange request, a few hundred rows at most."""
        end = now or self._now()
        points = self._hourly_spots(underlying, end)
        week = end.timestamp() - 7 * 86400
        out = {}
        for name, pts, need in (("realized_vol_7d", [p for p in points if p[0] >= week], 24),
                               ("realized_vol_30d", points, 24 * 7)):
            vol = realized_vol_pct(pts, min_returns=need)
            if vol is not None:
                out[name] = round(vol, 2)
        return out

    def _hourly_spots(self, underlying: str, end: datetime, days: float = 30.0) -> list[tuple[float, float]]:
        """(time, spot) of the last tick of each hour in the `days` before `end`, oldest first.

        Hours before the current one are complete (ticks are recorded at their own time), so they
        are kept between calls and only the hours since the newest kept one are read: a few rows
        a tick instead of a month of them."""
        lo, hi = iso(end - timedelta(days=days)), iso(end)
        with self.__dict__.setdefault("_spot_hours_lock", threading.Lock()):  # the loop and the web/ask threads
            return self._hourly_spots_locked(underlying, lo, hi)

    def _hourly_spots_locked(self, underlying: str, lo: str, hi: str) -> list[tuple[float, float]]:
        # hour ("YYYY-MM-DDTHH") -> (ts text, unix seconds, spot) of its last tick, oldest hour first
        kept: dict[str, tuple[str, float, float]] = self.__dict__.setdefault("_spot_hours", {}).setdefault(underlying, {})
        if kept and kept[next(reversed(kept))][0] > hi:
            kept.clear()  # the clock was set back: read the window again
        while kept and kept[next(iter(kept))][0] < lo:
            del kept[next(iter(kept))]  # out of the window
        since = lo
        if kept:
            newest = next(reversed(kept))
            since = max(lo, iso(datetime.fromisoformat(newest + ":00:00+00:00") + timedelta(hours=1)))
        spot = self.db.json_number("d.state_json", "spot")
        rows = self._rows(
            f"SELECT d.ts, {spot} AS spot FROM decisions d JOIN ("
            "SELECT MAX(id) AS id FROM decisions WHERE underlying = ? AND ts >= ? AND ts <= ? "
            "GROUP BY substr(ts, 1, 13)) h ON d.id = h.id ORDER BY d.ts",
            [underlying, since, hi])
        current = hi[:13]
        out = [(t, sp) for _, t, sp in kept.values()]
        for r in rows:  # in time order, all after the kept hours
            h, t = r["ts"][:13], parse_ts(r["ts"]).timestamp()
            if h < current:
                kept[h] = (r["ts"], t, r["spot"])  # complete: no later tick can join this hour
            out.append((t, r["spot"]))
        return out
