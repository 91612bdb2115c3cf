"""The public calls: a decision (`llm_decide`, `llm_brain` for `agent.tick`), a free-text answer
(`llm_chat`). Each makes one call through `call.complete` and returns a record; none raises."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import openai

from ..config import Settings
from ..models import Action, AgentState, Candidate
from ..policy import decide_action
from .call import complete, make_record
from .parse import extract_json
from .prompt import build_prompt, decision_schema
from .records import LLMCallRecord, LLMOutcome, LLMTextOutcome, short
from .validate import fallback_action, validate_llm_choice

log = logging.getLogger("agent.llm")

DECIDE_MAX_TOKENS = 300
SCHEMA_NAME = "covered_call_decision"

_PLAIN_DECIDE = ("Your reply is parsed by a program: output only the JSON object, no prose, no code fence. "
                 "Keys: action, candidate_id, position_id, reasoning; nothing else.")


async def llm_decide(
    state: AgentState,
    candidates: Sequence[Candidate] | None,
    settings: Settings,
    *,
    client: openai.AsyncOpenAI | None = None,
    previous: str | None = None,
    rule: Action | None = None,
) -> LLMOutcome:
    """Ask the model for one action among the prepared ids; invalid or failed -> DO_NOTHING fallback.
    `rule` is the rule policy's pick shown in the prompt (computed here when not given)."""
    cands = state.candidates if candidates is None else candidates
    rule = rule if rule is not None else decide_action(state, settings)
    messages = build_prompt(state, cands, settings, previous, rule)
    raw = await complete(settings, messages, client=client, max_tokens=DECIDE_MAX_TOKENS,
                         schema=decision_schema(state, cands, settings), schema_name=SCHEMA_NAME,
                         plain_hint=_PLAIN_DECIDE)
    if raw.error is not None:
        rec = make_record(settings, raw, parsed=None, valid=False, error=raw.error)
        return LLMOutcome(fallback_action(state, raw.error), rec)
    try:
        obj = extract_json(raw.content or "")
    except ValueError as exc:
        err = f"bad JSON: {exc}: {short(raw.content, 80)!r}"
        return LLMOutcome(fallback_action(state, err),
                          make_record(settings, raw, parsed=None, valid=False, error=err, reason=f"bad JSON: {exc}"))
    parsed = obj if isinstance(obj, dict) else None
    result = validate_llm_choice(obj, state, cands, settings)
    if isinstance(result, str):
        err = f"invalid answer: {result}"
        return LLMOutcome(fallback_action(state, err),
                          make_record(settings, raw, parsed=parsed, valid=False, error=err, reason="invalid answer"))
    return LLMOutcome(result, make_record(settings, raw, parsed=parsed, valid=True, error=None))


async def choose_action_with_llm(state: AgentState, candidates: Sequence[Candidate] | None, settings: Settings,
                                 **kw: Any) -> Action:
    """Just the action of `llm_decide`."""
    return (await llm_decide(state, candidates, settings, **kw)).action


async def llm_brain(state: AgentState, settings: Settings, *, client: openai.AsyncOpenAI | None = None
                    ) -> tuple[Action, dict[str, Any]]:
    """`llm_decide` in the shape `agent.tick.LLMBrain` expects: (action, record as a dict).
    Even a bug of ours becomes a recorded fallback here, so a tick is never lost to the LLM."""
    try:
        out = await llm_decide(state, state.candidates, settings, client=client)
    except Exception as exc:  # noqa: BLE001 - llm_decide returns its failures; this is for the unforeseen
        log.exception("LLM brain failed")
        error = f"unexpected error: {type(exc).__name__}: {short(exc)}"
        record = LLMCallRecord(model=settings.llm_model_name, prompt="", raw_response="", parsed=None, valid=False,
                               error=error, tokens_in=0, tokens_out=0, latency_ms=0.0, cost_usd=0.0,
                               finish_reason=None, attempts=0, reason=f"unexpected error: {type(exc).__name__}")
        return fallback_action(state, error), record.to_dict()
    return out.action, out.record.to_dict()


async def llm_chat(settings: Settings, system: str, user: str, *, client: openai.AsyncOpenAI | None = None,
                   max_tokens: int = 400) -> LLMTextOutcome:
    """A plain completion (for questions to the agent). Errors come back in the record, never raised."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    raw = await complete(settings, messages, client=client, max_tokens=max_tokens)
    if raw.finish_reason == "length" and raw.content and raw.content.strip() and raw.error and "length" in raw.error:
        # An answer cut at max_tokens is still worth showing; finish_reason in the record says so.
        raw.error = raw.reason = None
        raw.content = raw.content.rstrip() + "…"
    if raw.error is not None:
        return LLMTextOutcome(None, make_record(settings, raw, parsed=None, valid=False, error=raw.error))
    return LLMTextOutcome((raw.content or "").strip(), make_record(settings, raw, parsed=None, valid=True, error=None))
