"""An order's life on the exchange: price, send, follow, reprice, cancel, settle unknown outcomes.

One leg is one limit order under one label. `send_leg` places it (after asking the exchange
whether that label exists already: never twice); `advance_leg` moves it one step per sweep:

- `open`: read back its state (fills), cancel it if asked or after ORDER_TIMEOUT_SEC, and every
  ORDER_REPRICE_SEC re-check the drift against the approved price (adverse beyond
  MAX_PRICE_DRIFT_PCT cancels) and step the price toward the touch with `private/edit` (same
  order id, same label), never beyond MAX_SLIPPAGE_PCT from the mark;
- `sending` / `unknown`: the send's answer was lost (timeout, dropped connection, 5xx). Nothing
  is resent: the label is looked up, with back-off, until the exchange shows the order (it is
  then followed like any other) or ORDER_UNKNOWN_GIVEUP_SEC has passed without it (`not_found`).

Every function returns the new `Leg` (immutable) and the `OrderEvent`s it caused; the caller
stores both and tells the chat. Nothing here knows about chat or storage. Time is the injected
clock's (market time): tests run a three-minute order life in milliseconds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from .clock import Clock
from .config import Settings
from .deribit.errors import DeribitError, TransportError
from .models import Action, ActionType, Value
from .pricing import round_to_tick, tick_for_price

if TYPE_CHECKING:  # annotations only: the store loads this module, and a vote from the CLI needs no exchange client
    from .deribit.client import DeribitClient
    from .deribit.types import Instrument, Order, Ticker

log = logging.getLogger(__name__)

# new: planned, never sent. sending: the request is (or was, before a crash) on its way.
# unknown: its answer was lost. open: resting on the book. The rest are final.
FINAL_STATES = frozenset({"filled", "cancelled", "rejected", "not_found", "not_sent"})
LOOKUP_BACKOFF_MAX_S = 30.0


class Leg(Value):
    """One order of a proposal: what it is meant to be and what the exchange last said about it."""

    label: str
    role: str  # single | close | open
    instrument: str
    side: str  # buy | sell
    amount: float
    reduce_only: bool = False
    ref_price: float | None = None  # the price the approval saw (bid of a sell, cost of a buy)
    drift_base: float | None = None  # the premium the drift % is of
    state: str = "new"
    order_id: str | None = None
    price: float | None = None  # current limit, as the exchange last showed it
    filled: float = 0.0
    average_price: float | None = None
    fee: float | None = None
    started_ms: int = 0  # the first send
    repriced_ms: int = 0  # the last time the price was set or re-checked
    reprices: int = 0
    lookups: int = 0
    next_lookup_ms: int = 0
    cancel_requested_by: str | None = None
    found: bool = False  # adopted from a lookup by label (after a lost answer or a restart), not from a send's answer
    reason: str | None = None  # why it ended, in words
    error: str | None = None  # the last error met on the way

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def sent(self) -> bool:
        return self.state not in ("new", "not_sent")

    def describe(self) -> str:
        return f"{self.side} {self.amount:g} {self.instrument}"


class OrderEvent(Value):
    """One thing that happened to an order: sent, unknown, found, fill, partial_fill, repriced,
    cancelled, rejected, not_found."""

    kind: str
    label: str
    order_id: str | None = None
    price: float | None = None
    amount: float | None = None  # contracts filled by this event (fills)
    filled: float = 0.0  # total filled so far
    average_price: float | None = None
    fee: float | None = None
    text: str = ""


Step = tuple[Leg, list[OrderEvent]]


def plan_legs(action: Action, label: str) -> list[Leg]:
    """The legs of an action, in the order they must go: a roll buys back first, then sells."""
    size = action.size or 0.0
    if action.action == ActionType.OPEN_COVERED_CALL:
        return [Leg(label=label, role="single", instrument=action.symbol or "", side="sell", amount=size,
                    ref_price=action.ref_sell_price, drift_base=action.ref_sell_price)]
    if action.action == ActionType.CLOSE_COVERED_CALL:
        return [Leg(label=label, role="single", instrument=action.symbol or "", side="buy", amount=size,
                    reduce_only=True, ref_price=action.ref_buy_price, drift_base=action.ref_buy_price)]
    if action.action == ActionType.ROLL_COVERED_CALL:
        return [Leg(label=f"{label}-close", role="close", instrument=action.roll_from or "", side="buy", amount=size,
                    reduce_only=True, ref_price=action.ref_buy_price,
                    drift_base=action.ref_sell_price or action.ref_buy_price),
                Leg(label=f"{label}-open", role="open", instrument=action.symbol or "", side="sell", amount=size,
                    ref_price=action.ref_sell_price, drift_base=action.ref_sell_price)]
    return []


# --- pricing ------------------------------------------------------------------------------------


def _steps(inst: Instrument) -> list[dict[str, float]]:
    return [{"above_price": s.above_price, "tick_size": s.tick_size} for s in inst.tick_size_steps]


def touch_limit(t: Ticker, side: str, slippage_pct: float) -> float:
    """How far the price may go: the bid of a sell (never below mark minus MAX_SLIPPAGE_PCT), the
    ask of a buy (never above mark plus it)."""
    mark = t.mark_price or 0.0
    slip = slippage_pct / 100.0
    if side == "sell":
        return max(t.best_bid_price or 0.0, mark * (1 - slip))
    cap = mark * (1 + slip)
    return min(t.best_ask_price, cap) if t.best_ask_price else cap


def _on_grid(price: float, inst: Instrument, side: str) -> float:
    p = round_to_tick(price, inst.tick_size, _steps(inst), side=side)  # type: ignore[arg-type]
    return p if p > 0 else inst.tick_size


def start_price(t: Ticker, inst: Instrument, side: str, slippage_pct: float) -> float:
    """Where an order starts: at the mid (a sell rounded up onto the grid, a buy down), never
    beyond the touch limit."""
    bid, ask = t.best_bid_price or 0.0, t.best_ask_price or 0.0
    mid = (bid + ask) / 2 if bid > 0 and ask > 0 else (t.mark_price or ask or bid)
    limit = touch_limit(t, side, slippage_pct)
    raw = max(mid, limit) if side == "sell" else min(mid, limit)
    return _on_grid(raw, inst, side)


def next_price(leg: Leg, t: Ticker, inst: Instrument, settings: Settings) -> float:
    """The next step toward the touch: the gap to the limit shared over the reprices left before
    half of ORDER_TIMEOUT_SEC, at least one tick; then it stays at the (moving) limit."""
    limit = _on_grid(touch_limit(t, leg.side, settings.max_slippage_pct), inst, leg.side)
    current = leg.price or limit
    total = max(1, int(settings.order_timeout_sec // max(settings.order_reprice_sec, 1e-9)) // 2)
    left = max(1, total - leg.reprices)
    sign = 1 if leg.side == "sell" else -1
    gap = (current - limit) * sign  # > 0: still away from the limit
    if gap <= 0:
        return limit  # at or past the limit (the mark moved): sit on it
    new = _on_grid(current - sign * gap / left, inst, leg.side)
    if new == current:
        new = _on_grid(current - sign * tick_for_price(current, inst.tick_size, _steps(inst)), inst, leg.side)
    return max(new, limit) if leg.side == "sell" else min(new, limit)


def drift_pct(leg: Leg, t: Ticker) -> float | None:
    """The adverse move against the approved price, in % of the premium (positive = worse)."""
    if leg.ref_price is None or not leg.drift_base:
        return None
    if leg.side == "sell":
        move = leg.ref_price - (t.best_bid_price or 0.0)
    else:
        move = (t.best_ask_price or t.mark_price or 0.0) - leg.ref_price
    return move / leg.drift_base * 100.0


# --- reading the exchange's answer ------------------------------------------------------------


def adopt(leg: Leg, order: Order, *, kind: str | None = None) -> Step:
    """Take the exchange's view of an order into the leg; the fill events since the last view."""
    state = order.order_state if order.order_state in ("open", "filled", "cancelled", "rejected") else "open"
    price = order.price if isinstance(order.price, float) else leg.price
    new = leg.model_copy(update={"state": state, "order_id": order.order_id, "price": price,
                                 "filled": order.filled_amount, "average_price": order.average_price or None,
                                 "error": None, "found": leg.found or kind == "found"})
    events = []
    if kind is not None:
        events.append(_event(kind, new, text=_kind_text(kind, new)))
    delta = round(order.filled_amount - leg.filled, 8)
    if delta > 0:
        full = state == "filled"
        events.append(_event("fill" if full else "partial_fill", new, amount=delta,
                             text=f"{'filled' if full else 'partly filled'} {delta:g} of {new.describe()} at "
                                  f"{new.average_price or 0:g} ({new.filled:g}/{new.amount:g} done)"))
    return new, events


def _kind_text(kind: str, leg: Leg) -> str:
    where = f"order {leg.order_id} {leg.state} at {leg.price:g}" if leg.price else f"order {leg.order_id} {leg.state}"
    if kind == "sent":
        return f"sent {leg.describe()} [{leg.label}]: {where}"
    if kind == "found":
        return f"found by label after a lost answer: {leg.describe()} [{leg.label}], {where}, nothing resent"
    return f"{kind}: {leg.describe()} [{leg.label}]"


def _event(kind: str, leg: Leg, *, amount: float | None = None, text: str = "") -> OrderEvent:
    return OrderEvent(kind=kind, label=leg.label, order_id=leg.order_id, price=leg.price, amount=amount,
                      filled=leg.filled, average_price=leg.average_price, fee=leg.fee, text=text)


async def _with_fee(client: DeribitClient, leg: Leg) -> Leg:
    """Once an order is final with fills: its fee, summed from the account's own trades."""
    if not leg.final or leg.filled <= 0 or leg.fee is not None or not leg.order_id:
        return leg
    try:
        trades = await client.get_user_trades_by_instrument(leg.instrument, count=100, sorting="desc")
    except DeribitError as exc:
        log.warning("fee of %s not read (%s); it stays unknown", leg.label, exc)
        return leg
    fee = sum(tr.fee or 0.0 for tr in trades.trades if tr.order_id == leg.order_id)
    return leg.model_copy(update={"fee": round(fee, 10)})


async def _instrument(client: DeribitClient, currency: str, name: str) -> Instrument:
    for inst in await client.get_instruments(currency, "option"):
        if inst.instrument_name == name:
            return inst
    raise DeribitError(10020, "invalid_instrument", name, "orders")


# --- the steps -------------------------------------------------------------------------------------


async def send_leg(client: DeribitClient, leg: Leg, *, currency: str, settings: Settings, clock: Clock,
                   before_send: Callable[[Leg], None] | None = None) -> Step:
    """Place a `new` leg at its start price. If its label is already on the exchange (a crash after
    sending), adopt that order instead. `before_send(leg)` runs right before the request (the caller
    records the intent; if it raises, nothing is sent). A lost answer leaves the leg `unknown`."""
    existing = await client.get_order_state_by_label(currency, leg.label)
    now = clock.now_ms()
    if existing:
        found = leg.model_copy(update={"started_ms": leg.started_ms or now, "repriced_ms": now})
        new, events = adopt(found, existing[0], kind="found")
        return await _with_fee(client, new), events
    try:
        inst = await _instrument(client, currency, leg.instrument)
        t = await client.ticker(leg.instrument)
    except DeribitError as exc:
        if isinstance(exc, TransportError):
            raise  # nothing was sent: the caller tries again on the next sweep
        ended = leg.model_copy(update={"state": "rejected", "reason": f"could not price the order: {exc}",
                                       "error": str(exc)})
        return ended, [_event("rejected", ended, text=f"{leg.describe()} not sent: {exc}")]
    price = start_price(t, inst, leg.side, settings.max_slippage_pct)
    leg = leg.model_copy(update={"state": "sending", "price": price, "started_ms": now, "repriced_ms": now})
    if before_send is not None:
        before_send(leg)
    send = client.sell if leg.side == "sell" else client.buy
    try:
        result = await send(leg.instrument, leg.amount, price, label=leg.label, reduce_only=leg.reduce_only)
    except TransportError as exc:
        lost = leg.model_copy(update={"state": "unknown", "error": str(exc), "next_lookup_ms": now})
        events = [_event("unknown", lost, text=f"the answer to {leg.describe()} [{leg.label}] was lost ({exc.message}): "
                                              f"looking it up by label, nothing is resent")]
        lost, more = await _lookup(client, lost, currency=currency, settings=settings, clock=clock)
        return lost, events + more
    except DeribitError as exc:
        ended = leg.model_copy(update={"state": "rejected", "reason": f"rejected by the exchange: {exc}",
                                       "error": str(exc)})
        return ended, [_event("rejected", ended, text=f"{leg.describe()} rejected: {exc}")]
    new, events = adopt(leg, result.order, kind="sent")
    return await _with_fee(client, new), events


async def _lookup(client: DeribitClient, leg: Leg, *, currency: str, settings: Settings, clock: Clock) -> Step:
    """One look for a leg whose send answer was lost; back-off when it is not there yet."""
    now = clock.now_ms()
    try:
        found = await client.get_order_state_by_label(currency, leg.label)
    except DeribitError as exc:
        return _backoff(leg, now, error=str(exc)), []
    if found:
        if leg.cancel_requested_by and found[0].order_state == "open":
            try:
                await client.cancel(found[0].order_id)
                found = [await client.get_order_state(found[0].order_id)]
            except DeribitError as exc:
                log.warning("cancel of %s after finding it failed: %s", leg.label, exc)
        new, events = adopt(leg.model_copy(update={"repriced_ms": now}), found[0], kind="found")
        if new.state == "cancelled":
            new = new.model_copy(update={"reason": leg.reason or f"cancelled by {leg.cancel_requested_by}"})
        return await _with_fee(client, new), events
    waited = (now - leg.started_ms) / 1000.0
    if waited >= settings.order_unknown_giveup_sec:
        ended = leg.model_copy(update={
            "state": "not_found", "reason": f"the send's answer was lost and no order labelled {leg.label} appeared on "
                                            f"the exchange in {waited:.0f} s of lookups: it never got there; "
                                            f"nothing was resent"})
        return ended, [_event("not_found", ended, text=ended.reason or "")]
    return _backoff(leg, now), []


def _backoff(leg: Leg, now: int, error: str | None = None) -> Leg:
    delay = min(LOOKUP_BACKOFF_MAX_S, 0.5 * (2 ** leg.lookups))
    return leg.model_copy(update={"lookups": leg.lookups + 1, "next_lookup_ms": now + int(delay * 1000),
                                  "error": error or leg.error})


async def advance_leg(client: DeribitClient, leg: Leg, *, currency: str, settings: Settings, clock: Clock) -> Step:
    """One step of a leg that is not final and was sent: look up, read back, cancel or reprice."""
    now = clock.now_ms()
    if leg.final or leg.state == "new":
        return leg, []
    if leg.state in ("sending", "unknown"):
        if leg.cancel_requested_by:
            try:
                await client.cancel_by_label(leg.label, currency)
            except DeribitError as exc:
                log.warning("cancel by label %s failed: %s", leg.label, exc)
        if now < leg.next_lookup_ms:
            return leg, []
        return await _lookup(client, leg, currency=currency, settings=settings, clock=clock)
    try:
        order = await client.get_order_state(leg.order_id or "")
    except DeribitError as exc:
        return leg.model_copy(update={"error": str(exc)}), []  # asked again on the next sweep
    leg, events = adopt(leg, order)
    if leg.state != "open":
        return await _with_fee(client, leg), events
    if leg.cancel_requested_by:
        return await _cancel(client, leg, f"cancelled by {leg.cancel_requested_by}", events)
    if (now - leg.started_ms) / 1000.0 >= settings.order_timeout_sec:
        return await _cancel(client, leg, f"not filled within ORDER_TIMEOUT_SEC ({settings.order_timeout_sec:g} s), "
                                          f"cancelled", events)
    if (now - leg.repriced_ms) / 1000.0 < settings.order_reprice_sec:
        return leg, events
    try:
        t = await client.ticker(leg.instrument)
        inst = await _instrument(client, currency, leg.instrument)
    except DeribitError as exc:
        return leg.model_copy(update={"error": str(exc)}), events
    drift = drift_pct(leg, t)
    if drift is not None and drift > settings.max_price_drift_pct:
        return await _cancel(client, leg, f"price moved {drift:.1f}% of the premium against us while working, more "
                                          f"than MAX_PRICE_DRIFT_PCT {settings.max_price_drift_pct:g}%; cancelled", events)
    price = next_price(leg, t, inst, settings)
    leg = leg.model_copy(update={"repriced_ms": now})
    if price == leg.price:
        return leg, events
    try:
        result = await client.edit(leg.order_id or "", leg.amount, price)
    except DeribitError as exc:
        # It may have filled or been cancelled meanwhile, or the edit's answer was lost: the next
        # read-back tells (the price is always the exchange's).
        return leg.model_copy(update={"error": str(exc)}), events
    old = leg.price
    leg = leg.model_copy(update={"reprices": leg.reprices + 1})
    leg, more = adopt(leg, result.order)
    events.append(_event("repriced", leg, text=f"repriced {leg.describe()} [{leg.label}] {old:g} -> {leg.price:g}"))
    return await _with_fee(client, leg), events + more


async def _cancel(client: DeribitClient, leg: Leg, reason: str, events: list[OrderEvent]) -> Step:
    try:
        order = await client.cancel(leg.order_id or "")
    except DeribitError as exc:
        try:  # it may have filled in between: read it back
            order = await client.get_order_state(leg.order_id or "")
        except DeribitError:
            return leg.model_copy(update={"error": f"cancel failed: {exc}"}), events  # tried again next sweep
    leg, more = adopt(leg, order)
    events = events + more
    if leg.state == "cancelled":
        leg = leg.model_copy(update={"reason": reason})
        done = f"{leg.filled:g}/{leg.amount:g} filled" + (f" at {leg.average_price:g}" if leg.filled else "")
        events.append(_event("cancelled", leg, text=f"{leg.describe()} [{leg.label}] {reason} ({done})"))
    return await _with_fee(client, leg), events


async def look_up_leg(client: DeribitClient, leg: Leg, *, currency: str, clock: Clock) -> Step:
    """After a restart: what the exchange holds under this leg's label. A leg never sent and not
    there ends `not_sent` (nothing is sent after a restart); a leg that was on its way is `unknown`
    and followed by the lookup rules."""
    found = await client.get_order_state_by_label(currency, leg.label)
    now = clock.now_ms()
    if found:
        base = leg.model_copy(update={"started_ms": leg.started_ms or now, "repriced_ms": now})
        new, events = adopt(base, found[0], kind="found")
        return await _with_fee(client, new), events
    if leg.state == "new":
        ended = leg.model_copy(update={"state": "not_sent", "reason": "never sent (interrupted before it left)"})
        return ended, []
    if leg.state in ("sending", "open"):
        return leg.model_copy(update={"state": "unknown", "next_lookup_ms": now}), []
    return leg, []
