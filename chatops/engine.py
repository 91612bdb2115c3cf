"""Execution of approved proposals, driven from the database, exactly once.

An approved proposal (whichever process recorded the vote) is re-checked on a fresh state (risk
engine again, and price drift against what was proposed), claimed with a compare-and-swap
(approved -> executing), sent with its label, and its result recorded. On start-up, proposals
left approved or executing by a crash are reconciled with the exchange by label first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from typing import Awaitable, Callable

from agent.clock import to_datetime
from agent.config import Settings
from agent.deribit.errors import DeribitError
from agent.execution import execute_action, outcome_from_order
from agent.models import Action, ActionType, AgentState, ExecutionResult, ExecutionStatus, OrderRequest
from agent.risk import check_action_allowed
from agent.state import build_agent_state

from .approvals import ApprovalService
from agent.exchange import Exchange
from .store import Store

log = logging.getLogger(__name__)

# Test hook: a real SIGKILL between sending an order and recording it (crash-safety test).
CRASH_POINT_ENV = "CHATOPS_TEST_CRASH_POINT"


@dataclass(frozen=True)
class ExecOutcome:
    proposal_id: int
    status: str  # executed | failed | blocked | skipped
    message: str
    result: ExecutionResult | None = None


def price_drift(action: Action, state: AgentState) -> tuple[float, str] | None:
    """The adverse move of the price against the proposal, in % of the premium, and a text."""
    moves = []
    if action.ref_sell_price and action.symbol:
        c = state.candidate(action.symbol)
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


class Executor:
    def __init__(self, store: Store, approvals: ApprovalService, exchange: Exchange, settings: Settings,
                 on_change: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.store = store
        self.approvals = approvals
        self.exchange = exchange
        self.settings = settings
        self.on_change = on_change
        self._lock = asyncio.Lock()  # one execution at a time in this process

    async def _changed(self, pid: int) -> None:
        if self.on_change is not None:
            await self.on_change(pid)

    async def execute_approved(self) -> list[ExecOutcome]:
        """Execute every approved proposal (in id order). Safe to call from many places at once."""
        out = []
        for row in self.store.proposals_in_status("approved"):
            out.append(await self.execute(row.id))
        return out

    async def execute(self, pid: int) -> ExecOutcome:
        async with self._lock:
            outcome = await self._execute(pid)
        if outcome.status != "skipped":
            await self._changed(pid)
        return outcome

    async def _execute(self, pid: int) -> ExecOutcome:
        row = self.store.get_proposal(pid)
        if row is None or row.status != "approved":
            return ExecOutcome(pid, "skipped", f"not approved ({row.status if row else 'unknown'})")
        action = Action.model_validate_json(row.action_json)
        now = to_datetime(self.exchange.clock.now_ms())
        if self.approvals.is_paused():
            return ExecOutcome(pid, "skipped", "paused")
        if now > row.expires_at:
            return self._block(pid, "expired before it could execute")

        # Fresh state, risk again, price drift.
        try:
            history = self.store.history_for_policy(action.underlying, now)
            state = await build_agent_state(self.exchange.client, self.settings, clock=self.exchange.clock, history=history)
        except DeribitError as exc:
            return self._block(pid, f"could not read a fresh state: {exc}")
        risk = check_action_allowed(state, action, self.settings, now=to_datetime(self.exchange.clock.now_ms()))
        if not risk.allowed:
            return self._block(pid, "risk re-check failed: " + "; ".join(risk.reasons))
        drift = price_drift(action, state)
        if drift is not None and drift[0] > self.settings.max_price_drift_pct:
            return self._block(pid, f"price moved {drift[0]:.1f}% of the premium against us ({drift[1]}), "
                                    f"more than MAX_PRICE_DRIFT_PCT {self.settings.max_price_drift_pct:g}%")

        if self.approvals.is_paused():  # paused while we re-checked: nothing leaves
            return ExecOutcome(pid, "skipped", "paused")
        # The claim recounts the distinct approving persons against the proposal's own quorum.
        claimed, why = await asyncio.to_thread(self.store.claim_for_execution, pid, reason="re-check passed" + (
            f"; drift {drift[0]:.1f}%" if drift else ""))
        if not claimed:
            if why and why.startswith("refused at the claim"):
                log.warning("proposal #%d blocked: %s", pid, why)
                return ExecOutcome(pid, "blocked", why)
            return ExecOutcome(pid, "skipped", why or "another executor claimed it")
        try:
            result = await execute_action(self.exchange.client, action, row.label, self.settings)
        except Exception as exc:  # a bug must not leave the proposal `executing` until a restart
            log.exception("execution of #%d raised", pid)
            result = ExecutionResult(status=ExecutionStatus.FAILED, dry_run=self.settings.effective_dry_run,
                                     message=f"execution raised {type(exc).__name__}: {exc}; check the exchange for "
                                             f"orders labelled {row.label}")
        if os.environ.get(CRASH_POINT_ENV) == "after_send":
            os.kill(os.getpid(), signal.SIGKILL)
        return self._finish(pid, result)

    def _block(self, pid: int, reason: str) -> ExecOutcome:
        self.store.transition(pid, "approved", "blocked", actor="agent", channel="executor", reason=reason)
        log.warning("proposal #%d blocked: %s", pid, reason)
        return ExecOutcome(pid, "blocked", reason)

    def _finish(self, pid: int, result: ExecutionResult) -> ExecOutcome:
        self.store.record_execution(pid, result)
        ok = result.status in (ExecutionStatus.FILLED, ExecutionStatus.SUBMITTED, ExecutionStatus.PARTIALLY_FILLED,
                               ExecutionStatus.SIMULATED)
        status = "executed" if ok else "failed"
        self.store.transition(pid, "executing", status, actor="agent", channel="executor", reason=result.message[:500])
        log.info("proposal #%d %s: %s", pid, status, result.message)
        return ExecOutcome(pid, status, result.message, result)

    async def reconcile(self) -> list[ExecOutcome]:
        """After a restart: settle proposals a crash left `executing`, by asking the exchange for
        their labels. Nothing is sent here; an order that is not found was never sent."""
        out = []
        for row in self.store.proposals_in_status("executing"):
            action = Action.model_validate_json(row.action_json)
            labels = [f"{row.label}-close", f"{row.label}-open"] if action.action == ActionType.ROLL_COVERED_CALL else [row.label]
            outcomes = []
            try:
                for lb in labels:
                    found = await self.exchange.client.get_order_state_by_label(action.underlying, lb)
                    if found:
                        o = found[0]
                        req = OrderRequest(instrument_name=o.instrument_name, side=o.direction, amount=o.amount,
                                           price=o.price if isinstance(o.price, float) else 0.0, label=lb)
                        outcomes.append(outcome_from_order(req, o, reused=True))
            except DeribitError as exc:
                log.error("reconcile #%d: exchange error %s; left executing", row.id, exc)
                continue
            if outcomes:
                filled = all(o.order_state == "filled" for o in outcomes) and len(outcomes) == len(labels)
                status = ExecutionStatus.FILLED if filled else ExecutionStatus.SUBMITTED
                result = ExecutionResult(status=status, dry_run=False, orders=tuple(outcomes),
                                         message="reconciled after a restart: found on the exchange by label, nothing resent")
            else:
                result = ExecutionResult(status=ExecutionStatus.FAILED, dry_run=self.settings.effective_dry_run,
                                         message="interrupted before any order reached the exchange (none found by label)")
            out.append(self._finish(row.id, result))
            await self._changed(row.id)
        return out
