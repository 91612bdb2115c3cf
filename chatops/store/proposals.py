"""Proposals, their compare-and-swap transitions, votes and executions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any


from agent.models import Action, ActionType, ExecutionResult

from chatops.identity import AUTO_PERSON, identity

from .db import Database
from .common import ProposalRow, TRANSITIONS, VoteOutcome, VoteRow, _loads, _model_json, _proposal, _status_tuple, _vote, iso, label_for
from .base import _order



def default_person(channel: str, user: str) -> str:
    """Without a directory, each namespaced identity is its own person (`auto` is `auto`)."""
    return AUTO_PERSON if user == AUTO_PERSON and channel == "auto" else identity(channel, user)


def _approving_persons(conn: Database, proposal_id: int) -> int:
    return conn.execute("SELECT COUNT(DISTINCT person) FROM votes WHERE proposal_id = ? AND vote = 'approve' "
                        "AND person <> ?", [proposal_id, AUTO_PERSON]).fetchone()[0]


class ProposalsMixin:
    def create_proposal(self, decision_id: int | None, action: Action, *, expires_at: datetime,
                        approvals_required: int, approval_mode: str = "manual", actor: str = "agent",
                        channel: str = "scheduler") -> ProposalRow:
        """A pending proposal of `action`; its label is set in the same transaction; event proposal_created.
        Its quorum (`approvals_required`, and whether `auto` may approve it: `approval_mode`) is its own
        from then on, whatever the settings of a later process say."""
        if approvals_required < 1:
            raise ValueError(f"approvals_required must be at least 1, got {approvals_required}")
        if approval_mode not in ("manual", "auto"):
            raise ValueError(f"approval_mode must be 'manual' or 'auto', got {approval_mode!r}")
        now = iso(self._now())
        with self.write() as conn:
            pid = self._insert(conn, "proposals", {
                "decision_id": decision_id, "created_at": now, "expires_at": iso(expires_at),
                "underlying": action.underlying, "action": action.action.value, "symbol": action.symbol,
                "roll_from": action.roll_from, "size": action.size, "approvals_required": approvals_required,
                "approval_mode": approval_mode, "status": "pending", "updated_at": now, "action_json": _model_json(action)})
            conn.execute("UPDATE proposals SET label = ? WHERE id = ?", [label_for(pid, self.instance_id), pid])
            self.append_event("proposal_created", proposal_id=pid, decision_id=decision_id, actor=actor,
                              channel=channel, reason=action.reasoning[:500] or None,
                              data={"action": action.action.value, "symbol": action.symbol,
                                    "roll_from": action.roll_from, "size": action.size,
                                    "expires_at": iso(expires_at), "approvals_required": approvals_required,
                                    "approval_mode": approval_mode})
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

    def add_vote(self, proposal_id: int, user: str, channel: str, vote: str, reason: str | None = None, *,
                 person: str | None = None) -> bool:
        """Record a vote (and a `vote` event); False if this person already voted on this proposal.
        No status change: see vote_and_maybe_approve for the combined rule."""
        with self.write() as conn:
            return self._insert_vote(conn, proposal_id, str(user), channel, vote, reason, person)

    def _insert_vote(self, conn: Database, proposal_id: int, user: str, channel: str, vote: str,
                     reason: str | None, person: str | None = None) -> bool:
        if vote not in ("approve", "reject"):
            raise ValueError(f"vote must be 'approve' or 'reject', got {vote!r}")
        if conn.execute("SELECT 1 FROM proposals WHERE id = ?", [proposal_id]).fetchone() is None:
            raise ValueError(f"no proposal #{proposal_id}")
        person = person or default_person(channel, user)
        if not self._insert(conn, "votes", {"proposal_id": proposal_id, "user": user, "channel": channel, "vote": vote,
                                            "reason": reason, "ts": iso(self._now()), "person": person},
                            or_ignore=True):
            return False
        self.append_event("vote", proposal_id=proposal_id, actor=user, channel=channel, reason=reason,
                          data={"vote": vote, "person": person})
        return True

    def votes(self, proposal_id: int) -> list[VoteRow]:
        return [_vote(r) for r in self._rows("SELECT * FROM votes WHERE proposal_id = ? ORDER BY id", [proposal_id])]

    def approve_count(self, proposal_id: int) -> int:
        """Distinct persons who approved."""
        return int(self._scalar("SELECT COUNT(DISTINCT person) FROM votes WHERE proposal_id = ? AND vote = 'approve'",
                                [proposal_id]))

    def vote_and_maybe_approve(self, proposal_id: int, user: str, channel: str, vote: str, reason: str | None = None,
                               approvals_required: int | None = None, *, person: str | None = None,
                               now: datetime | None = None) -> VoteOutcome:
        """In ONE transaction: the proposal must be pending and not expired at `now`; the vote is
        recorded (one per person: `person` defaults to the namespaced `channel:user`); enough distinct
        approving persons CAS pending -> approved, a reject CAS pending -> rejected. The quorum is the
        proposal's own (`approvals_required` is only a check: a different number is refused); the
        vote of the person `auto` approves alone only a proposal made in APPROVAL_MODE=auto. Any
        number of concurrent callers, threads or processes, give exactly one approved (or rejected)."""
        user = str(user)
        person = person or default_person(channel, user)
        at = now or self._now()
        with self.write() as conn:
            row = conn.execute("SELECT status, expires_at, approvals_required, approval_mode FROM proposals WHERE id = ?",
                               [proposal_id]).fetchone()
            if row is None:
                return VoteOutcome("unknown", proposal_id, None)
            status, expires_at, required, mode = row
            if approvals_required is not None and approvals_required != required:
                raise ValueError(f"proposal #{proposal_id} needs {required} approvals (its own quorum), "
                                 f"not the caller's {approvals_required}")
            if person == AUTO_PERSON and vote == "approve" and mode != "auto":
                raise ValueError(f"proposal #{proposal_id} was made in manual mode: `auto` cannot approve it")
            if person == AUTO_PERSON and mode == "auto":
                required = 1
            count = lambda: _approving_persons(conn, proposal_id)  # noqa: E731
            if status != "pending":
                return VoteOutcome("not_pending", proposal_id, status, count(), required)
            if iso(at) >= expires_at:
                self._cas(conn, proposal_id, ("pending",), "expired", actor="system", channel=channel,
                          reason=f"approval window elapsed before {user}'s {vote}")
                return VoteOutcome("expired", proposal_id, "expired", count(), required)
            if not self._insert_vote(conn, proposal_id, user, channel, vote, reason, person):
                return VoteOutcome("already_voted", proposal_id, status, count(), required)
            n = count()
            if vote == "reject":
                self._cas(conn, proposal_id, ("pending",), "rejected", actor=user, channel=channel,
                          reason=reason or f"rejected by {user}")
                return VoteOutcome("rejected", proposal_id, "rejected", n, required)
            if n >= required or person == AUTO_PERSON:
                self._cas(conn, proposal_id, ("pending",), "approved", actor=user, channel=channel,
                          reason=reason or f"{n}/{required} approvals", data={"approvals": n, "required": required})
                return VoteOutcome("approved", proposal_id, "approved", n, required)
            return VoteOutcome("recorded", proposal_id, "pending", n, required)

    def quorum_shortfall(self, conn: Database, proposal_id: int) -> str | None:
        """Recount at the claim: None when the proposal's stored votes meet its own quorum, else why
        not (one line). Votes are counted by distinct person; a reject vetoes."""
        row = conn.execute("SELECT approvals_required, approval_mode FROM proposals WHERE id = ?",
                           [proposal_id]).fetchone()
        if row is None:
            return f"no proposal #{proposal_id}"
        required, mode = row
        if conn.execute("SELECT 1 FROM votes WHERE proposal_id = ? AND vote = 'reject'", [proposal_id]).fetchone():
            return "a reject vote is on record"
        if mode == "auto" and conn.execute("SELECT 1 FROM votes WHERE proposal_id = ? AND vote = 'approve' AND "
                                           "person = ?", [proposal_id, AUTO_PERSON]).fetchone():
            return None
        n = _approving_persons(conn, proposal_id)
        return None if n >= required else f"only {n} of the {required} approving persons it needs are on record"

    def claim_for_execution(self, proposal_id: int, *, actor: str = "agent", channel: str = "executor",
                            reason: str | None = None) -> tuple[bool, str | None]:
        """Claim approved -> executing in one transaction, after recounting the approving persons:
        (True, None) claimed; (False, why) when it was not approved any more or its votes fall short
        (then it is moved to blocked, with the recount as the reason). The executor uses
        `claim` (store/orders.py): the same recount, plus expiry, pause and the planned legs."""
        out = self.claim(proposal_id, [], now=self._now(), reason=reason or "claimed", actor=actor,  # type: ignore[attr-defined]
                         channel=channel)
        return out.ok, None if out.ok else out.reason

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
                    "error_code": o.error_code, "error_message": o.error_message, "reused": int(o.reused),
                    "fee": o.fee})
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
