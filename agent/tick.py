"""One decision: state -> brain(s) -> risk -> (optional) execution -> Decision.

No I/O of its own beyond what it is handed: the exchange client, and an optional LLM brain.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Protocol

from .clock import Clock, WallClock, to_datetime
from .config import Settings
from .deribit.client import DeribitClient
from .execution import execute_action
from . import cooldown
from .models import Action, ActionType, AgentState, Decision, PositionHistory
from .policy import decide_action
from .risk import apply_risk
from .snapshot import CAND_KEYS, POS_KEYS, named  # noqa: F401 (the snapshot's rows; also imported from here)
from .state import build_agent_state

MAX_PROMPT_CANDIDATES = 8


class LLMBrain(Protocol):
    """Returns the LLM's action and a record of the call (for the audit trail)."""

    def __call__(self, state: AgentState, settings: Settings) -> Awaitable[tuple[Action, dict[str, Any]]]: ...


async def run_tick(
    client: DeribitClient,
    settings: Settings,
    *,
    clock: Clock | None = None,
    history: PositionHistory | None = None,
    llm_brain: LLMBrain | None = None,
    execute: bool = False,
    label: str | None = None,
    state_hook: Callable[[AgentState], AgentState] | None = None,
    llm_off_reason: str | None = None,
) -> Decision:
    """Run one decision. With `execute`, an allowed action is sent at once under `label`
    (the chat-ops spine never does this: it turns the decision into a proposal instead)."""
    clock = clock or WallClock()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    state = await build_agent_state(client, settings, clock=clock, history=history)
    if state_hook is not None:
        state = state_hook(state)
    state, cooling = cooldown.hide_rejected(state, settings)  # rejections teach: not the same call again soon
    timings["state_ms"] = _ms(t0)

    t1 = time.perf_counter()
    mode = settings.effective_decision_mode
    llm_calls: list[dict[str, Any]] = []
    shadow: Action | None = None
    if mode == "rule" or llm_brain is None:
        proposed = decide_action(state, settings)
        if mode == "llm":  # the LLM should have driven but cannot: say so instead of pretending
            why = f"LLM unavailable ({llm_off_reason})" if llm_off_reason else "LLM unavailable"
            proposed = proposed.model_copy(update={"reasoning": f"[{why}: rules decided] {proposed.reasoning}"})
    elif mode == "llm":
        proposed, record = await llm_brain(state, settings)
        llm_calls.append(record)
    else:  # shadow: the rules drive, the LLM decides beside them on the same state
        proposed = decide_action(state, settings)
        shadow, record = await llm_brain(state, settings)
        llm_calls.append(record)
    held = cooldown.blocked(proposed, state, settings)
    if held:
        proposed = Action(action=ActionType.DO_NOTHING, underlying=state.underlying, decision_source=proposed.decision_source,
                          reasoning=f"Not proposing {proposed.action.value} {proposed.symbol or ''} again: {held}. "
                                    f"(The brain said: {proposed.reasoning})")
    elif cooling:
        proposed = proposed.model_copy(update={"reasoning": f"{proposed.reasoning} [Left out: {'; '.join(cooling)}.]"})
    timings["brain_ms"] = _ms(t1)

    t2 = time.perf_counter()
    risk, final = apply_risk(state, proposed, settings, now=to_datetime(clock.now_ms()))
    timings["risk_ms"] = _ms(t2)

    execution = None
    if execute:
        t3 = time.perf_counter()
        execution = await execute_action(client, final, label or f"tick-{clock.now_ms()}", settings)
        timings["execution_ms"] = _ms(t3)
    timings["total_ms"] = _ms(t0)

    return Decision(
        timestamp=state.timestamp,
        underlying=state.underlying,
        state=compress_state(state, proposed),
        proposed_action=proposed,
        risk_check=risk,
        final_action=final,
        execution=execution,
        config_snapshot=config_snapshot(settings),
        decision_source=proposed.decision_source,
        shadow_action=shadow,
        llm_calls=tuple(llm_calls),
        timings_ms=timings,
        requests=state.requests,
        credits=state.credits,
    )


def compress_state(state: AgentState, action: Action | None = None, top: int = MAX_PROMPT_CANDIDATES) -> dict[str, Any]:
    """The few numbers worth keeping per tick: account, positions, the best candidates, and the
    full numbers of the instruments the action names (for its card and for `why`)."""
    a = state.account
    chosen = state.roll_candidate(action.symbol) if action and action.symbol else None  # a roll's from its window
    leg = state.position(action.roll_from or action.symbol or "") if action else None
    keep = ("instrument_name", "strike", "expiration_timestamp", "dte", "delta", "bid", "ask", "mark", "bid_usd",
            "otm_pct", "annualized_yield_pct", "open_interest", "spread_pct", "score", "forward", "mark_iv",
            "average_price", "size")
    out = {
        "ts": state.timestamp.isoformat(),
        "spot": round(state.spot, 2),
        "fwd": round(state.forward, 2),
        "eq": round(a.equity, 6),
        "mu": round(a.margin_used_pct, 3),
        "od": round(a.options_delta, 4),
        # Named keys (no positional arrays), so SQL can say json_extract(state_json, '$.pos[0].delta').
        "pos": [{"name": p.instrument_name, "size": p.size, "avg": round(p.average_price, 6), "mark": round(p.mark, 6),
                 "delta": p.delta, "dte": round(p.dte, 3), "strike": p.strike} for p in state.positions],
        "cand": [{"id": c.id, "name": c.instrument_name, "delta": c.delta, "dte": round(c.dte, 2), "bid": c.bid,
                  "yield": c.annualized_yield_pct, "score": c.score} for c in state.candidates[:top]],
        "n_cand": len(state.candidates),
        "chain": state.chain_size,
        "req": state.requests,
    }
    if chosen is not None:
        out["sel"] = {k: v for k, v in chosen.model_dump().items() if k in keep}
    if leg is not None:
        out["leg"] = {k: v for k, v in leg.model_dump().items() if k in keep}
    return out


# Settings that shape a decision; the rest (tokens, chat ids) stays out of every tick row.
_SNAPSHOT_KEYS = (
    "exchange", "underlying", "effective_dry_run", "effective_decision_mode", "mode", "llm_model_name",
    "min_dte", "max_dte", "target_dte", "min_delta", "max_delta", "target_delta", "min_otm_pct", "min_premium",
    "min_annual_yield_pct", "max_spread_pct", "min_open_interest", "default_order_size", "max_margin_used_pct",
    "max_net_delta_abs", "max_options_delta_abs", "max_expiry_exposure", "approval_mode", "roll_min_dte",
    "roll_max_dte", "roll_target_delta", "roll_max_delta",
)


def config_snapshot(settings: Settings) -> dict[str, Any]:
    """The decision-relevant settings (secrets never among them: redacted() is the source)."""
    red = settings.redacted()
    return {k: red[k] for k in _SNAPSHOT_KEYS if red[k] is not None}  # unset limits are left out, as stored


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 2)
