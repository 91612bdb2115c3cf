"""Orders of proposals as they live on the exchange: the claim, each leg's current state, every
change of it, and the final settle.

Two tables, on purpose:
- `order_events` is append-only (triggers refuse UPDATE and DELETE, like the other audit tables):
  one row per thing that happened to an order (sent, unknown, found, fill, partial_fill,
  repriced, cancelled, rejected, not_found). It is the history, never rewritten.
- `order_legs` is one small mutable row per leg (its label is unique): the current state the
  follower needs every sweep and a restart needs to resume (state, order id, price, fills, fee,
  when it started, back-off of lookups, a cancel request). Replaying events to get it would cost
  a query per sweep and still not hold the follower's timers; keeping it apart keeps the audit
  tables append-only.
When a proposal ends, `settle` writes the usual `executions` + `orders` rows (append-only, one per
leg, final state) and moves the proposal out of `executing`, all in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .db import Database

from agent.models import ExecutionResult
from agent.orders import Leg, OrderEvent

from .common import _model_json, iso

ORDER_TABLES_DDL = [
    """CREATE TABLE order_legs (
        id INTEGER PRIMARY KEY,
        proposal_id INTEGER NOT NULL REFERENCES proposals(id),
        seq INTEGER NOT NULL,                -- 0 goes first (a roll's close leg), then 1
        label TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,                 -- new|sending|unknown|open|filled|cancelled|rejected|not_found|not_sent
        instrument TEXT NOT NULL,
        side TEXT NOT NULL,
        amount REAL NOT NULL,
        order_id TEXT,
        price REAL,
        filled_amount REAL NOT NULL DEFAULT 0,
        average_price REAL,
        fee REAL,
        leg_json TEXT NOT NULL,              -- the whole agent.orders.Leg
        updated_at TEXT NOT NULL,
        UNIQUE (proposal_id, seq))""",
    """CREATE TABLE order_events (
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        proposal_id INTEGER NOT NULL REFERENCES proposals(id),
        label TEXT NOT NULL,
        kind TEXT NOT NULL,
        order_id TEXT,
        price REAL,
        amount REAL,
        filled_amount REAL,
        average_price REAL,
        fee REAL,
        text TEXT)""",
    "CREATE INDEX idx_order_legs_state ON order_legs(state)",
    "CREATE INDEX idx_order_events_proposal ON order_events(proposal_id)",
    "ALTER TABLE orders ADD COLUMN fee REAL",
]


def _m005_order_tracking(db: Database) -> None:
    """order_legs (current state per leg) and order_events (append-only history); orders.fee."""
    for stmt in ORDER_TABLES_DDL + db.refuse_trigger("order_events_no_update", "BEFORE UPDATE", "order_events",
                                                     "append-only table: order_events") \
            + db.refuse_trigger("order_events_no_delete", "BEFORE DELETE", "order_events",
                                "append-only table: order_events"):
        db.execute(stmt)


@dataclass(frozen=True)
class ClaimResult:
    """What `claim` did. kind: claimed | expired | paused | votes | not_approved."""

    kind: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "claimed"


def claim_refusal(conn: Database, proposal_id: int, now: datetime) -> ClaimResult | None:
    """The time and switch rules checked at the claim itself, inside its transaction: still
    approved, not expired, not paused. None: go on (the votes are recounted next, by the store's
    `quorum_shortfall`)."""
    row = conn.execute("SELECT status, expires_at, approvals_required FROM proposals WHERE id = ?",
                       [proposal_id]).fetchone()
    if row is None or row[0] != "approved":
        return ClaimResult("not_approved", f"not approved ({row[0] if row else 'unknown'})")
    status, expires_at, required = row
    if iso(now) > expires_at:
        return ClaimResult("expired", "expired before it could execute (checked at the claim)")
    paused = conn.execute("SELECT value FROM flags WHERE key = 'paused'").fetchone()
    if paused and paused[0] == "1":
        return ClaimResult("paused", "paused")
    return None


class OrdersMixin:
    def claim(self, proposal_id: int, legs: list[Leg], *, now: datetime, reason: str, actor: str = "agent",
              channel: str = "executor") -> ClaimResult:
        """approved -> executing, in ONE transaction with the checks of `claim_refusal` and the
        proposal's planned legs (state `new`). An expired or out-voted proposal is blocked here;
        a paused one stays approved."""
        with self.write() as conn:
            refused = claim_refusal(conn, proposal_id, now)
            if refused is None:
                short = self.quorum_shortfall(conn, proposal_id)  # distinct approving persons, the proposal's own quorum
                if short is not None:
                    refused = ClaimResult("votes", f"refused at the claim: {short}")
            if refused is not None:
                if refused.kind in ("expired", "votes"):
                    self._cas(conn, proposal_id, ("approved",), "blocked", actor=actor, channel=channel,
                              reason=refused.reason)
                return refused
            if not self._cas(conn, proposal_id, ("approved",), "executing", actor=actor, channel=channel, reason=reason):
                return ClaimResult("not_approved", "another executor claimed it")
            for seq, leg in enumerate(legs):
                self._put_leg(conn, proposal_id, seq, leg)
        return ClaimResult("claimed", reason)

    def _put_leg(self, conn: Database, proposal_id: int, seq: int, leg: Leg) -> None:
        conn.execute(
            "INSERT INTO order_legs (proposal_id, seq, label, state, instrument, side, amount, order_id, price, "
            "filled_amount, average_price, fee, leg_json, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(proposal_id, seq) DO UPDATE SET state = excluded.state, amount = excluded.amount, "
            "order_id = excluded.order_id, price = excluded.price, filled_amount = excluded.filled_amount, "
            "average_price = excluded.average_price, fee = excluded.fee, leg_json = excluded.leg_json, "
            "updated_at = excluded.updated_at",
            [proposal_id, seq, leg.label, leg.state, leg.instrument, leg.side, leg.amount, leg.order_id, leg.price,
             leg.filled, leg.average_price, leg.fee, _model_json(leg), iso(self._now())])

    def save_leg(self, proposal_id: int, seq: int, leg: Leg, events: list[OrderEvent] = (), *,  # type: ignore[assignment]
                 actor: str = "agent", channel: str = "executor") -> None:
        """The leg's new current state and what happened to it, in one transaction: an
        `order_events` row and an `order_<kind>` event (the audit chain) per event."""
        with self.write() as conn:
            self._put_leg(conn, proposal_id, seq, leg)
            now = iso(self._now())
            for e in events:
                self._insert(conn, "order_events", {
                    "ts": now, "proposal_id": proposal_id, "label": e.label, "kind": e.kind, "order_id": e.order_id,
                    "price": e.price, "amount": e.amount, "filled_amount": e.filled, "average_price": e.average_price,
                    "fee": e.fee, "text": e.text})
                self.append_event(f"order_{e.kind}", proposal_id=proposal_id, actor=actor, channel=channel,
                                  reason=e.text[:500] or None,
                                  data={"label": e.label, "order_id": e.order_id, "filled": e.filled})

    def legs(self, proposal_id: int) -> list[Leg]:
        rows = self._rows("SELECT leg_json FROM order_legs WHERE proposal_id = ? ORDER BY seq", [proposal_id])
        return [Leg.model_validate_json(r["leg_json"]) for r in rows]

    def order_events(self, proposal_id: int) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM order_events WHERE proposal_id = ? ORDER BY id", [proposal_id])

    def request_cancel(self, proposal_id: int, by: str, channel: str) -> list[str]:
        """Ask the follower to cancel the proposal's working legs; the labels asked. Recorded."""
        asked = []
        with self.write() as conn:
            for seq, leg in enumerate(self.legs(proposal_id)):
                if leg.final or leg.cancel_requested_by:
                    continue
                if leg.state == "new":  # never sent: it will not be
                    leg = leg.model_copy(update={"state": "not_sent", "reason": f"cancelled by {by} before it was sent"})
                else:
                    leg = leg.model_copy(update={"cancel_requested_by": by})
                self._put_leg(conn, proposal_id, seq, leg)
                asked.append(leg.label)
            if asked:
                self.append_event("cancel_requested", proposal_id=proposal_id, actor=by, channel=channel,
                                  reason=f"cancel of {', '.join(asked)} asked by {by}", data={"labels": asked})
        return asked

    def settle(self, proposal_id: int, result: ExecutionResult, to_status: str, reason: str) -> bool:
        """The final record of an execution (executions + orders rows) and executing -> `to_status`,
        in one transaction. False (and nothing written) when it is no longer executing."""
        with self.write() as conn:
            row = conn.execute("SELECT status FROM proposals WHERE id = ?", [proposal_id]).fetchone()
            if row is None or row[0] != "executing":
                return False
            self.record_execution(proposal_id, result)
            return self._cas(conn, proposal_id, ("executing",), to_status, actor="agent", channel="executor",
                             reason=reason[:500])

    def data_version(self) -> int:
        """A number that changes when another connection commits to the database: a cheap way for
        the running bot to notice a vote from `chatops approve` (SQLite: PRAGMA data_version)."""
        with self._locked():
            if self.db.is_pg:  # every audit row (a vote, an event) is an entry of the chain
                return int(self.db.scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_chain"))
            return int(self.db.scalar("PRAGMA data_version"))
