"""Proposals, their compare-and-swap transitions, votes and executions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any


from agent.models import Action, ActionType, ExecutionResult

from .db import Database
from .common import ProposalRow, TRANSITIONS, VoteOutcome, VoteRow, _loads, _model_json, _proposal, _status_tuple, _vote, iso, label_for
from .base import _order



class ProposalsMixin:
    def create_proposal(self, decision_id: int | None, action: Action, *, expires_at: datetime,
                        approvals_required: int, actor: str = "agent", channel: str = "scheduler") -> ProposalRow:
        """A pending proposal of `action`; its label is set in the same transaction; event proposal_created."""
        if approvals_required < 1:
            raise ValueError(f"approvals_required must be at least 1, got {approvals_required}")
        now = iso(self._now())
        with self.write() as conn:
            pid = self._insert(conn, "proposals", {
                "decision_id": decision_id, "created_at": now, "expires_at": iso(expires_at),
                "underlying": action.underlying, "action": action.action.value, "symbol": action.symbol,
                "roll_from": action.roll_from, "size": action.size, "approvals_required": approvals_required,
                "status": "pending", "updated_at": now, "action_json": _model_json(action)})
            conn.execute("UPDATE proposals SET label = ? WHERE id = ?", [label_for(pid, self.instance_id), pid])
            self.append_event("proposal_created", proposal_id=pid, decision_id=decision_id, actor=actor,
                              channel=channel, reason=action.reasoning[:500] or None,
                              data={"action": action.action.value, "symbol": action.symbol,
                                    "roll_from": action.roll_from, "size": action.size,
                                    "expires_at": iso(expires_at), "approvals_required": approvals_required})
            row = self.get_proposal(pid)
        assert row is not None
        return row

    def transition(self, proposal_id: int, from_status: str | Sequence[str], to_status: str, *, actor: str,
                   channel: str, reason: str | None = None, data: Any = None) -> bool:
        """Compare-and-swap the status (inside BEGIN IMMEDIATE) and append a `proposal_<to>` event
        in the same transaction. False when the CAS lost (status was not `from_status`)."""
        froms = _status_tuple(from_status)
        _status_tuple(to_status)
        for f in froms:
            if to_status not in TRANSITIONS.get(f, ()):
                raise ValueError(f"illegal proposal transition {f} -> {to_status}")
        with self.write() as conn:
            return self._cas(conn, proposal_id, froms, to_status, actor=actor, channel=channel, reason=reason,
                             data=data)

    def _cas(self, conn: Database, proposal_id: int, froms: tuple[str, ...], to_status: str, *, actor: str,
             channel: str, reason: str | None, data: Any = None) -> bool:
        old = conn.execute("SELECT status, decision_id FROM proposals WHERE id = ?", [proposal_id]).fetchone()
        if old is None or old[0] not in froms:
            return False
        now = iso(self._now())
        decided = old[0] == "pending"
        marks = ", ".join("?" for _ in froms)
        cur = conn.execute(
            f"UPDATE proposals SET status = ?, status_reason = ?, updated_at = ?, "
            f"decided_by = CASE WHEN ? THEN ? ELSE decided_by END, "
            f"decided_at = CASE WHEN ? THEN ? ELSE decided_at END "
            f"WHERE id = ? AND status IN ({marks})",
            [to_status, reason, now, decided, str(actor), decided, now, proposal_id, *froms])
        if cur.rowcount != 1:
            return False
        payload = {"from": old[0], "to": to_status}
        if data is not None:
            payload["data"] = data
        self.append_event(f"proposal_{to_status}", proposal_id=proposal_id, decision_id=old[1], actor=actor,
                          channel=channel, reason=reason, data=payload)
        return True

    def get_proposal(self, proposal_id: int) -> ProposalRow | None:
        r = self._row("SELECT * FROM proposals WHERE id = ?", [proposal_id])
        return None if r is None else _proposal(r)

    def pending_proposals(self, underlying: str | None = None) -> list[ProposalRow]:
        if underlying is None:
            return self.proposals_in_status("pending")
        return [_proposal(r) for r in self._rows(
            "SELECT * FROM proposals WHERE underlying = ? AND status = 'pending' ORDER BY id", [underlying])]

    def proposals_in_status(self, *statuses: str) -> list[ProposalRow]:
        """Proposals in any of `statuses`, oldest first."""
        sts = _status_tuple(statuses)
        marks = ", ".join("?" for _ in sts)
        return [_proposal(r) for r in self._rows(f"SELECT * FROM proposals WHERE status IN ({marks}) ORDER BY id",
                                                 list(sts))]

    def latest_proposal(self) -> ProposalRow | None:
        r = self._row("SELECT * FROM proposals ORDER BY id DESC LIMIT 1")
        return None if r is None else _proposal(r)

    def list_proposals(self, status: str | Sequence[str] | None = None, since: datetime | None = None,
                       until: datetime | None = None, action: str | ActionType | None = None, limit: int = 100,
                       underlying: str | None = None, order: str = "desc") -> list[ProposalRow]:
        """Proposals by creation time (newest first by default)."""
        where, params = self._time_filter("created_at", since, until)
        if status is not None:
            sts = _status_tuple(status)
            where.append(f"status IN ({', '.join('?' for _ in sts)})")
            params += list(sts)
        if action is not None:
            where.append("action = ?")
            params.append(action.value if isinstance(action, ActionType) else action)
        if underlying is not None:
            where.append("underlying = ?")
            params.append(underlying)
        o = _order(order)
        sql = f"SELECT * FROM proposals {self._where(where)} ORDER BY created_at {o}, id {o} LIMIT ?"
        return [_proposal(r) for r in self._rows(sql, params + [limit])]

    def expire_due(self, now: datetime | None = None) -> list[int]:
        """CAS pending -> expired for every proposal past expires_at (one transaction); their ids."""
        cutoff = iso(now or self._now())
        done = []
        with self.write() as conn:
            due = [r[0] for r in conn.execute(
                "SELECT id FROM proposals WHERE status = 'pending' AND expires_at <= ? ORDER BY id", [cutoff])]
            for pid in due:
                if self._cas(conn, pid, ("pending",), "expired", actor="system", channel="scheduler",
                             reason="approval window elapsed"):
                    done.append(pid)
        return done

    # --- votes ----------------------------------------------------------------------------

    def add_vote(self, proposal_id: int, user: str, channel: str, vote: str, reason: str | None = None) -> bool:
        """Record a vote (and a `vote` event); False if this user already voted on this proposal.
        No status change: see vote_and_maybe_approve for the combined rule."""
        with self.write() as conn:
            return self._insert_vote(conn, proposal_id, str(user), channel, vote, reason)

    def _insert_vote(self, conn: Database, proposal_id: int, user: str, channel: str, vote: str,
                     reason: str | None) -> bool:
        if vote not in ("approve", "reject"):
            raise ValueError(f"vote must be 'approve' or 'reject', got {vote!r}")
        if conn.execute("SELECT 1 FROM proposals WHERE id = ?", [proposal_id]).fetchone() is None:
            raise ValueError(f"no proposal #{proposal_id}")
        cur = conn.execute('INSERT INTO votes (proposal_id, "user", channel, vote, reason, ts) '
                           "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", [proposal_id, user, channel, vote, reason, iso(self._now())])
        if cur.rowcount != 1:
            return False
        self.append_event("vote", proposal_id=proposal_id, actor=user, channel=channel, reason=reason,
                          data={"vote": vote})
        return True

    def votes(self, proposal_id: int) -> list[VoteRow]:
        return [_vote(r) for r in self._rows("SELECT * FROM votes WHERE proposal_id = ? ORDER BY id", [proposal_id])]

    def approve_count(self, proposal_id: int) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM votes WHERE proposal_id = ? AND vote = 'approve'",
                                [proposal_id]))

    def vote_and_maybe_approve(self, proposal_id: int, user: str, channel: str, vote: str, reason: str | None = None,
                               approvals_required: int | None = None, *, now: datetime | None = None) -> VoteOutcome:
        """In ONE transaction: the proposal must be pending and not expired at `now`; the vote is
        recorded; enough approvals CAS pending -> approved, a reject CAS pending -> rejected.
        `approvals_required` defaults to the proposal's own. Any number of concurrent callers,
        threads or processes, give exactly one approved (or rejected) transition."""
        user = str(user)
        at = now or self._now()
        with self.write() as conn:
            row = conn.execute("SELECT status, expires_at, approvals_required FROM proposals WHERE id = ?",
                               [proposal_id]).fetchone()
            if row is None:
                return VoteOutcome("unknown", proposal_id, None)
            status, expires_at, own_required = row
            required = approvals_required if approvals_required is not None else own_required
            count = lambda: conn.execute(  # noqa: E731
                "SELECT COUNT(*) FROM votes WHERE proposal_id = ? AND vote = 'approve'", [proposal_id]).fetchone()[0]
            if status != "pending":
                return VoteOutcome("not_pending", proposal_id, status, count(), required)
            if iso(at) >= expires_at:
                self._cas(conn, proposal_id, ("pending",), "expired", actor="system", channel=channel,
                          reason=f"approval window elapsed before {user}'s {vote}")
                return VoteOutcome("expired", proposal_id, "expired", count(), required)
            if not self._insert_vote(conn, proposal_id, user, channel, vote, reason):
                return VoteOutcome("already_voted", proposal_id, status, count(), required)
            n = count()
            if vote == "reject":
                self._cas(conn, proposal_id, ("pending",), "rejected", actor=user, channel=channel,
                          reason=reason or f"rejected by {user}")
                return VoteOutcome("rejected", proposal_id, "rejected", n, required)
            if n >= required:
                self._cas(conn, proposal_id, ("pending",), "approved", actor=user, channel=channel,
                          reason=reason or f"{n}/{required} approvals", data={"approvals": n, "required": required})
                return VoteOutcome("approved", proposal_id, "approved", n, required)
            return VoteOutcome("recorded", proposal_id, "pending", n, required)

    # --- executions -----------------------------------------------------------------------

    def record_execution(self, proposal_id: int, result: ExecutionResult, *, actor: str = "agent",
                         channel: str = "executor") -> int:
        """Store an execution attempt and each of its orders, plus an `execution_recorded` event.
        (The status transition is the caller's, e.g. transition(pid, 'executing', 'executed').)"""
        now = iso(self._now())
        with self.write() as conn:
            eid = self._insert(conn, "executions", {
                "proposal_id": proposal_id, "ts": now, "status": result.status.value, "dry_run": int(result.dry_run),
                "message": result.message, "error_code": result.error_code, "result_json": _model_json(result)})
            for o in result.orders:
                r = o.request
                self._insert(conn, "orders", {
                    "execution_id": eid, "proposal_id": proposal_id, "ts": now, "order_id": o.order_id,
                    "instrument": r.instrument_name, "side": r.side, "amount": r.amount, "price": r.price,
                    "label": r.label, "order_type": r.order_type, "reduce_only": int(r.reduce_only),
                    "order_state": o.order_state, "filled_amount": o.filled_amount, "average_price": o.average_price,
                    "error_code": o.error_code, "error_message": o.error_message, "reused": int(o.reused)})
            self.append_event("execution_recorded", proposal_id=proposal_id, actor=actor, channel=channel,
                              reason=result.message[:500] or None,
                              data={"execution_id": eid, "status": result.status.value, "dry_run": result.dry_run,
                                    "orders": [o.order_id for o in result.orders]})
        return eid

    def executions(self, proposal_id: int) -> list[dict[str, Any]]:
        """Execution attempts of a proposal, each with its `orders` and `result` parsed."""
        out = []
        for e in self._rows("SELECT * FROM executions WHERE proposal_id = ? ORDER BY id", [proposal_id]):
            e = dict(e)
            e["result"] = _loads(e.pop("result_json"))
            e["dry_run"] = bool(e["dry_run"])
            e["orders"] = self._rows("SELECT * FROM orders WHERE execution_id = ? ORDER BY id", [e["id"]])
            out.append(e)
        return out

    # --- flags and settings ---------------------------------------------------------------
