"""Validation of a model's decision: the Action an answer stands for, or why it is void."""

from __future__ import annotations

import math
from typing import Any, Sequence

from ..config import Settings
from ..models import Action, ActionType, AgentState, Candidate, OptionPosition
from ..policy import close_cost, order_size
from .parse import clean_text
from .prompt import ALLOWED_KEYS, prompt_candidates, prompt_positions, rolls_into
from .prompt import g as _g
from .records import short as _short

_rolls_into = rolls_into


def validate_llm_choice(obj: Any, state: AgentState, candidates: Sequence[Candidate], settings: Settings) -> Action | str:
    """The Action an answer stands for, or a one-line reason it is rejected as a whole.

    Only keys action / candidate_id / position_id / reasoning; ids from what the prompt showed;
    the action's shape and the roll's direction checked. Symbols come from the ids, the size from
    DEFAULT_ORDER_SIZE (rounded down to the instrument's minimum, capped at the short's size).
    """
    if not isinstance(obj, dict):
        return f"answer is not a JSON object (got {type(obj).__name__})"
    extra = sorted(str(k) for k in obj if k not in ALLOWED_KEYS)
    if extra:
        return f"unexpected keys {', '.join(_short(k, 30) for k in extra[:5])}: only {', '.join(ALLOWED_KEYS)} are allowed"
    action = obj.get("action")
    if not isinstance(action, str):
        return f"action missing or not a string (got {type(action).__name__})"
    try:
        kind = ActionType(action)
    except ValueError:
        return f"unknown action {_short(action, 40)!r}"
    cid, pid, reasoning = obj.get("candidate_id"), obj.get("position_id"), obj.get("reasoning", "")
    for name, v in (("candidate_id", cid), ("position_id", pid), ("reasoning", reasoning)):
        if v is not None and not isinstance(v, str):
            return f"{name} must be a string or null (got {type(v).__name__})"
    cid = cid or None  # "" counts as null
    pid = pid or None
    by_cid = {c.id: c for c in prompt_candidates(candidates, state)}
    by_pid = {p.id: p for p in prompt_positions(state)}
    if cid is not None and cid not in by_cid:
        return f"unknown candidate_id {_short(cid, 30)!r} (allowed: {', '.join(by_cid) or 'none'})"
    if pid is not None and pid not in by_pid:
        return f"unknown position_id {_short(pid, 30)!r} (allowed: {', '.join(by_pid) or 'none'})"
    why = clean_text(reasoning or "")
    u = state.underlying

    if kind == ActionType.DO_NOTHING:
        return Action(action=kind, underlying=u, reasoning=why or "LLM: do nothing.", decision_source="llm")

    if kind == ActionType.OPEN_COVERED_CALL:
        if cid is None:
            return "OPEN_COVERED_CALL needs a candidate_id"
        if pid is not None:
            return "OPEN_COVERED_CALL takes no position_id"
        if state.short_calls:
            return f"OPEN_COVERED_CALL not allowed: short call {_pid_of(state, state.short_calls[0])} is already open"
        c = by_cid[cid]
        size = order_size(settings, c.min_trade_amount)
        if size <= 0:
            return f"DEFAULT_ORDER_SIZE {settings.default_order_size:g} is below the minimum trade amount {c.min_trade_amount:g}"
        facts = f"Open: sell {_g(size)} of {_cand_facts(c, u)}."
        return Action(action=kind, underlying=u, symbol=c.instrument_name, size=size, decision_source="llm",
                      reasoning=_join(why, facts), ref_sell_price=c.bid)

    if pid is None:
        return f"{kind.value} needs a position_id"
    p = by_pid[pid]
    if not p.is_short_call:
        return f"position {pid} is not a short call"

    if kind == ActionType.CLOSE_COVERED_CALL:
        if cid is not None:
            return "CLOSE_COVERED_CALL takes no candidate_id"
        size = _leg_size(settings, p.min_trade_amount, abs(p.size))
        if size <= 0:
            return f"no size: DEFAULT_ORDER_SIZE {settings.default_order_size:g} or the {_g(abs(p.size))} short is below the minimum {p.min_trade_amount:g}"
        facts = f"Close: buy back {_g(size)} of {_pos_facts(p, u)}."
        return Action(action=kind, underlying=u, symbol=p.instrument_name, size=size, decision_source="llm",
                      reasoning=_join(why, facts), ref_buy_price=close_cost(p))

    # ROLL_COVERED_CALL
    if cid is None:
        return "ROLL_COVERED_CALL needs a candidate_id (the new call)"
    c = by_cid[cid]
    if not _rolls_into(c, p):
        return (f"ROLL_COVERED_CALL must go up and out: {cid} (strike {c.strike:,.0f}, {c.dte:.1f} DTE) vs {pid} "
                f"(strike {p.strike:,.0f}, {p.dte:.1f} DTE) needs a later expiry and a higher strike")
    size = _leg_size(settings, max(c.min_trade_amount, p.min_trade_amount), abs(p.size))
    if size <= 0:
        return f"no size: DEFAULT_ORDER_SIZE {settings.default_order_size:g} or the {_g(abs(p.size))} short is below the minimum"
    facts = f"Roll {_g(size)}: {_pos_facts(p, u)}; then sell {_cand_facts(c, u)}."
    return Action(action=kind, underlying=u, symbol=c.instrument_name, roll_from=p.instrument_name, size=size,
                  decision_source="llm", reasoning=_join(why, facts), ref_sell_price=c.bid, ref_buy_price=close_cost(p))


def _pid_of(state: AgentState, p: OptionPosition) -> str:
    return p.id or p.instrument_name


def _leg_size(settings: Settings, step: float, held: float) -> float:
    """DEFAULT_ORDER_SIZE rounded down to `step`, never more than the short held (also on the grid)."""
    size = order_size(settings, step)
    if step > 0:
        held = math.floor(held / step + 1e-9) * step
    return round(max(min(size, held), 0.0), 8)


def _cand_facts(c: Candidate, u: str) -> str:
    return (f"{c.id} {c.instrument_name} (strike {c.strike:,.0f}, {c.dte:.1f} DTE, delta {c.delta:.2f}, "
            f"bid {c.bid:.4f} {u} = ${c.bid_usd:,.0f}, {c.otm_pct:.1f}% OTM, {c.annualized_yield_pct:.1f}% annualized)")


def _pos_facts(p: OptionPosition, u: str) -> str:
    cost = close_cost(p)
    side = "ask" if p.ask is not None else "mark"
    return (f"buy back {p.id} {p.instrument_name} (strike {p.strike:,.0f}, {p.dte:.1f} DTE, delta {p.delta:.2f}, "
            f"{side} {cost:.4f} {u} vs {p.average_price:.4f} sold)")


def _join(why: str, facts: str) -> str:
    return f"{why} | {facts}" if why else facts


def fallback_action(state: AgentState, reason: str) -> Action:
    """DO_NOTHING that says it is a fallback and why."""
    return Action(action=ActionType.DO_NOTHING, underlying=state.underlying, decision_source="llm_fallback",
                  reasoning=f"LLM fallback: {clean_text(reason, 300)}")

