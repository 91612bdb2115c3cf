"""The rule-based brain: a pure function from state and settings to one action.

No network, no clock reads (time comes in the state), no database. It never invents a symbol
(only candidates and positions) or a size (only DEFAULT_ORDER_SIZE, rounded to the instrument).

Targets steer, yield is a floor: among the calls that meet the minimum premium, OTM distance and
annualized yield after fees, it picks the one nearest the target delta and DTE (`distance`), and
says why it beat the runner-up. A roll searches its own window (ROLL_MIN_DTE..ROLL_MAX_DTE, delta
<= ROLL_MAX_DELTA, nearest ROLL_TARGET_DELTA) over the whole chain.
"""

from __future__ import annotations

import math
from datetime import timedelta

from .config import Settings
from .models import Action, ActionType, AgentState, Candidate, OptionPosition

FEE_PER_CONTRACT = 0.0003
FEE_CAP_FRACTION = 0.125
DELTA_POINTS = 100.0  # distance points per 1.00 of delta (0.01 delta = 1 point)
DTE_POINTS = 2.0  # distance points per day


def fee(price: float) -> float:
    """Deribit's option fee per contract: 0.0003 coin, capped at 12.5 % of the premium."""
    return min(FEE_PER_CONTRACT, FEE_CAP_FRACTION * max(price, 0.0))


def net_annual_yield_pct(premium: float, dte: float) -> float:
    """The premium after the fee, per coin covered, annualized over the days left, percent."""
    return (premium - fee(premium)) * (365.0 / dte) * 100.0 if dte > 0 else 0.0


def distance(delta: float, dte: float, target_delta: float, target_dte: float) -> float:
    """How far a call is from the targets, in points: 1 per 0.01 of delta, 2 per day."""
    return DELTA_POINTS * abs(delta - target_delta) + DTE_POINTS * abs(dte - target_dte)


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
    notice = None
    for p in shorts:
        action = _manage(state, p, settings)
        if action.action != ActionType.DO_NOTHING:
            return action
        holds.append(action.reasoning)
        notice = notice or (action.notice_key, action.notice)
    out = _nothing(state, " | ".join(holds))
    if notice and notice[0]:
        out = out.model_copy(update={"notice_key": notice[0], "notice": notice[1]})
    return out


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


def _describe(c: Candidate, d: float, cur: str) -> str:
    return (f"{c.instrument_name} (delta {c.delta:.2f}, {c.dte:.1f} DTE, {c.bid:.4f} {cur}, "
            f"{net_annual_yield_pct(c.bid, c.dte):.1f}%/y after fees, {d:.1f} pts from target)")


def _decide_open(state: AgentState, settings: Settings) -> Action:
    coin = state.account.equity
    cur = state.underlying
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
        elif net_annual_yield_pct(c.bid, c.dte) < settings.min_annual_yield_pct:
            rejected["yield"] += 1
        else:
            eligible.append(c)
    if not eligible:
        return _nothing(
            state,
            f"No short call open; none of {len(state.candidates)} candidates qualifies: "
            f"{rejected['otm']} under {settings.min_otm_pct:g}% OTM, {rejected['premium']} under "
            f"{settings.min_premium:g} {cur} premium, {rejected['yield']} under {settings.min_annual_yield_pct:g}% "
            f"annualized after fees.",
        )
    td, tt = settings.target_delta, settings.target_dte

    def key(c: Candidate) -> tuple[float, float, str]:
        return (round(distance(c.delta, c.dte, td, tt), 9), -net_annual_yield_pct(c.bid, c.dte), c.instrument_name)

    ranked = sorted(eligible, key=key)
    best = ranked[0]
    d_best = distance(best.delta, best.dte, td, tt)
    size = order_size(settings, best.min_trade_amount)
    if size <= 0:
        return _nothing(state, f"DEFAULT_ORDER_SIZE {settings.default_order_size:g} is below the minimum trade amount {best.min_trade_amount:g}.")
    if coin < size:
        return _nothing(state, f"No short call open, but only {coin:.4f} {cur} to cover a {size:g} call: not opening.")
    if len(ranked) > 1:
        ru = ranked[1]
        d_ru = distance(ru.delta, ru.dte, td, tt)
        why = (f"It beat the runner-up {_describe(ru, d_ru, cur)} by {d_ru - d_best:.1f} pts"
               + (" (same distance: higher yield)" if abs(d_ru - d_best) < 1e-9 else "") + ".")
    else:
        why = "It is the only qualifying candidate."
    return Action(
        action=ActionType.OPEN_COVERED_CALL,
        underlying=cur,
        symbol=best.instrument_name,
        size=size,
        reasoning=(
            f"Open: sell {size:g} {best.instrument_name} (strike {best.strike:,.0f}, {best.dte:.1f} DTE, delta {best.delta:.2f}, "
            f"{best.otm_pct:.1f}% above the forward {best.forward:,.0f}) for {best.bid:.4f} {cur} "
            f"(${best.bid_usd:,.0f}) per contract, {net_annual_yield_pct(best.bid, best.dte):.1f}% annualized after fees; "
            f"nearest the targets (delta {td:g}, {tt:g} DTE: {d_best:.1f} pts) of {len(eligible)} qualifying candidates. "
            f"{why} Covered by {coin:.4f} {cur}."
        ),
        ref_sell_price=best.bid,
    )


def roll_targets(state: AgentState, p: OptionPosition, settings: Settings) -> list[tuple[Candidate, float, float]]:
    """Calls a short may roll into, nearest the roll targets first: (candidate, net credit, distance).

    Later expiry, higher strike, inside ROLL_MIN_DTE..ROLL_MAX_DTE and delta <= ROLL_MAX_DELTA;
    the net is the new bid minus the buy-back cost, both fees paid (it may be a debit)."""
    cost = close_cost(p)
    lo, hi = settings.roll_min_dte, settings.roll_max_dte
    target_dte = min(max(settings.target_dte, lo), hi)  # type: ignore[type-var]
    seen: dict[str, Candidate] = {}
    for c in (*state.roll_candidates, *state.candidates):
        seen.setdefault(c.instrument_name, c)
    out = []
    for c in seen.values():
        if not (lo <= c.dte <= hi) or c.delta > settings.roll_max_delta:  # type: ignore[operator]
            continue
        if c.expiration_timestamp <= p.expiration_timestamp or c.strike <= p.strike:
            continue
        net = c.bid - cost - fee(c.bid) - fee(cost)
        out.append((c, net, distance(c.delta, c.dte, settings.roll_target_delta, target_dte)))  # type: ignore[arg-type]
    out.sort(key=lambda x: (round(x[2], 9), -x[1], x[0].instrument_name))
    return out


def _manage(state: AgentState, p: OptionPosition, settings: Settings) -> Action:
    sym = p.instrument_name
    cur = state.underlying
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
            underlying=cur,
            symbol=sym,
            size=size,
            reasoning=(f"Close: buy back {size:g} {sym} at about {cost:.4f}; {facts} "
                       f"(>= {settings.close_capture_pct:g}% with >= {settings.close_min_hours_left:g} h left): take the profit."),
            ref_buy_price=cost,
        )
    if p.delta >= settings.roll_trigger_delta or spot_pct >= settings.roll_trigger_spot_pct:
        rolls = state.history.roll_count.get(sym, 0)
        if rolls >= settings.max_rolls:
            return _deep_itm(state, p, settings, size, facts,
                             f"Hold (roll wanted but {rolls} rolls already in this chain, max {settings.max_rolls}): {facts}.", None)
        targets = roll_targets(state, p, settings)
        credit = [t for t in targets if t[1] > 0]
        window = (f"{settings.roll_min_dte:g}-{settings.roll_max_dte:g} DTE, delta <= {settings.roll_max_delta:g}, "
                  f"a later expiry and a higher strike")
        if not credit:
            best_debit = max(targets, key=lambda t: t[1]) if targets else None
            return _deep_itm(state, p, settings, size, facts,
                             f"Hold: roll wanted ({facts}) but no candidate with {window} gives a net credit after fees"
                             + (f" (best: {best_debit[0].instrument_name} at {best_debit[1]:+.4f})." if best_debit else "."),
                             best_debit)
        best, best_net, d_best = credit[0]
        why = ""
        if len(credit) > 1:
            ru, ru_net, d_ru = credit[1]
            why = (f" Nearest the roll targets (delta {settings.roll_target_delta:g}: {d_best:.1f} pts); it beat "
                   f"{ru.instrument_name} (delta {ru.delta:.2f}, {ru.dte:.1f} DTE, net {ru_net:.4f}, {d_ru:.1f} pts).")
        return Action(
            action=ActionType.ROLL_COVERED_CALL,
            underlying=cur,
            symbol=best.instrument_name,
            roll_from=sym,
            size=size,
            reasoning=(f"Roll up and out: {facts}. Buy back at about {cost:.4f}, sell {best.instrument_name} "
                       f"(strike {best.strike:,.0f}, {best.dte:.1f} DTE, delta {best.delta:.2f}) at {best.bid:.4f}: "
                       f"net credit {best_net:.4f} {cur} per contract after fees (roll {rolls + 1} of max {settings.max_rolls}; "
                       f"window {window}).{why}"),
            ref_sell_price=best.bid,
            ref_buy_price=cost,
        )
    return _nothing(state, f"Hold {facts}: no rule fires.")


def _deep_itm(state: AgentState, p: OptionPosition, settings: Settings, size: float, facts: str, hold: str,
              best_debit: tuple[Candidate, float, float] | None) -> Action:
    """Hold; when the call is deep in the money, a notice for chat (said once) with the choices."""
    out = _nothing(state, hold)
    if p.delta < settings.deep_itm_delta or state.spot <= p.strike:
        return out
    cur = state.underlying
    held = abs(p.size)
    intrinsic = max(state.spot - p.strike, 0.0) / state.spot  # coin per contract at today's spot
    cost = close_cost(p)
    debit = held * cost + held * fee(cost)
    roll = (f" The best roll, {best_debit[0].instrument_name}, is a debit of {-best_debit[1]:.4f} {cur} per contract."
            if best_debit else "")
    text = (f"{p.instrument_name} is deep in the money: spot {state.spot:,.0f} = {state.spot / p.strike * 100:.1f}% of the "
            f"{p.strike:,.0f} strike, delta {p.delta:.2f}, {p.dte:.1f} days left, and no roll gives a credit.{roll} "
            f"Choices: (1) hold to expiry and be called away in cash: at today's spot the settlement pays about "
            f"{held * intrinsic:.4f} {cur} (${held * intrinsic * state.spot:,.0f}) for the {held:g} short, out of the coin held; "
            f"(2) close now at a debit of about {debit:.4f} {cur} (${debit * state.spot:,.0f}) at {cost:.4f} plus fees. "
            f"The bot holds; a close is yours to ask for.")
    return out.model_copy(update={"notice_key": f"deep_itm:{p.instrument_name}", "notice": text})
