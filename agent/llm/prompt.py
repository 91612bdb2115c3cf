"""The decision prompt: rules and limits (system), the facts an options trader decides with (user),
and the strict JSON schema of the answer. Compact: the best candidates only, short ids, one row each.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..config import Settings
from ..models import Action, ActionType, AgentState, Candidate, OptionPosition
from ..policy import close_cost, decide_action, fee
from .caps import is_reasoning_model
from .parse import clean_text

MAX_PROMPT_CANDIDATES = 8
MAX_PROMPT_POSITIONS = 10
PREVIOUS_MAX_CHARS = 300
RULE_REASON_MAX_CHARS = 200
MAX_FILLS = 3
ALLOWED_KEYS = ("action", "candidate_id", "position_id", "reasoning")


def prompt_candidates(candidates: Sequence[Candidate], state: AgentState | None = None) -> list[Candidate]:
    """The candidates the model sees (and may pick): the best MAX_PROMPT_CANDIDATES by score.

    With a short call open, OPEN is not allowed, so only calls it could roll into (later expiry
    and higher strike than some short call) are worth showing.
    """
    pool = list(enumerate(candidates))
    shorts = state.short_calls if state is not None else ()
    if shorts:
        pool = [(i, c) for i, c in pool if any(rolls_into(c, p) for p in shorts)]
    ranked = sorted(pool, key=lambda ic: (-ic[1].score, ic[0]))
    if len(shorts) < 2:
        return [c for _, c in ranked[:MAX_PROMPT_CANDIDATES]]
    # Several shorts: each gets its best roll targets in first, then the rest by score.
    share = max(1, MAX_PROMPT_CANDIDATES // len(shorts))
    chosen: set[int] = set()
    for p in shorts:
        chosen.update([i for i, c in ranked if rolls_into(c, p) and i not in chosen][:share])
    for i, _ in ranked:
        if len(chosen) >= MAX_PROMPT_CANDIDATES:
            break
        chosen.add(i)
    return [c for i, c in ranked if i in chosen][:MAX_PROMPT_CANDIDATES]


def rolls_into(c: Candidate, p: OptionPosition) -> bool:
    return c.expiration_timestamp > p.expiration_timestamp and c.strike > p.strike


def roll_net_credit(c: Candidate, p: OptionPosition) -> float:
    """Per contract: the new call's bid minus the old one's buy-back cost, minus both fees."""
    cost = close_cost(p)
    return c.bid - cost - fee(c.bid) - fee(cost)


def prompt_positions(state: AgentState) -> list[OptionPosition]:
    """The positions the model sees: short calls first, at most MAX_PROMPT_POSITIONS."""
    ordered = sorted(state.positions, key=lambda p: (not p.is_short_call, p.expiration_timestamp))
    return ordered[:MAX_PROMPT_POSITIONS]


def g(x: float, digits: int = 4) -> str:
    """A compact number: no trailing zeros."""
    s = f"{x:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def reasoning_first(settings: Settings) -> bool:
    """Non-reasoning models write their reasoning before the action (it is their only thinking)."""
    return not is_reasoning_model(settings.llm_model_name)


def answer_example(settings: Settings) -> str:
    keys = ['"action": "..."', '"candidate_id": "c1" or null', '"position_id": "p1" or null']
    why = '"reasoning": "one or two short sentences"'
    return "{" + ", ".join([why, *keys] if reasoning_first(settings) else [*keys, why]) + "}"


def system_prompt(state: AgentState, settings: Settings) -> str:
    u = state.underlying
    s = settings
    return (
        f"You are the decision step of a covered-call agent on Deribit {u} options (premiums in {u} per contract).\n"
        "Choose exactly ONE action, using only ids listed in the user message:\n"
        "- DO_NOTHING: candidate_id null, position_id null.\n"
        "- OPEN_COVERED_CALL: sell candidate_id; only when no short call is open; position_id null.\n"
        "- CLOSE_COVERED_CALL: buy back the short call position_id; candidate_id null.\n"
        "- ROLL_COVERED_CALL: buy back position_id and sell candidate_id, one of the pairs listed under Rolls.\n"
        f"You never set a symbol, size or price: the code sizes every order at {g(s.default_order_size)} {u} and prices it "
        "from the book. Extra keys, unknown ids or a broken rule void your answer (then nothing is done).\n"
        f"Risk limits (a risk engine vetoes breaches): short calls <= {u} held; margin used <= {g(s.max_margin_used_pct)}%; "
        f"|options delta| <= {g(s.max_options_delta_abs)} {u}; short calls per expiry <= {g(s.max_expiry_exposure)} {u}.\n"
        f"Profile {s.mode}: DTE {g(s.min_dte)}-{g(s.max_dte)} (target {g(s.target_dte)}), "
        f"delta {g(s.min_delta)}-{g(s.max_delta)} (target {g(s.target_delta)}), OTM >= {g(s.min_otm_pct)}%, "
        f"premium >= {g(s.min_premium)} {u}, annual yield >= {g(s.min_annual_yield_pct)}%.\n"
        f"An open call: close it when >= {g(s.close_capture_pct)}% of the premium is captured with >= "
        f"{g(s.close_min_hours_left)} h left; roll it up and out for a net credit when its delta >= "
        f"{g(s.roll_trigger_delta)} or spot >= {g(s.roll_trigger_spot_pct)}% of strike (new delta <= "
        f"{g(s.roll_max_delta)}, at most {s.max_rolls} rolls); let it expire under {g(s.expire_hours)} h with delta <= "
        f"{g(s.expire_max_delta)}. Weigh IV against the ATM IV: rich IV pays more premium for the same delta. "
        "The rule policy's pick is a baseline; differ from it only for a reason you state. When unsure, DO_NOTHING.\n"
        f"Answer with this JSON object only: {answer_example(settings)}"
    )


def _candidate_rows(state: AgentState, shown: Sequence[Candidate], n_all: int) -> list[str]:
    u = state.underlying
    what = "Calls you may roll into (later expiry and higher strike than a short call)" if state.short_calls \
        else "Calls you may sell"
    lines = [f"{what}: {len(shown)} best by score of {n_all} passing the filters ({state.chain_size} options in the chain):",
             f"id strike dte delta iv bid{u} bid$ otm% yield% oi spr% score"]
    for c in shown:
        lines.append(f"{c.id} {c.strike:.0f} {c.dte:.1f} {c.delta:.2f} {c.mark_iv:.1f} {c.bid:.4f} {c.bid_usd:.0f} "
                     f"{c.otm_pct:.1f} {c.annualized_yield_pct:.1f} {c.open_interest:.0f} {c.spread_pct:.1f} {c.score:.1f}")
    return lines


def _position_rows(state: AgentState, positions: Sequence[OptionPosition], shown: Sequence[Candidate]) -> list[str]:
    u = state.underlying
    lines = ["Open positions (size < 0: short):", "id symbol size avg mark ask delta iv dte capt% spot%K rolls"]
    for p in positions:
        cost = close_cost(p)
        capt = (1.0 - cost / p.average_price) * 100.0 if p.average_price > 0 else 0.0
        ask = f"{p.ask:.4f}" if p.ask is not None else "-"
        iv = f"{p.mark_iv:.1f}" if p.mark_iv else "-"
        lines.append(f"{p.id} {p.instrument_name} {g(p.size)} {p.average_price:.4f} {p.mark:.4f} {ask} {p.delta:.2f} "
                     f"{iv} {p.dte:.1f} {capt:.0f} {state.spot / p.strike * 100.0:.1f} "
                     f"{state.history.roll_count.get(p.instrument_name, 0)}")
    shorts = [p for p in positions if p.is_short_call]
    if shorts:
        lines.append(f"Rolls: the calls each short may roll into, net credit per contract after fees ({u}):")
        for p in shorts:
            pairs = [f"{c.id} {roll_net_credit(c, p):+.4f}" for c in shown if rolls_into(c, p)]
            lines.append(f"{p.id} -> {', '.join(pairs) if pairs else 'none'}")
        lines.append(f"Short calls open: {', '.join(p.id for p in shorts)} "
                     "(OPEN not allowed; CLOSE or ROLL one of them, or DO_NOTHING).")
    else:
        lines.append("No short call open: OPEN or DO_NOTHING.")
    return lines


def _cooldown_line(state: AgentState, settings: Settings) -> str:
    window = settings.hysteresis_min
    recent = sorted(((state.timestamp - at).total_seconds() / 60, sym) for sym, at in state.history.last_action_at.items()
                    if 0 <= (state.timestamp - at).total_seconds() / 60 < window)
    if not recent:
        return f"Cool-down: none (no action in the last {g(window)} min)."
    mins, sym = recent[0]
    more = f" and {len(recent) - 1} more" if len(recent) > 1 else ""
    return (f"Cool-down: {sym}{more} acted on {mins:.0f} min ago (< {g(window)} min): the rules wait "
            f"{window - mins:.0f} min more before acting again.")


def _rule_line(state: AgentState, settings: Settings, rule: Action | None) -> str:
    if rule is None:
        rule = decide_action(state, settings)
    ids = []
    if rule.symbol and (c := state.candidate(rule.symbol)) is not None and rule.action != ActionType.CLOSE_COVERED_CALL:
        ids.append(c.id)
    leg = rule.roll_from or (rule.symbol if rule.action == ActionType.CLOSE_COVERED_CALL else None)
    if leg and (p := state.position(leg)) is not None:
        ids.append(p.id)
    return f"Rule policy picks: {rule.action.value}{' ' + ' '.join(ids) if ids else ''}: " \
           f"{clean_text(rule.reasoning, RULE_REASON_MAX_CHARS)}"


def user_prompt(state: AgentState, candidates: Sequence[Candidate], previous: str | None = None,
                settings: Settings | None = None, rule: Action | None = None) -> str:
    u = state.underlying
    a = state.account
    shown = prompt_candidates(candidates, state)
    lines = [
        f"Time {state.timestamp:%Y-%m-%d %H:%M} UTC. {u} index {state.spot:,.0f}; forward {state.forward:,.0f}.",
        f"Account: equity {a.equity:.4f} {u}, available {a.available_funds:.4f}, margin used {a.margin_used_pct:.1f}%, "
        f"options delta {a.options_delta:+.3f} {u}.",
    ]
    ivs = [c.mark_iv for c in shown if c.mark_iv]
    vol = [f"ATM IV {state.atm_iv:.1f}% ({state.atm_iv_dte:.1f} DTE expiry)"] if state.atm_iv is not None and state.atm_iv_dte is not None else []
    if ivs:
        vol.append(f"shown calls IV {min(ivs):.1f}-{max(ivs):.1f}%")
    h = state.history
    rv = [f"{name} {v:.1f}%" for name, v in (("7d", h.realized_vol_7d), ("30d", h.realized_vol_30d)) if v is not None]
    if rv:
        vol.append("realized " + ", ".join(rv))
    if vol:
        lines.append("Volatility: " + "; ".join(vol) + ".")
    if shown:
        lines += _candidate_rows(state, shown, len(candidates))
    elif candidates:
        lines.append(f"None of the {len(candidates)} calls passing the filters has a later expiry and a higher strike "
                     "than the short call: nothing to roll into.")
    else:
        lines.append(f"No call passes the filters ({state.chain_size} options in the chain): nothing to open or roll into.")
    positions = prompt_positions(state)
    if positions:
        lines += _position_rows(state, positions, shown)
    else:
        lines.append("No open position: OPEN or DO_NOTHING.")
    if settings is not None:
        lines.append(_cooldown_line(state, settings))
    if state.history.recent_fills:
        lines.append("Recent fills: " + "; ".join(clean_text(f, 120) for f in state.history.recent_fills[:MAX_FILLS]) + ".")
    if settings is not None:
        lines.append(_rule_line(state, settings, rule))
    prev = previous if previous is not None else state.history.previous_decision
    if prev:
        lines.append(f"Previous decision: {clean_text(prev, PREVIOUS_MAX_CHARS)}")
    if state.history.rejection_note():
        lines.append(clean_text(state.history.rejection_note(), 2 * PREVIOUS_MAX_CHARS))
    return "\n".join(lines)


def build_prompt(state: AgentState, candidates: Sequence[Candidate], settings: Settings,
                 previous: str | None = None, rule: Action | None = None) -> list[dict[str, str]]:
    """The chat messages for one decision: rules and limits (system), the state (user)."""
    return [
        {"role": "system", "content": system_prompt(state, settings)},
        {"role": "user", "content": user_prompt(state, candidates, previous, settings, rule)},
    ]


def decision_schema(state: AgentState, candidates: Sequence[Candidate], settings: Settings | None = None
                    ) -> dict[str, Any]:
    """The strict JSON schema of an answer: the action as an enum, ids as enums of the given ids.
    `reasoning` comes first for non-reasoning models (structured output writes keys in order)."""
    cids = [c.id for c in prompt_candidates(candidates, state)]
    pids = [p.id for p in prompt_positions(state) if p.is_short_call]
    props: dict[str, Any] = {
        "action": {"type": "string", "enum": [a.value for a in ActionType]},
        "candidate_id": _nullable_enum(cids),
        "position_id": _nullable_enum(pids),
    }
    why = {"type": "string"}
    first = settings is None or reasoning_first(settings)
    props = {"reasoning": why, **props} if first else {**props, "reasoning": why}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _nullable_enum(ids: list[str]) -> dict[str, Any]:
    if not ids:
        return {"type": "null"}
    return {"type": ["string", "null"], "enum": [*ids, None]}
