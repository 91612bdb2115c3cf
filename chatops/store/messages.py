"""Chat message references and the outbox of undelivered messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any



from .common import MessageRef, OutboxItem, _outbox, dumps, iso, parse_ts



# next_attempt_at of an item given up: after every real time, so never due.
GAVE_UP_AT = "9999-12-31T00:00:00.000000Z"


class MessagesMixin:
    def save_message_ref(self, proposal_id: int, channel: str, chat_id: str | int, message_id: str | int) -> None:
        """Remember where a proposal was posted (one ref per proposal, channel and chat; replaced on repost)."""
        now = iso(self._now())
        with self.write() as conn:
            conn.execute("INSERT INTO messages (proposal_id, channel, chat_id, message_id, created_at, updated_at) "
                         "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(proposal_id, channel, chat_id) DO UPDATE SET "
                         "message_id = excluded.message_id, updated_at = excluded.updated_at",
                         [proposal_id, channel, str(chat_id), str(message_id), now, now])

    def message_refs(self, proposal_id: int, channel: str | None = None) -> list[MessageRef]:
        where, params = ["proposal_id = ?"], [proposal_id]
        if channel is not None:
            where.append("channel = ?")
            params.append(channel)
        return [MessageRef(r["proposal_id"], r["channel"], r["chat_id"], r["message_id"], parse_ts(r["updated_at"]))
                for r in self._rows(f"SELECT * FROM messages {self._where(where)} ORDER BY id", params)]

    def enqueue_outbox(self, channel: str, payload: dict[str, Any], error: str, *,
                       next_attempt_at: datetime | None = None, priority: int = 2) -> int:
        """A message `channel` failed to deliver (that failure counts as attempt 1); due at once
        unless `next_attempt_at` says otherwise. Lower `priority` is retried first (cards, alerts)."""
        now = self._now()
        with self.write() as conn:
            return self._insert(conn, "outbox", {
                "channel": channel, "payload_json": dumps({**payload, "_priority": priority}), "attempts": 1,
                "created_at": iso(now),
                "next_attempt_at": iso(next_attempt_at or now), "last_error": error})

    def due_outbox(self, channel: str, now: datetime | None = None, limit: int = 100) -> list[OutboxItem]:
        """Undelivered messages of `channel` whose retry time has come (filtered before the limit),
        cards and alerts first, then oldest first (send in this order)."""
        priority = self.db.json_number("payload_json", "_priority")
        return [_outbox(r) for r in self._rows(
            "SELECT * FROM outbox WHERE channel = ? AND delivered_at IS NULL AND next_attempt_at <= ? "
            f"ORDER BY COALESCE({priority}, 2), id LIMIT ?",
            [channel, iso(now or self._now()), limit])]

    def give_up_outbox(self, outbox_id: int, error: str) -> None:
        """Never retry this item again (kept, with why, for review); an event says so."""
        with self.write() as conn:
            conn.execute("UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? "
                         "WHERE id = ? AND delivered_at IS NULL",
                         [GAVE_UP_AT, error[:500], outbox_id])
            self.append_event("outbox_gave_up", actor="agent", channel="delivery", reason=error[:300],
                              data={"outbox_id": outbox_id})

    def mark_outbox_attempt(self, outbox_id: int, error: str, next_attempt_at: datetime) -> None:
        with self.write() as conn:
            conn.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                         "WHERE id = ? AND delivered_at IS NULL", [error, iso(next_attempt_at), outbox_id])

    def mark_outbox_delivered(self, outbox_id: int) -> bool:
        with self.write() as conn:
            cur = conn.execute("UPDATE outbox SET delivered_at = ? WHERE id = ? AND delivered_at IS NULL",
                               [iso(self._now()), outbox_id])
            return cur.rowcount == 1

    def outbox_item(self, outbox_id: int) -> OutboxItem | None:
        r = self._row("SELECT * FROM outbox WHERE id = ?", [outbox_id])
        return None if r is None else _outbox(r)

    # --- review ---------------------------------------------------------------------------
