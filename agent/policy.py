"""The rule-based brain: a pure function from state and settings to one action.

No network, no clock reads (time comes in the state), no database. It never invents a symbol
(only candidates and positions) or a size (only DEFAULT_ORDER_SIZE, rounded to the instrument).
"""

from __future__ import annotations

import math
from datetime import timedelta

from .config import Settings
from .models import Action, ActionType, AgentState, Candidate, OptionPosition

FEE_PER_CONTRACT = 0.0003
FEE_CAP_FRACTION = 0.125


def fee(price: float) -> float:
    """Deribit's option fee per contract: 0.0003 coin, capped at 12.5 % of the premium."""
    return min(FEE_PER_CONTRACT, FEE_CAP_FRACTION * max(price, 0.0))


def order_size(settings: Settings, min_trade_amount: float) -> float:
    """DEFAULT_ORDER_SIZE rounded down to a multiple of the instrument's minimum (0 if below it)."""
    if min_trade_amount <= 0:
        return settings.default_order_size
    lots = math.floor(settings.default_order_size / min_trade_amount + 1e-9)
    return round(lots * min_trade_amount, 8)


def close_cost(p: OptionPosition) -> float:
    """What buying the call back costs per contract: the ask, or the mark when there is none."""
    return p.ask if p.ask is not None else p.mark


def decide_action(state: AgentState, settings: Settings) -> Action:
    """Propose one action: open, roll, close or nothing, with the numbers behind it."""
    working = [o for o in state.open_orders if o.instrument_name.endswith("-C")]
    if working:
        # An order still resting may fill at any moment: deciding around it could double the book.
        return _nothing(state, "Waiting: an order is still working on the exchange ("
                               + "; ".join(f"{o.direction} {o.remaining:g} {o.instrument_name} @ {o.price:g} [{o.label}]"
                                           if o.price is not None else f"{o.direction} {o.remaining:g} {o.instrument_name} [{o.label}]"
                                           for o in working)
                               + "). Nothing new until it fills or is cancelled.")
    shorts = state.short_calls
    if not shorts:
        return _decide_open(state, settings)
    holds = []
    for p in shorts:
        action = _manage(state, p, settings)
        if action.action != ActionType.DO_NOTHING:
            return action
        holds.append(action.reasoning)
    return _nothing(state, " | ".join(holds))


def _nothing(state: AgentState, why: str) -> Action:
    return Action(action=ActionType.DO_NOTHING, underlying=state.underlying, reasoning=why)


def _recent(state: AgentState, settings: Settings, symbols: list[str]) -> str | None:
    """The hysteresis rule: the most recent action on these symbols, if within the window."""
    window = timedelta(minutes=settings.hysteresis_min)
    times = [state.history.last_action_at[s] for s in symbols if s in state.history.last_action_at]
    if not times:
        return None
    last = max(times)
    if state.timestamp - last < window:
        mins = (state.timestamp - last).total_seconds() / 60
        return f"last action {mins:.0f} min ago (< {settings.hysteresis_min:.0f} min hysteresis)"
    return None


def _decide_open(state: AgentState, settings: Settings) -> Action:
    coin = state.account.equity
    if not state.candidates:
        return _nothing(state, f"No short call open; no candidate call passed the DTE {settings.min_dte:g}-{settings.max_dte:g} d, "
                               f"delta {settings.min_delta:g}-{settings.max_delta:g} and liquidity filters "
                               f"({state.chain_size} options in the chain).")
    recent = _recent(state, settings, list(state.history.last_action_at))
    if recent:
        return _nothing(state, f"No short call open, but {recent}: not opening yet.")

    rejected = {"otm": 0, "premium": 0, "yield": 0}
    eligible: list[Candidate] = []
    for c in state.candidates:
        if c.otm_pct < settings.min_otm_pct:
            rejected["otm"] += 1
        elif c.bid < settings.min_premium:
            rejected["premium"] += 1
        elif c.annualized_yield_pct < settings.min_annual_yield_pct:
            rejected["yield"] += 1
        else:
            eligible.append(c)
    if not eligible:
        return _nothing(
            state,
            f"No short call open; none of {len(state.candidates)} candidates qualifies: "
            f"{rejected['otm']} under {settings.min_otm_pct:g}% OTM, {rejected['premium']} under "
            f"{settings.min_premium:g} {state.underlying} premium, {rejected['yield']} under {settings.min_annual_yield_pct:g}% annualized.",
        )
    best = max(eligible, key=lambda c: c.score)
    size = order_size(settings, best.min_trade_amount)
    if size <= 0:
        return _nothing(state, f"DEFAULT_ORDER_SIZE {settings.default_order_size:g} is below the minimum trade amount {best.min_trade_amount:g}.")
    if coin < size:
        return _nothing(state, f"No short call open, but only {coin:.4f} {state.underlying} to cover a {size:g} call: not opening.")
    return Action(
        action=ActionType.OPEN_COVERED_CALL,
        underlying=state.underlying,
        symbol=best.instrument_name,
        size=size,
        reasoning=(
            f"Open: sell {size:g} {best.instrument_name} (strike {best.strike:,.0f}, {best.dte:.1f} DTE, delta {best.delta:.2f}, "
            f"{best.otm_pct:.1f}% above the forward {best.forward:,.0f}) for {best.bid:.4f} {state.underlying} "
            f"(${best.bid_usd:,.0f}) per contract, {best.annualized_yield_pct:.1f}% annualized; best score "
            f"{best.score:.1f} of {len(eligible)} qualifying candidates (target delta {settings.target_delta:g}, "
            f"target {settings.target_dte:g} DTE). Covered by {coin:.4f} {state.underlying}."
        ),
        ref_sell_price=best.bid,
    )


def _manage(state: AgentState, p: OptionPosition, settings: Settings) -> Action:
    sym = p.instrument_name
    # DEFAULT_ORDER_SIZE here too, capped at the short: a larger position opened by hand is managed
    # one order at a time, like the LLM brain does.
    size = min(order_size(settings, p.min_trade_amount), abs(p.size))
    if size <= 0:
        return _nothing(state, f"Hold {sym}: DEFAULT_ORDER_SIZE {settings.default_order_size:g} is below its minimum trade amount.")
    hours_left = p.dte * 24.0
    cost = close_cost(p)
    captured = (1.0 - cost / p.average_price) * 100.0 if p.average_price > 0 else 0.0
    spot_pct = state.spot / p.strike * 100.0
    facts = (f"{sym}: {hours_left:.0f} h left, delta {p.delta:.2f}, spot {state.spot:,.0f} = {spot_pct:.1f}% of strike, "
             f"{captured:.0f}% of the {p.average_price:.4f} premium captured")

    recent = _recent(state, settings, [sym])
    if recent:
        return _nothing(state, f"Hold {facts}; {recent}.")
    if hours_left < settings.expire_hours and p.delta <= settings.expire_max_delta:
        return _nothing(state, f"Let it expire: {facts}; under {settings.expire_hours:g} h with delta at most {settings.expire_max_delta:g}.")
    if captured >= settings.close_capture_pct and hours_left >= settings.close_min_hours_left:
        return Action(
            action=ActionType.CLOSE_COVERED_CALL,
            underlying=state.underlying,
            symbol=sym,
            size=size,
            reasoning=(f"Close: buy back {size:g} {sym} at about {cost:.4f}; {facts} "
                       f"(>= {settings.close_capture_pct:g}% with >= {settings.close_min_hours_left:g} h left): take the profit."),
            ref_buy_price=cost,
        )
    if p.delta >= settings.roll_trigger_delta or spot_pct >= settings.roll_trigger_spot_pct:
        rolls = state.history.roll_count.get(sym, 0)
        if rolls >= settings.max_rolls:
            return _nothing(state, f"Hold (roll wanted but {rolls} rolls already in this chain, max {settings.max_rolls}): {facts}.")
        best, best_net = None, None
        for c in state.candidates:
            if c.delta > settings.roll_max_delta or c.expiration_timestamp <= p.expiration_timestamp or c.strike <= p.strike:
                continue
            net = c.bid - cost - fee(c.bid) - fee(cost)
            if net > 0 and (best is None or c.score > best.score):
                best, best_net = c, net
        if best is None:
            return _nothing(state, f"Hold: roll wanted ({facts}) but no candidate with delta <= {settings.roll_max_delta:g}, "
                                   f"a later expiry and a higher strike gives a net credit after fees.")
        return Action(
            action=ActionType.ROLL_COVERED_CALL,
            underlying=state.underlying,
            symbol=best.instrument_name,
            roll_from=sym,
            size=size,
            reasoning=(f"Roll up and out: {facts}. Buy back at about {cost:.4f}, sell {best.instrument_name} "
                       f"(strike {best.strike:,.0f}, {best.dte:.1f} DTE, delta {best.delta:.2f}) at {best.bid:.4f}: "
                       f"net credit {best_net:.4f} {state.underlying} per contract after fees (roll {rolls + 1} of max {settings.max_rolls})."),
            ref_sell_price=best.bid,
            ref_buy_price=cost,
        )
    return _nothing(state, f"Hold {facts}: no rule fires.")
