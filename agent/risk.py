"""The risk engine: a pure veto on an action, judged on the book as it would be afterwards.

No network, no clock reads: `now` comes in as an argument (default: the state's own time).
Deltas are premium-adjusted (N(d1) minus the option's price in coin), the convention of Deribit's
`options_delta`, so a leg's change adds to the account's figure in the same units.
MAX_OPTIONS_DELTA_ABS bounds the options book; MAX_NET_DELTA_ABS the coin held plus the book.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime

from .config import Settings
from .models import Action, ActionType, AgentState, RiskResult

EPS = 1e-9


def short_call_margin(strike: float, forward: float, mark: float) -> float:
    """Approximate standard initial margin of one short call, in coin (see REFERENCE.md)."""
    otm = max(strike - forward, 0.0)
    return max(0.15 - otm / forward, 0.1) + mark


def _is_multiple(size: float, step: float) -> bool:
    if step <= 0:
        return True
    lots = size / step
    return abs(lots - round(lots)) < 1e-6


def check_action_allowed(state: AgentState, action: Action, settings: Settings, now: datetime | None = None) -> RiskResult:
    """Allowed, or blocked with the reasons; checks passed are listed either way."""
    reasons: list[str] = []
    checks: list[str] = []

    if action.action not in ActionType:
        return RiskResult(allowed=False, reasons=(f"unknown action {action.action!r}",))
    if action.action == ActionType.DO_NOTHING:
        return RiskResult(allowed=True, checks=("nothing to check",))
    if action.underlying != state.underlying:
        return RiskResult(allowed=False, reasons=(f"underlying {action.underlying} is not {state.underlying}",))

    size = action.size
    if size is None or not math.isfinite(size) or size <= 0:
        return RiskResult(allowed=False, reasons=(f"size must be positive, got {size}",))

    # Symbols: only candidates and positions, and the right kind for the action.
    new_leg = None
    old_leg = None
    if action.action == ActionType.OPEN_COVERED_CALL:
        new_leg = state.candidate(action.symbol or "")
        if new_leg is None:
            reasons.append(f"{action.symbol} is not among the candidates")
    if action.action == ActionType.ROLL_COVERED_CALL:
        new_leg = state.roll_candidate(action.symbol or "")
        if new_leg is None:
            reasons.append(f"{action.symbol} is not among the candidates")
    if action.action == ActionType.CLOSE_COVERED_CALL:
        old_leg = state.position(action.symbol or "")
    if action.action == ActionType.ROLL_COVERED_CALL:
        old_leg = state.position(action.roll_from or "")
    if action.action in (ActionType.CLOSE_COVERED_CALL, ActionType.ROLL_COVERED_CALL):
        target = action.symbol if action.action == ActionType.CLOSE_COVERED_CALL else action.roll_from
        if old_leg is None or not old_leg.is_short_call:
            reasons.append(f"{target} is not an open short call")
    if action.action == ActionType.OPEN_COVERED_CALL and action.roll_from:
        reasons.append("an open does not roll from anything")
    if reasons:
        return RiskResult(allowed=False, reasons=tuple(reasons))
    checks.append("symbols come from the candidates and positions")

    # A close that only reduces risk is always allowed, whatever the limits or the state's age.
    if action.action == ActionType.CLOSE_COVERED_CALL:
        assert old_leg is not None
        if size <= abs(old_leg.size) + EPS and _is_multiple(size, old_leg.min_trade_amount):
            return RiskResult(allowed=True, checks=tuple(checks + [f"close of {size:g} only reduces a {abs(old_leg.size):g} short"]))
        return RiskResult(allowed=False, reasons=(f"close size {size:g} is not a multiple of "
                                                  f"{old_leg.min_trade_amount:g} within the {abs(old_leg.size):g} short",))

    assert new_leg is not None
    if not _is_multiple(size, new_leg.min_trade_amount):
        reasons.append(f"size {size:g} is not a multiple of min_trade_amount {new_leg.min_trade_amount:g}")
    if action.action == ActionType.OPEN_COVERED_CALL and size > settings.default_order_size + EPS:
        reasons.append(f"size {size:g} exceeds DEFAULT_ORDER_SIZE {settings.default_order_size:g}")
    if action.action == ActionType.ROLL_COVERED_CALL:
        assert old_leg is not None
        if size > abs(old_leg.size) + EPS:
            reasons.append(f"roll size {size:g} exceeds the {abs(old_leg.size):g} it rolls")
        if not (new_leg.expiration_timestamp > old_leg.expiration_timestamp and new_leg.strike > old_leg.strike):
            reasons.append("a roll must go up and out: later expiry and higher strike")
    checks.append("size is a positive multiple of the minimum, within DEFAULT_ORDER_SIZE")

    age = ((now or state.timestamp) - state.timestamp).total_seconds()
    # Under PAPER_SPEED the clocks run in market time: a state read 0.3 wall seconds ago at
    # speed 3600 is 18 market minutes old. The limit is on how long ago the bot read it, in the
    # seconds a person or a process lives in.
    in_process_sim = settings.exchange == "paper" and not settings.paper_exchange_url and settings.paper_speed
    speed = float(settings.paper_speed) if in_process_sim else 1.0  # type: ignore[arg-type]
    wall = f" ({age / speed:.1f} s of wall time at speed {speed:g})" if speed != 1.0 else ""
    if age / speed > settings.max_state_age_sec:
        reasons.append(f"state is {age:.0f} s old{wall} (max {settings.max_state_age_sec:g} s)")
    else:
        checks.append(f"state is {age:.0f} s old{wall}")

    # The book after the action.
    shorts: dict[str, tuple[float, int]] = {p.instrument_name: (abs(p.size), p.expiration_timestamp) for p in state.short_calls}
    # A resting sell may fill at any moment: count it as short already.
    for o in state.open_orders:
        if o.direction == "sell" and o.instrument_name.endswith("-C") and o.expiration_timestamp is not None:
            held, exp = shorts.get(o.instrument_name, (0.0, o.expiration_timestamp))
            shorts[o.instrument_name] = (held + o.remaining, exp)
    im = state.account.initial_margin
    delta = state.account.options_delta
    if old_leg is not None:
        left = shorts[old_leg.instrument_name][0] - size
        shorts[old_leg.instrument_name] = (max(left, 0.0), old_leg.expiration_timestamp)
        im -= size * short_call_margin(old_leg.strike, old_leg.forward, old_leg.mark)
        delta += size * old_leg.delta_pa
    prev = shorts.get(new_leg.instrument_name, (0.0, new_leg.expiration_timestamp))[0]
    shorts[new_leg.instrument_name] = (prev + size, new_leg.expiration_timestamp)
    im = max(im, 0.0) + size * short_call_margin(new_leg.strike, new_leg.forward, new_leg.mark)
    delta -= size * new_leg.delta_pa

    coin = state.account.equity
    total_short = sum(s for s, _ in shorts.values())
    if total_short > coin + EPS:
        reasons.append(f"uncovered: {total_short:g} short calls against {coin:.4f} {state.underlying} held")
    else:
        checks.append(f"covered: {total_short:g} short against {coin:.4f} held")

    margin_pct = im / coin * 100.0 if coin > 0 else math.inf
    if margin_pct > settings.max_margin_used_pct + EPS:
        reasons.append(f"margin used would be {margin_pct:.1f}% (max {settings.max_margin_used_pct:g}%)")
    else:
        checks.append(f"margin used after {margin_pct:.1f}%")

    if abs(delta) > settings.max_options_delta_abs + EPS:
        reasons.append(f"options delta (premium-adjusted) would be {delta:+.3f} (max ±{settings.max_options_delta_abs:g})")
    else:
        checks.append(f"options delta (premium-adjusted) after {delta:+.3f}")
    # Net: the coin held counts. A covered call lowers it; only a move away from zero past the limit is refused.
    net_before, net_after = state.net_delta, coin + delta
    if settings.max_net_delta_abs is not None:
        if abs(net_after) > settings.max_net_delta_abs + EPS and abs(net_after) > abs(net_before) + EPS:
            reasons.append(f"net delta (coin held {coin:.4f} + options) would be {net_after:+.3f}, up from "
                           f"{net_before:+.3f} (max ±{settings.max_net_delta_abs:g})")
        else:
            checks.append(f"net delta (coin held + options) after {net_after:+.3f}")

    per_expiry: dict[int, float] = defaultdict(float)
    for s, exp in shorts.values():
        per_expiry[exp] += s
    worst = max(per_expiry.values(), default=0.0)
    if worst > settings.max_expiry_exposure + EPS:
        reasons.append(f"{worst:g} short calls in one expiry (max {settings.max_expiry_exposure:g})")
    else:
        checks.append(f"largest expiry exposure {worst:g}")

    return RiskResult(allowed=not reasons, reasons=tuple(reasons), checks=tuple(checks))


def apply_risk(state: AgentState, action: Action, settings: Settings, now: datetime | None = None) -> tuple[RiskResult, Action]:
    """The risk result and the final action: the proposal, or DO_NOTHING saying why it was blocked."""
    result = check_action_allowed(state, action, settings, now)
    if result.allowed:
        return result, action
    blocked = Action(
        action=ActionType.DO_NOTHING,
        underlying=action.underlying,
        reasoning=f"{action.reasoning}\nRisk engine blocked: {'; '.join(result.reasons)}",
        decision_source=action.decision_source,
    )
    return result, blocked
