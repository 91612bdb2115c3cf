"""Turn an approved action into limit orders on the exchange, exactly once per label.

Before sending a leg, its label is looked up on the exchange: if that order exists (a restart
after a crash between sending and recording), it is returned instead of sent again.
"""

from __future__ import annotations

import logging

from .config import Settings
from .deribit.client import DeribitClient
from .deribit.errors import DeribitError, TransportError
from .deribit.types import Order, OrderResult
from .models import Action, ActionType, ExecutionResult, ExecutionStatus, OrderOutcome, OrderRequest
from .pricing import round_to_tick

log = logging.getLogger(__name__)


async def price_legs(client: DeribitClient, action: Action, label: str, settings: Settings) -> list[OrderRequest]:
    """The limit orders for an action, priced from a fresh ticker and rounded onto the tick grid.

    A sell goes at the bid or above, never below mark minus MAX_SLIPPAGE_PCT; a buy at the ask or
    below, never above mark plus it. A roll is two legs, closing first.
    """
    legs: list[tuple[str, str, bool, str]] = []  # (instrument, side, reduce_only, label)
    if action.action == ActionType.OPEN_COVERED_CALL:
        legs.append((action.symbol, "sell", False, label))
    elif action.action == ActionType.CLOSE_COVERED_CALL:
        legs.append((action.symbol, "buy", True, label))
    elif action.action == ActionType.ROLL_COVERED_CALL:
        legs.append((action.roll_from, "buy", True, f"{label}-close"))
        legs.append((action.symbol, "sell", False, f"{label}-open"))
    if not legs:
        return []
    instruments = {i.instrument_name: i for i in await client.get_instruments(action.underlying, "option")}
    slip = settings.max_slippage_pct / 100.0
    out = []
    for name, side, reduce_only, leg_label in legs:
        inst = instruments.get(name)
        if inst is None:
            raise DeribitError(10020, "invalid_instrument", name, "execution")
        t = await client.ticker(name)
        mark = t.mark_price or 0.0
        if side == "sell":
            floor = mark * (1 - slip)
            raw = max(t.best_bid_price or 0.0, floor)
        else:
            cap = mark * (1 + slip)
            raw = min(t.best_ask_price, cap) if t.best_ask_price else cap
        price = round_to_tick(raw, inst.tick_size, inst.tick_size_steps, side=side)  # type: ignore[arg-type]
        if price <= 0:
            price = inst.tick_size
        out.append(OrderRequest(instrument_name=name, side=side, amount=action.size or 0.0, price=price,
                                label=leg_label, reduce_only=reduce_only))
    return out


async def execute_action(client: DeribitClient, action: Action, label: str, settings: Settings) -> ExecutionResult:
    """Send (or in dry-run, only describe) the orders of an action; never send a label twice."""
    dry = settings.effective_dry_run
    if action.action == ActionType.DO_NOTHING:
        return ExecutionResult(status=ExecutionStatus.NOTHING, dry_run=dry, message="nothing to do")
    try:
        legs = await price_legs(client, action, label, settings)
    except DeribitError as exc:
        return ExecutionResult(status=ExecutionStatus.FAILED, dry_run=dry, error_code=exc.code,
                               message=f"could not price the order: {exc}")
    if dry:
        return ExecutionResult(
            status=ExecutionStatus.SIMULATED, dry_run=True,
            orders=tuple(OrderOutcome(request=r) for r in legs),
            message="dry run: no order left the process; " + "; ".join(_describe(r) for r in legs),
        )

    outcomes: list[OrderOutcome] = []
    for i, req in enumerate(legs):
        outcome = await _send_once(client, action.underlying, req)
        # A roll's close leg must fill before the new call is sold: otherwise the book would hold
        # two short calls against one coin. A resting close leg is cancelled and the roll stops.
        if len(legs) == 2 and i == 0 and outcome.order_state != "filled":
            if outcome.order_state == "open" and outcome.order_id:
                outcome = await _cancel(client, outcome)
            outcomes.append(outcome)
            return _result(outcomes, dry, f"roll abandoned: the close leg did not fill ({_state_text(outcome)}); "
                                          f"{action.roll_from} is still short, nothing was sold")
        outcomes.append(outcome)
        if len(legs) == 2 and i == 1 and outcome.order_state not in ("filled", "open"):
            return _result(outcomes, dry, f"roll half done: {action.roll_from} was bought back but selling "
                                          f"{action.symbol} failed ({_state_text(outcome)}); the position is now flat: "
                                          f"no covered call is open", force=ExecutionStatus.FAILED)
    return _result(outcomes, dry, "; ".join(f"{_describe(o.request)}: {_state_text(o)}" for o in outcomes))


async def _send_once(client: DeribitClient, currency: str, req: OrderRequest) -> OrderOutcome:
    existing = await _find_by_label(client, currency, req.label)
    if existing is not None:
        log.info("order with label %s already on the exchange (%s): not sending again", req.label, existing.order_id)
        return outcome_from_order(req, existing, reused=True)
    send = client.sell if req.side == "sell" else client.buy
    try:
        result: OrderResult = await send(req.instrument_name, req.amount, req.price, label=req.label, reduce_only=req.reduce_only)
    except TransportError as exc:
        # The order may or may not have reached the exchange: ask it by label before reporting.
        try:
            existing = await _find_by_label(client, currency, req.label)
        except DeribitError:
            existing = None
        if existing is not None:
            return outcome_from_order(req, existing, reused=True)
        return OrderOutcome(request=req, error_code=exc.code, error_message=str(exc))
    except DeribitError as exc:
        return OrderOutcome(request=req, order_state="rejected", error_code=exc.code, error_message=str(exc))
    return outcome_from_order(req, result.order)


async def _find_by_label(client: DeribitClient, currency: str, label: str) -> Order | None:
    orders = await client.get_order_state_by_label(currency, label)
    return orders[0] if orders else None


async def _cancel(client: DeribitClient, outcome: OrderOutcome) -> OrderOutcome:
    try:
        order = await client.cancel(outcome.order_id or "")
    except DeribitError as exc:
        return outcome.model_copy(update={"error_message": f"cancel failed: {exc}"})
    return outcome_from_order(outcome.request, order, reused=outcome.reused)


def outcome_from_order(req: OrderRequest, order: Order, reused: bool = False) -> OrderOutcome:
    """What an order on the exchange says about a request (also used to reconcile after a crash)."""
    avg = order.average_price or None
    return OrderOutcome(request=req, order_id=order.order_id, order_state=order.order_state,
                        filled_amount=order.filled_amount, average_price=avg, reused=reused)


def _result(outcomes: list[OrderOutcome], dry: bool, message: str, force: ExecutionStatus | None = None) -> ExecutionResult:
    err = next((o.error_code for o in outcomes if o.error_code is not None), None)
    if force is not None:
        status = force
    elif any(o.order_id is None and o.order_state is None and o.error_code is None and o.error_message for o in outcomes):
        # A transport error (no code) and no order found by label: the outcome is not known. Never
        # SUBMITTED (that would read as "sent"): the caller must look the label up again.
        status = ExecutionStatus.UNKNOWN
    elif any(o.order_id is None and o.error_code is not None and o.order_state != "rejected" for o in outcomes):
        status = ExecutionStatus.FAILED
    elif any(o.order_state == "rejected" for o in outcomes):
        status = ExecutionStatus.REJECTED
    elif any(o.order_state == "cancelled" for o in outcomes):
        status = ExecutionStatus.FAILED if not any(o.filled_amount for o in outcomes) else ExecutionStatus.PARTIALLY_FILLED
    elif all(o.order_state == "filled" for o in outcomes):
        status = ExecutionStatus.FILLED
    elif any(0 < o.filled_amount < o.request.amount for o in outcomes):
        status = ExecutionStatus.PARTIALLY_FILLED
    else:
        status = ExecutionStatus.SUBMITTED
    return ExecutionResult(status=status, dry_run=dry, orders=tuple(outcomes), message=message, error_code=err)


def _describe(r: OrderRequest) -> str:
    return f"{r.side} {r.amount:g} {r.instrument_name} @ {r.price:g} [{r.label}]"


def _state_text(o: OrderOutcome) -> str:
    if o.error_code is not None or o.error_message:
        return f"error {o.error_code}: {o.error_message}"
    fill = f", avg {o.average_price:g}" if o.average_price else ""
    return f"{o.order_state} {o.filled_amount:g}/{o.request.amount:g}{fill}" + (" (found by label, not resent)" if o.reused else "")
