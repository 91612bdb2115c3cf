"""Rejections teach: an action people rejected is not proposed again for REJECT_COOLDOWN_MIN,
unless the market moved beyond MAX_PRICE_DRIFT_PCT since (then it is a new question).

Pure: the rejections come in the state's history, the time in the state.
"""

from __future__ import annotations

from datetime import timedelta

from .config import Settings
from .models import Action, ActionType, AgentState, Rejection


def _price_now(state: AgentState, r: Rejection) -> float | None:
    if r.action == ActionType.CLOSE_COVERED_CALL.value:
        p = state.position(r.symbol or "")
        return None if p is None else (p.ask if p.ask is not None else p.mark)
    c = state.candidate(r.symbol or "")
    return None if c is None else c.bid


def moved_pct(state: AgentState, r: Rejection) -> float | None:
    """How far the rejected action's price moved since, in percent (None: cannot tell)."""
    now = _price_now(state, r)
    if now is None or not r.ref_price:
        return None
    return abs(now / r.ref_price - 1.0) * 100.0


def active(state: AgentState, settings: Settings) -> list[tuple[Rejection, str]]:
    """The rejections still cooling down, each with the sentence that explains it."""
    window = timedelta(minutes=settings.reject_cooldown_min)
    out = []
    for r in state.history.rejections:
        age = state.timestamp - r.at
        if window.total_seconds() <= 0 or age >= window or age < timedelta(0):
            continue
        moved = moved_pct(state, r)
        if moved is not None and moved > settings.max_price_drift_pct:
            continue  # the market moved: the old answer no longer applies
        until = r.at + window
        out.append((r, f"{r.text()}; not proposed again until {until:%H:%M}Z (REJECT_COOLDOWN_MIN "
                       f"{settings.reject_cooldown_min:g}) unless its price moves more than {settings.max_price_drift_pct:g}%"))
    return out


def hide_rejected(state: AgentState, settings: Settings) -> tuple[AgentState, list[str]]:
    """The state without the calls whose opening was just rejected (so the brain weighs the
    others), and the sentences that say which and why."""
    cooling = [(r, why) for r, why in active(state, settings) if r.action == ActionType.OPEN_COVERED_CALL.value]
    if not cooling:
        return state, []
    hidden = {r.symbol for r, _ in cooling}
    kept = tuple(c for c in state.candidates if c.instrument_name not in hidden)
    notes = [why for r, why in cooling if state.candidate(r.symbol or "") is not None]
    return state.model_copy(update={"candidates": kept}), notes


def blocked(action: Action, state: AgentState, settings: Settings) -> str | None:
    """Why this action is held back by a rejection's cool-down, or None."""
    if action.action == ActionType.DO_NOTHING:
        return None
    for r, why in active(state, settings):
        if r.key() == action.key():
            return why
    return None
