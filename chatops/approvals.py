"""The proposal state machine and every rule about who may decide what.

    pending -> approved -> executing -> executed | failed
    pending -> rejected | expired | superseded | cancelled
    approved -> blocked          (the re-check at execution time failed)

Every transition is a compare-and-swap in the store (`UPDATE ... WHERE id=? AND status=?` inside
BEGIN IMMEDIATE) plus an event row, so two clicks, two approvers or two processes race safely:
one wins, the others are told it was already decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from agent.config import ConfigError, Settings
from agent.models import Action, ActionType, Decision

from .identity import AUTO_PERSON, Directory, directory_for
from .store import Store

AUTO_USER = AUTO_PERSON


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ProposeResult:
    kind: str  # created | kept | none | paused
    proposal_id: int | None = None
    superseded: tuple[int, ...] = ()


@dataclass(frozen=True)
class VoteResult:
    kind: str  # recorded | approved | rejected | already_voted | not_pending | expired | unauthorized | unknown
    proposal_id: int
    message: str
    status: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind in ("recorded", "approved", "rejected", "cancelled")


@dataclass(frozen=True)
class SwitchResult:
    kind: str  # done | noop | unauthorized
    message: str
    cancelled: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return self.kind != "unauthorized"


class ApprovalService:
    def __init__(self, store: Store, settings: Settings, *, now: Callable[[], datetime] = utc_now,
                 enabled_channels: tuple[str, ...] = ("console",), directory: Directory | None = None) -> None:
        self.store = store
        self.settings = settings
        self.now = now
        self.directory = directory if directory is not None else directory_for(settings)
        self.enabled_channels = enabled_channels

    # --- who may decide -------------------------------------------------------------------

    def check_startup(self) -> None:
        """In manual mode, an enabled channel with nobody allowed to vote is a set-up error."""
        if self.settings.approval_mode != "manual":
            return
        env = {"telegram": "TELEGRAM_ALLOWED_USER_IDS", "slack": "SLACK_ALLOWED_USER_IDS", "console": "CONSOLE_ALLOWED_USERS",
               "web": "WEB_ALLOWED_USERS"}
        for ch in self.enabled_channels:
            if not self.directory.has_anyone(ch):
                raise ConfigError(f"config error: {env.get(ch, ch)} is empty: in APPROVAL_MODE=manual nobody could approve "
                                  f"on {ch}; list the user ids allowed to vote")

    def is_authorized(self, channel: str, user: str) -> bool:
        """A known person (any role): may read and pause."""
        return self.directory.check(channel, str(user), "read").allowed

    def authorize(self, channel: str, user: str, action: str, *, proposal_id: int | None = None,
                  record: bool = True) -> str | None:
        """None when `user` on `channel` may do `action` (identity.ACTION_ROLE), else the refusal
        as one line; a refusal is recorded as an `unauthorized` event."""
        verdict = self.directory.check(channel, str(user), action)
        if verdict.allowed:
            return None
        if record:
            kind = "unauthorized_vote" if action in ("approve", "reject") else "unauthorized"
            self.store.append_event(kind, proposal_id=proposal_id, actor=str(user), channel=channel,
                                    reason=f"{action} refused: {verdict.reason}")
        return f"Not authorized: {verdict.reason}."

    def person_of(self, channel: str, user: str) -> str:
        p = self.directory.person(channel, str(user))
        assert p is not None, "authorize() first"
        return p.key

    # --- proposals ------------------------------------------------------------------------

    def propose(self, decision_id: int, decision: Decision) -> ProposeResult:
        """Turn a decision into a proposal: one pending per underlying, same action kept,
        a different one supersedes the old."""
        action = decision.final_action
        if action.action == ActionType.DO_NOTHING:
            return ProposeResult("none")
        if self.is_paused(action.underlying):
            return ProposeResult("paused")
        superseded = []
        for row in self.store.pending_proposals(action.underlying):
            old = Action.model_validate_json(row.action_json)
            if old.key() == action.key() and row.expires_at > self.now():
                return ProposeResult("kept", row.id)
            if self.store.transition(row.id, "pending", "superseded", actor="agent", channel="scheduler",
                                     reason=f"superseded by a new {action.action.value} on {action.symbol}"):
                superseded.append(row.id)
        row = self.store.create_proposal(
            decision_id, action, expires_at=self.now() + timedelta(seconds=self.settings.approval_ttl_sec),
            approvals_required=self.settings.approvals_required, approval_mode=self.settings.approval_mode,
        )
        return ProposeResult("created", row.id, tuple(superseded))

    def vote(self, proposal_id: int, user: str, channel: str, vote: str, reason: str | None = None) -> VoteResult:
        """A person's vote from a channel. Counted against the proposal's OWN quorum (stored with
        it), never this process's APPROVALS_REQUIRED; one vote per person whatever the channel."""
        user = str(user)
        refused = self.authorize(channel, user, vote, proposal_id=proposal_id)
        if refused:
            return VoteResult("unauthorized", proposal_id, refused)
        if self.store.get_proposal(proposal_id) is None:
            return VoteResult("unknown", proposal_id, f"No proposal #{proposal_id}.")
        if vote == "approve" and self.is_paused():
            return VoteResult("not_pending", proposal_id, "The bot is paused: nothing can be approved until `resume`.")
        out = self.store.vote_and_maybe_approve(proposal_id, user, channel, vote, reason,
                                                person=self.person_of(channel, user), now=self.now())
        return VoteResult(out.kind, proposal_id, _vote_message(out, proposal_id, out.required), out.status)

    def auto_approve(self, proposal_id: int) -> VoteResult | None:
        """Unattended mode: approve as the user `auto` inside the tighter auto limits, else leave it
        to a human. Recorded like any vote."""
        if self.settings.approval_mode != "auto":
            return None
        row = self.store.get_proposal(proposal_id)
        if row is None or row.status != "pending" or row.approval_mode != "auto":
            return None
        action = Action.model_validate_json(row.action_json)
        coin = action.underlying
        limit = (self.settings.for_underlying(coin) if coin in self.settings.underlyings else self.settings).effective_auto_max_size
        if action.size is None or action.size > limit + 1e-12:
            self.store.append_event("auto_approve_declined", proposal_id=proposal_id, actor=AUTO_USER, channel="auto",
                                    reason=f"size {action.size:g} over AUTO_APPROVE_MAX_SIZE {limit:g}: waiting for a human")
            return None
        # The only path that votes as `auto` (a reserved name no channel can use). Its one vote
        # approves alone only a proposal made in auto mode (the store and a trigger check that).
        out = self.store.vote_and_maybe_approve(proposal_id, AUTO_USER, "auto", "approve",
                                                "within the auto-approve limits", person=AUTO_PERSON, now=self.now())
        return VoteResult(out.kind, proposal_id, _vote_message(out, proposal_id, 1), out.status)

    def expire_due(self) -> list[int]:
        return self.store.expire_due(self.now())

    def cancel_pending(self, underlying: str | None, reason: str, actor: str, channel: str) -> list[int]:
        done = []
        for row in self.store.pending_proposals(underlying):
            if self.store.transition(row.id, "pending", "cancelled", actor=actor, channel=channel, reason=reason):
                done.append(row.id)
        return done

    def cancel(self, proposal_id: int, user: str, channel: str, reason: str | None = None) -> VoteResult:
        """Withdraw one pending proposal (approvers only; a refusal is recorded)."""
        user = str(user)
        refused = self.authorize(channel, user, "cancel", proposal_id=proposal_id)
        if refused:
            return VoteResult("unauthorized", proposal_id, refused)
        row = self.store.get_proposal(proposal_id)
        if row is None:
            return VoteResult("unknown", proposal_id, f"No proposal #{proposal_id}.")
        if not self.store.transition(proposal_id, "pending", "cancelled", actor=user, channel=channel,
                                     reason=reason or f"cancelled by {user}"):
            now = self.store.get_proposal(proposal_id)
            return VoteResult("not_pending", proposal_id, f"#{proposal_id} was already decided ({now.status if now else '?'}).")
        return VoteResult("cancelled", proposal_id, f"#{proposal_id} cancelled.", "cancelled")

    # --- kill switch ----------------------------------------------------------------------

    def set_paused(self, paused: bool, user: str, channel: str, reason: str | None = None,
                   underlying: str | None = None) -> SwitchResult:
        """The kill switch as every entry point pulls it: any known person may pause (which also
        cancels what is pending); only an approver may resume. Refusals are recorded. With an
        underlying, only that coin pauses or resumes; without, the global switch (and `resume`
        lifts every coin's too)."""
        user = str(user)
        refused = self.authorize(channel, user, "pause" if paused else "resume")
        if refused:
            return SwitchResult("unauthorized", refused)
        coin = f" {underlying}" if underlying else ""
        if not paused:
            return (SwitchResult("done", f"Resumed{coin}.") if self.resume(user, channel, underlying)
                    else SwitchResult("noop", f"Not paused{coin}."))
        if not self.pause(user, channel, reason, underlying):
            return SwitchResult("noop", f"Already paused{coin}.")
        cancelled = tuple(self.cancel_pending(underlying, f"paused{coin} (kill switch)", user, channel))
        return SwitchResult("done", f"Paused{coin}.", cancelled)

    def is_paused(self, underlying: str | None = None) -> bool:
        """The global switch, or (given a coin) the global switch or that coin's own."""
        if self.store.get_flag("paused", "0") == "1":
            return True
        return underlying is not None and self.store.get_flag(_coin_flag(underlying), "0") == "1"

    def paused_coins(self) -> tuple[str, ...]:
        return tuple(c for c in self.settings.underlyings if self.store.get_flag(_coin_flag(c), "0") == "1")

    def pause(self, user: str, channel: str, reason: str | None = None, underlying: str | None = None) -> bool:
        flag = _coin_flag(underlying) if underlying else "paused"
        if self.store.get_flag(flag, "0") == "1":
            return False
        self.store.set_flag(flag, "1", actor=user, channel=channel, reason=reason or "paused")
        return True

    def resume(self, user: str, channel: str, underlying: str | None = None) -> bool:
        flags = [_coin_flag(underlying)] if underlying else ["paused"] + [_coin_flag(c) for c in self.paused_coins()]
        done = False
        for flag in flags:
            if self.store.get_flag(flag, "0") == "1":
                self.store.set_flag(flag, "0", actor=user, channel=channel, reason="resumed")
                done = True
        return done


def _coin_flag(underlying: str) -> str:
    return f"paused:{underlying.upper()}"


def _vote_message(out, proposal_id: int, required: int) -> str:
    k = out.kind
    if k == "approved":
        return f"#{proposal_id} approved: executing after a fresh re-check."
    if k == "rejected":
        return f"#{proposal_id} rejected."
    if k == "recorded":
        return f"Vote recorded on #{proposal_id}: {out.approvals}/{required} approvals."
    if k == "already_voted":
        return f"You already voted on #{proposal_id}."
    if k == "expired":
        return f"#{proposal_id} expired: it will not execute."
    if k == "not_pending":
        return f"#{proposal_id} was already decided ({out.status})."
    return f"#{proposal_id}: {k}"
