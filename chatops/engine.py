"""Execution of approved proposals, driven from the database, followed until the exchange agrees.

An approved proposal (whichever process recorded the vote) is re-checked on a fresh state (risk
engine again, and price drift against what was proposed), then claimed: `Store.claim` moves it
approved -> executing in ONE transaction with the checks that must hold at that instant (not
expired, not paused, the votes still there) and its planned legs. Each leg is then a limit order
under its own label, sent and followed by `agent.orders` on every sweep (read back, repriced,
cancelled on timeout, drift or request; a lost answer looked up by label, never resent) until the
exchange shows it final. Only then does the proposal end:

- `executed` when the exchange holds a fill for it (full or partial: the reason says how much);
- `failed` when it holds none, or when a roll bought back its call but did not sell the new one
  ("roll half done ..."; the chat gets an alert).

On start-up, `reconcile` looks up every leg of what a crash left `executing` by its label and
goes on from there with the same rules; nothing is sent after a restart. A database hiccup while
recording is retried with back-off while the bot lives, and a proposal left `executing` is picked
up again by the next sweep.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from sqlalchemy.exc import OperationalError
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from agent.clock import to_datetime
from agent.config import Settings
from agent.deribit.errors import DeribitError
from agent.exchange import Exchange
from agent.execution import execute_action
from agent.models import (Action, ActionType, AgentState, ExecutionResult, ExecutionStatus, OrderOutcome,
                          OrderRequest)
from agent.orders import Leg, OrderEvent, advance_leg, look_up_leg, plan_legs, send_leg
from agent.risk import check_action_allowed
from agent.state import build_agent_state

from .approvals import ApprovalService
from .store import Store, StoreBusyError

log = logging.getLogger(__name__)

# Test hook: a real SIGKILL at a chosen point (crash-safety tests): `after_send` (the first order
# is out, nothing recorded) or `between_roll_legs` (the close leg filled and recorded, the new
# call not yet sold).
CRASH_POINT_ENV = "CHATOPS_TEST_CRASH_POINT"
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 5.0

T = TypeVar("T")


@dataclass(frozen=True)
class ExecOutcome:
    proposal_id: int
    status: str  # executed | failed | blocked | working | skipped
    message: str
    result: ExecutionResult | None = None


Notifier = Callable[[int, str, str], Awaitable[None]]  # (proposal id, kind, one line)


def price_drift(action: Action, state: AgentState) -> tuple[float, str] | None:
    """The adverse move of the price against the proposal, in % of the premium, and a text."""
    moves = []
    if action.ref_sell_price and action.symbol:
        roll = action.action == ActionType.ROLL_COVERED_CALL  # a roll may sell from the roll window
        c = state.roll_candidate(action.symbol) if roll else state.candidate(action.symbol)
        if c is None:
            return (100.0, f"{action.symbol} is no longer a candidate")
        moves.append(((action.ref_sell_price - c.bid) / action.ref_sell_price * 100.0,
                      f"bid {action.ref_sell_price:.4f} -> {c.bid:.4f}"))
    if action.ref_buy_price:
        sym = action.roll_from or action.symbol
        p = state.position(sym or "")
        if p is None:
            return (100.0, f"{sym} is no longer an open position")
        now_cost = p.ask if p.ask is not None else p.mark
        base = action.ref_sell_price if action.action == ActionType.ROLL_COVERED_CALL else action.ref_buy_price
        moves.append(((now_cost - action.ref_buy_price) / max(base or action.ref_buy_price, 1e-12) * 100.0,
                      f"cost to close {action.ref_buy_price:.4f} -> {now_cost:.4f}"))
    if not moves:
        return None
    pct = sum(m for m, _ in moves)
    return pct, "; ".join(t for _, t in moves)


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_POINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class Executor:
    def __init__(self, store: Store, approvals: ApprovalService, exchange: Exchange, settings: Settings,
                 on_change: Callable[[int], Awaitable[None]] | None = None, *, notify: Notifier | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.store = store
        self.approvals = approvals
        self.exchange = exchange
        self.settings = settings
        self.on_change = on_change  # the proposal's card changed (final state)
        self.notify = notify  # one chat line per fill, partial fill, cancel, unknown-then-found
        self._sleep = sleep
        self._lock = asyncio.Lock()  # one execution step at a time in this process
        self.closed = False

    async def _changed(self, pid: int) -> None:
        if self.on_change is not None:
            await self.on_change(pid)

    # --- recording, retried -------------------------------------------------------------------

    async def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        """Run a store write until it succeeds: a busy or locked database (or a full disk) must not
        strand an order the exchange already holds. Back-off doubles up to RETRY_MAX_S."""
        delay = RETRY_FIRST_S
        while True:
            try:
                return fn()
            except (StoreBusyError, OperationalError) as exc:
                if self.closed:
                    raise
                log.warning("recording %s failed (%s); retrying in %.2fs", what, exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    # --- approved -> executing -> ... ---------------------------------------------------------------

    async def execute_approved(self) -> list[ExecOutcome]:
        """Execute every approved proposal (in id order). Safe to call from many places at once."""
        out = []
        for row in self.store.proposals_in_status("approved"):
            out.append(await self.execute(row.id))
        return out

    async def execute(self, pid: int) -> ExecOutcome:
        async with self._lock:
            outcome = await self._execute(pid)
        if outcome.status not in ("skipped", "working"):
            await self._changed(pid)
        return outcome

    def _settings_for(self, coin: str):
        """UNDERLYING=BTC,ETH: the coin's view (its DEFAULT_ORDER_SIZE_ETH ...); a coin this bot
        does not trade (a row from another process) is checked with the plain settings."""
        return self.settings.for_underlying(coin) if coin in self.settings.underlyings else self.settings

    async def _execute(self, pid: int) -> ExecOutcome:
        row = self.store.get_proposal(pid)
        if row is None or row.status != "approved":
            return ExecOutcome(pid, "skipped", f"not approved ({row.status if row else 'unknown'})")
        action = Action.model_validate_json(row.action_json)
        if self.approvals.is_paused(action.underlying):  # the kill switch, or this coin's pause
            return ExecOutcome(pid, "skipped", "paused")
        settings = self._settings_for(action.underlying)  # that coin's sizes and limits
        if self._now() > row.expires_at:
            return self._block(pid, "expired before it could execute")

        # Fresh state, risk again, price drift.
        try:
            history = self.store.history_for_policy(action.underlying, self._now())
            state = await build_agent_state(self.exchange.client, settings, clock=self.exchange.clock, history=history)
        except DeribitError as exc:
            return self._block(pid, f"could not read a fresh state: {exc}")
        risk = check_action_allowed(state, action, settings, now=self._now())
        if not risk.allowed:
            return self._block(pid, "risk re-check failed: " + "; ".join(risk.reasons))
        drift = price_drift(action, state)
        if drift is not None and drift[0] > self.settings.max_price_drift_pct:
            return self._block(pid, f"price moved {drift[0]:.1f}% of the premium against us ({drift[1]}), "
                                    f"more than MAX_PRICE_DRIFT_PCT {self.settings.max_price_drift_pct:g}%")

        dry = self.settings.effective_dry_run
        legs = [] if dry else plan_legs(action, row.label)  # a dry run sends nothing: nothing to follow
        claim = self.store.claim(pid, legs, now=self._now(),
                                 reason="re-check passed" + (f"; drift {drift[0]:.1f}%" if drift else ""))
        if not claim.ok:
            if claim.kind in ("expired", "votes"):
                log.warning("proposal #%d blocked at the claim: %s", pid, claim.reason)
                return ExecOutcome(pid, "blocked", claim.reason)
            return ExecOutcome(pid, "skipped", claim.reason)

        if dry:
            result = await execute_action(self.exchange.client, action, row.label, settings)
            await self._retrying(f"#{pid}", lambda: self.store.settle(pid, result, "executed", result.message))
            return ExecOutcome(pid, "executed", result.message, result)
        try:
            return await self._drive(pid, action)
        except Exception as exc:  # a bug must not lose track: the proposal stays executing, the sweep retries
            log.exception("execution of #%d raised; the next sweep picks it up", pid)
            return ExecOutcome(pid, "working", f"execution raised {type(exc).__name__}: {exc}")

    def _block(self, pid: int, reason: str) -> ExecOutcome:
        self.store.transition(pid, "approved", "blocked", actor="agent", channel="executor", reason=reason)
        log.warning("proposal #%d blocked: %s", pid, reason)
        return ExecOutcome(pid, "blocked", reason)

    def _now(self):
        return to_datetime(self.exchange.clock.now_ms())

    # --- following the legs ------------------------------------------------------------------------

    async def follow(self) -> list[ExecOutcome]:
        """One step for every proposal left `executing` (working orders, lost answers, a record a
        database hiccup kept from being written): poll, reprice, cancel, settle."""
        out = []
        for row in self.store.proposals_in_status("executing"):
            async with self._lock:
                try:
                    outcome = await self._drive(row.id, row.to_action())
                except DeribitError as exc:  # the exchange is away: ask again next sweep
                    log.warning("following #%d: %s", row.id, exc)
                    continue
                except Exception:  # one proposal's trouble (a bug, a database that stays locked) never stops the others
                    log.exception("following #%d failed; the next sweep tries again", row.id)
                    continue
            if outcome.status not in ("skipped", "working"):
                await self._changed(row.id)
            out.append(outcome)
        return out

    async def _drive(self, pid: int, action: Action) -> ExecOutcome:
        """Move the proposal's legs one step (sending the next one when it is due); settle it when
        every leg is final."""
        legs = self.store.legs(pid)
        if not legs:  # claimed by an older version, or a dry run: nothing to follow
            legs = plan_legs(action, self.store.get_proposal(pid).label)  # type: ignore[union-attr]
            await self._retrying(f"#{pid} legs", lambda: [self.store.save_leg(pid, i, lg) for i, lg in enumerate(legs)])
        for i, leg in enumerate(legs):
            if leg.final:
                continue
            if leg.state == "new":
                if i > 0:
                    prev = legs[i - 1]
                    if prev.filled <= 0:  # a roll whose close leg bought nothing back: sell nothing
                        leg = leg.model_copy(update={"state": "not_sent", "reason": f"not sent: {prev.instrument} was not "
                                                                                    f"bought back"})
                        await self._save(pid, i, leg, [])
                        legs[i] = leg
                        continue
                    _crash_point("between_roll_legs")
                    if prev.filled < leg.amount:  # sell what was bought back, no more
                        leg = leg.model_copy(update={"amount": prev.filled})
                leg, events = await send_leg(self.exchange.client, leg, currency=action.underlying,
                                             settings=self.settings, clock=self.exchange.clock,
                                             before_send=lambda lg, i=i: self.store.save_leg(pid, i, lg))
                _crash_point("after_send")
            else:
                leg, events = await advance_leg(self.exchange.client, leg, currency=action.underlying,
                                                settings=self.settings, clock=self.exchange.clock)
            await self._save(pid, i, leg, events)
            legs[i] = leg
            if not leg.final:
                return ExecOutcome(pid, "working", f"{leg.label} {leg.state}")
        return await self._settle(pid, action, legs)

    async def _save(self, pid: int, seq: int, leg: Leg, events: list[OrderEvent]) -> None:
        await self._retrying(f"#{pid} {leg.label}", lambda: self.store.save_leg(pid, seq, leg, events))
        for e in events:
            if e.kind in ("fill", "partial_fill", "cancelled", "found", "unknown", "not_found", "rejected"):
                await self._tell(pid, e.kind, f"#{pid} {e.text}")

    async def _tell(self, pid: int, kind: str, text: str) -> None:
        if self.notify is None:
            return
        try:
            await self.notify(pid, kind, text)
        except Exception:
            log.exception("could not tell the chat about #%d", pid)

    async def _settle(self, pid: int, action: Action, legs: list[Leg]) -> ExecOutcome:
        status, text, alert = settle_text(action, legs)
        result = ExecutionResult(status=_exec_status(status, legs), dry_run=False,
                                 orders=tuple(_outcome(lg) for lg in legs), message=text)
        done = await self._retrying(f"#{pid} result", lambda: self.store.settle(pid, result, status, text))
        if not done:
            return ExecOutcome(pid, "skipped", "already settled")
        log.info("proposal #%d %s: %s", pid, status, text)
        if alert:
            await self._tell(pid, "alert", f"ALERT #{pid}: {text}")
        return ExecOutcome(pid, status, text, result)

    # --- cancel and restart --------------------------------------------------------------------

    async def cancel(self, pid: int, user: str, channel: str) -> tuple[bool, str]:
        """Cancel proposal `pid`'s working order(s) on the exchange; recorded with who asked."""
        row = self.store.get_proposal(pid)
        if row is None:
            return False, f"No proposal #{pid}."
        if row.status != "executing":
            return False, f"#{pid} has no working order ({row.status})."
        asked = self.store.request_cancel(pid, str(user), channel)
        if not asked:
            return False, f"#{pid}: nothing left to cancel (its orders are final or already being cancelled)."
        await self.follow()  # cancel now rather than at the next sweep
        row = self.store.get_proposal(pid)
        return True, f"Cancel of #{pid} ({', '.join(asked)}) asked by {user}: now {row.status if row else '?'}."

    async def reconcile(self) -> list[ExecOutcome]:
        """After a restart: every leg of what a crash left `executing` is looked up by label
        (found filled, found working, found cancelled, not found) and followed from there. Nothing
        is sent here: a leg never sent stays unsent."""
        out = []
        for row in self.store.proposals_in_status("executing"):
            action = row.to_action()
            legs = self.store.legs(row.id) or plan_legs(action, row.label)
            try:
                for i, leg in enumerate(legs):
                    if leg.final:
                        continue
                    leg, events = await look_up_leg(self.exchange.client, leg, currency=action.underlying,
                                                    clock=self.exchange.clock)
                    await self._save(row.id, i, leg, events)
                    legs[i] = leg
            except DeribitError as exc:
                log.error("reconcile #%d: exchange error %s; the sweep tries again", row.id, exc)
                continue
            outcome = ExecOutcome(row.id, "working", "following after a restart")
            if all(lg.final for lg in legs):
                outcome = await self._settle(row.id, action, legs)
                await self._changed(row.id)
            out.append(outcome)
        return out


def settle_text(action: Action, legs: list[Leg]) -> tuple[str, str, bool]:
    """(status, reason, alert) of a proposal whose legs are all final, from what the exchange holds."""
    def done(lg: Leg) -> str:
        avg = f" at {lg.average_price:g}" if lg.average_price else ""
        fee = f", fee {lg.fee:g}" if lg.fee else ""
        return f"{lg.side} {lg.filled:g}/{lg.amount:g} {lg.instrument}{avg}{fee} [{lg.label}]"

    if action.action == ActionType.ROLL_COVERED_CALL and len(legs) == 2:
        close, open_ = legs
        if close.filled <= 0:
            return "failed", (f"roll abandoned: the close leg did not fill ({close.reason or close.state}); "
                              f"{close.instrument} is still short, nothing was sold"), False
        if open_.filled <= 0:
            rest = close.amount - close.filled
            left = f"; {rest:g} {close.instrument} is still short" if rest > 1e-12 else ""
            return "failed", (f"roll half done: bought back {close.filled:g} {close.instrument}, {open_.instrument} "
                              f"not sold ({open_.reason or open_.state}); no covered call is open{left}"), True
        part = " (partly)" if open_.filled < open_.amount or close.filled < close.amount else ""
        return "executed", f"rolled{part}: {done(close)}; {done(open_)}", False
    (leg,) = legs
    if leg.filled <= 0:
        return "failed", leg.reason or f"no fill ({leg.state})", False
    if leg.filled < leg.amount - 1e-12:
        return "executed", (f"partly filled {leg.filled:g} of {leg.amount:g}: {done(leg)}; the rest "
                            f"{leg.reason or 'cancelled'}"), False
    return "executed", f"filled {done(leg)}", False


def _exec_status(status: str, legs: list[Leg]) -> ExecutionStatus:
    if status == "executed":
        return ExecutionStatus.FILLED if all(lg.filled >= lg.amount - 1e-12 for lg in legs) else ExecutionStatus.PARTIALLY_FILLED
    if any(lg.state == "rejected" for lg in legs):
        return ExecutionStatus.REJECTED
    return ExecutionStatus.FAILED


def _outcome(leg: Leg) -> OrderOutcome:
    req = OrderRequest(instrument_name=leg.instrument, side=leg.side, amount=leg.amount, price=leg.price or 0.0,
                       label=leg.label, reduce_only=leg.reduce_only)
    return OrderOutcome(request=req, order_id=leg.order_id, order_state=leg.state, filled_amount=leg.filled,
                        average_price=leg.average_price, error_message=leg.reason if leg.filled <= 0 else None,
                        reused=leg.found, fee=leg.fee)
