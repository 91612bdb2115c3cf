"""Events and their hash chain (append-only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any



from chatops.redact import redact, redact_value

from .common import ChainReport, GENESIS_HASH, _event_dict, _hash_event, canonical, iso
from .base import _order



class EventsMixin:
    # --- events and the hash chain --------------------------------------------------------

    def append_event(self, kind: str, *, proposal_id: int | None = None, decision_id: int | None = None,
                     actor: str, channel: str, reason: str | None = None, data: Any = None) -> int:
        """Append one row to the hash-chained event log; returns its id."""
        # Redacted before hashing: the stored row is what the hash covers.
        reason = None if reason is None else redact(str(reason))
        data = None if data is None else redact_value(data)
        with self.write() as conn:
            last = conn.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
            prev_id, prev_hash = last if last else (0, GENESIS_HASH)
            row = {"id": prev_id + 1, "ts": iso(self._now()), "kind": kind, "proposal_id": proposal_id,
                   "decision_id": decision_id, "actor": str(actor), "channel": str(channel), "reason": reason,
                   "data_json": None if data is None else canonical(data)}
            row["prev_hash"] = prev_hash
            row["hash"] = _hash_event(prev_hash, row)
            return self._insert(conn, "events", row)

    def verify_chain(self, batch: int = 5000) -> ChainReport:
        """Recompute the event chain; name the first row whose content changed, or where a row
        was deleted or inserted. (Cutting rows off the end is only visible against a kept head_hash.)"""
        expected_prev, prev_id, checked = GENESIS_HASH, 0, 0
        while True:
            rows = self._rows("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", [prev_id, batch])
            if not rows:
                return ChainReport(True, checked, None, f"{checked} events verified", expected_prev)
            for r in rows:
                rid = r["id"]
                if rid != prev_id + 1:
                    return ChainReport(False, checked, rid, f"event ids jump from {prev_id} to {rid}: "
                                       f"{rid - prev_id - 1} row(s) deleted before event {rid}", expected_prev)
                if r["hash"] != _hash_event(r["prev_hash"], r):
                    return ChainReport(False, checked, rid, f"event {rid} content changed: its hash does not match",
                                       expected_prev)
                if r["prev_hash"] != expected_prev:
                    return ChainReport(False, checked, rid, f"event {rid} does not link to event {prev_id}: a row "
                                       f"before it was deleted, inserted or rewritten", expected_prev)
                expected_prev, prev_id = r["hash"], rid
                checked += 1

    def list_events(self, since: datetime | None = None, until: datetime | None = None, proposal_id: int | None = None,
                    kind: str | None = None, limit: int = 1000, order: str = "asc") -> list[dict[str, Any]]:
        """The latest `limit` events matching (data parsed into `data`), returned oldest first, or
        newest first with order='desc'."""
        where, params = self._time_filter("ts", since, until)
        if proposal_id is not None:
            where.append("proposal_id = ?")
            params.append(proposal_id)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        o = _order(order)
        rows = self._rows(f"SELECT * FROM events {self._where(where)} ORDER BY id DESC LIMIT ?", params + [limit])
        return [_event_dict(r) for r in (reversed(rows) if o == "ASC" else rows)]

    # --- decisions ------------------------------------------------------------------------
