"""The LLM brain: a model picks one of four actions among ids the code prepared, nothing more.

The model only ever names an action, a candidate id ("c3") and a position id ("p1"), plus a short
reasoning. Symbols come from those ids, the size from DEFAULT_ORDER_SIZE, the prices from the book:
the model writes none of them. Its answer is asked for as a strict JSON schema and validated
locally anyway, so a server that ignores the schema is still safe. Anything malformed, invalid,
late or failing becomes DO_NOTHING with decision_source "llm_fallback" and the reason, never an
exception. One client setting for every OpenAI-compatible server: no hidden retries, temperature 0.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import openai

from .config import Settings
from .models import Action, ActionType, AgentState, Candidate, OptionPosition
from .policy import close_cost, order_size

MAX_PROMPT_CANDIDATES = 8
MAX_PROMPT_POSITIONS = 10
REASONING_MAX_CHARS = 500
PREVIOUS_MAX_CHARS = 300
DECIDE_MAX_TOKENS = 300
WHATIF_MAX_TOKENS = 200
ALLOWED_KEYS = ("action", "candidate_id", "position_id", "reasoning")
SCHEMA_NAME = "covered_call_decision"

# (base_url, model) pairs that answered 400 to response_format: ask them in plain text directly
# instead of spending a rejected request on every tick.
_NO_SCHEMA: set[tuple[str, str]] = set()


# Records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LLMCallRecord:
    """Everything about one LLM call, for the audit trail (no secret in it)."""

    model: str
    prompt: str  # the messages as text
    raw_response: str  # the content (or refusal / tool calls / error text) as received
    parsed: dict[str, Any] | None
    valid: bool
    error: str | None
    tokens_in: int
    tokens_out: int
    latency_ms: float
    cost_usd: float
    finish_reason: str | None
    tokens_estimated: bool = False  # True when the server gave no usage: bytes / 4
    attempts: int = 1  # HTTP requests made (2 when response_format was rejected and retried)
    structured: bool = True  # the answer was asked for with a JSON schema response_format

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LLMOutcome:
    action: Action
    record: LLMCallRecord


@dataclass(frozen=True)
class LLMTextOutcome:
    text: str | None  # None when the call failed: record.error says why
    record: LLMCallRecord


@dataclass
class _Raw:
    """One completion as received, or why there is none."""

    model: str
    prompt: str
    content: str | None = None
    raw: str = ""
    finish_reason: str | None = None
    usage_in: int | None = None
    usage_out: int | None = None
    error: str | None = None
    attempts: int = 0
    structured: bool = False
    latency_ms: float = 0.0


# Client and the one completion call ----------------------------------------------------------


def make_client(settings: Settings) -> openai.AsyncOpenAI:
    """The client every call uses: the settings' timeout, no hidden retries."""
    return openai.AsyncOpenAI(
        api_key=settings.secret("openai_api_key") or "not-needed",
        base_url=settings.openai_base_url,  # None: the SDK's default or OPENAI_BASE_URL
        timeout=settings.llm_timeout_sec,
        max_retries=0,
    )


def estimate_tokens(text: str) -> int:
    """About four bytes per token: good enough for budgets and for servers that send no usage."""
    n = len(text.encode("utf-8"))
    return 0 if n == 0 else max(1, math.ceil(n / 4))


def messages_text(messages: Sequence[dict[str, Any]]) -> str:
    return "\n\n".join(f"[{m.get('role')}]\n{m.get('content')}" for m in messages)


def _short(text: Any, n: int = 200) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _format_rejected(exc: openai.APIStatusError) -> bool:
    text = f"{exc.message} {exc.body if exc.body is not None else ''} {getattr(exc, 'param', '') or ''}".lower()
    return any(k in text for k in ("response_format", "json_schema", "not supported", "unsupported", "structured output"))


def _error_text(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, (openai.APITimeoutError, TimeoutError, asyncio.TimeoutError)):
        return f"timeout: no answer within {timeout:g} s"
    if isinstance(exc, openai.RateLimitError):
        return f"rate limited (HTTP 429): {_short(exc.message)}"
    if isinstance(exc, openai.APIStatusError):
        kind = "server error" if exc.status_code >= 500 else "request refused"
        return f"{kind} (HTTP {exc.status_code}): {_short(exc.message)}"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection error: {_short(exc.message)} ({_short(exc.__cause__ or '', 120)})"
    if isinstance(exc, openai.APIResponseValidationError):
        return f"invalid response from the server: {_short(exc.message)}"
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid response from the server: not JSON ({_short(exc)})"
    return f"unexpected error: {type(exc).__name__}: {_short(exc)}"


async def _complete(
    settings: Settings,
    messages: list[dict[str, Any]],
    *,
    client: openai.AsyncOpenAI | None,
    max_tokens: int,
    schema: dict[str, Any] | None = None,
    schema_name: str = SCHEMA_NAME,
    plain_hint: str = "",
) -> _Raw:
    """One chat completion under the LLM_TIMEOUT_SEC deadline (which bounds the whole call).

    With `schema`, asks for strict structured output; a server that rejects response_format (a 400
    or 422 naming it) is asked once more in plain text (`plain_hint` appended to the system
    message), and remembered for the life of the process. Never raises: failures come back in `error`.
    """
    timeout = settings.llm_timeout_sec
    raw = _Raw(model=settings.llm_model_name, prompt=messages_text(messages))
    own = client is None
    t0 = time.perf_counter()
    try:
        if client is None:
            client = make_client(settings)
        key = (str(client.base_url), settings.llm_model_name)
        structured = schema is not None and key not in _NO_SCHEMA
        async with asyncio.timeout(timeout):
            while True:
                sent = messages if structured or not plain_hint else _with_hint(messages, plain_hint)
                kwargs: dict[str, Any] = {}
                if structured:
                    kwargs["response_format"] = {
                        "type": "json_schema",
                        "json_schema": {"name": schema_name, "strict": True, "schema": schema},
                    }
                raw.attempts += 1
                raw.structured = structured
                raw.prompt = messages_text(sent)
                try:
                    completion = await client.chat.completions.create(
                        model=settings.llm_model_name,
                        messages=sent,  # type: ignore[arg-type]
                        temperature=0,
                        max_tokens=max_tokens,
                        timeout=timeout,
                        **kwargs,
                    )
                except openai.APIStatusError as exc:
                    # 400 (OpenAI, vLLM, LM Studio) or 422 (some proxies) naming response_format.
                    if (structured and raw.attempts == 1 and exc.status_code in (400, 422)
                            and _format_rejected(exc)):
                        _NO_SCHEMA.add(key)
                        structured = False
                        continue
                    raise
                break
        _read_completion(raw, completion)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded fallback
        raw.error = _error_text(exc, timeout)
        if not raw.raw:
            body = getattr(exc, "body", None)
            raw.raw = _short(json.dumps(body) if isinstance(body, (dict, list)) else (body or exc), 1000)
    finally:
        raw.latency_ms = round((time.perf_counter() - t0) * 1000.0, 1)
        if own and client is not None:
            try:
                await client.close()
            except Exception:  # noqa: BLE001 - closing must not mask the outcome
                pass
    return raw


def _with_hint(messages: list[dict[str, Any]], hint: str) -> list[dict[str, Any]]:
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0]['content']}\n{hint}"
    else:
        out.insert(0, {"role": "system", "content": hint})
    return out


def _read_completion(raw: _Raw, completion: Any) -> None:
    usage = getattr(completion, "usage", None)
    if usage is not None:
        raw.usage_in = _int_or_none(getattr(usage, "prompt_tokens", None))
        raw.usage_out = _int_or_none(getattr(usage, "completion_tokens", None))
    raw.model = getattr(completion, "model", None) or raw.model
    choices = getattr(completion, "choices", None) or []
    if not choices:
        raw.error = "no choices in the answer"
        raw.raw = _short(_dump(completion), 1000)
        return
    choice = choices[0]
    raw.finish_reason = getattr(choice, "finish_reason", None)
    msg = getattr(choice, "message", None)
    content = getattr(msg, "content", None)
    refusal = getattr(msg, "refusal", None)
    tool_calls = getattr(msg, "tool_calls", None)
    raw.content = content if isinstance(content, str) else None
    if refusal:
        raw.raw = str(refusal)
        raw.error = f"refusal: {_short(refusal)}"
    elif tool_calls:
        raw.raw = _short(json.dumps([_dump(t) for t in tool_calls]), 2000)
        raw.error = "tool calls instead of content"
    elif raw.finish_reason == "length":
        raw.raw = raw.content or ""
        raw.error = "answer cut off (finish_reason=length)"
    elif raw.finish_reason == "content_filter":
        raw.raw = raw.content or ""
        raw.error = "answer withheld by the content filter (finish_reason=content_filter)"
    elif raw.content is None or not raw.content.strip():
        raw.raw = raw.content or ""
        raw.error = "empty content"
    else:
        raw.raw = raw.content


def _dump(obj: Any) -> Any:
    return obj.model_dump() if hasattr(obj, "model_dump") else obj


def _int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _record(settings: Settings, raw: _Raw, *, parsed: dict[str, Any] | None, valid: bool, error: str | None) -> LLMCallRecord:
    estimated = raw.usage_in is None or raw.usage_out is None
    t_in = raw.usage_in if raw.usage_in is not None else estimate_tokens(raw.prompt)
    t_out = raw.usage_out if raw.usage_out is not None else estimate_tokens(raw.raw if raw.content is not None else "")
    cost = (t_in * settings.llm_price_in_per_mtok + t_out * settings.llm_price_out_per_mtok) / 1_000_000
    return LLMCallRecord(
        model=raw.model, prompt=raw.prompt, raw_response=raw.raw, parsed=parsed, valid=valid, error=error,
        tokens_in=t_in, tokens_out=t_out, latency_ms=raw.latency_ms, cost_usd=round(cost, 8),
        finish_reason=raw.finish_reason, tokens_estimated=estimated, attempts=raw.attempts, structured=raw.structured,
    )


# JSON out of text ----------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """The JSON value in a model's answer: the whole text, a ```json fenced block, or the first
    balanced {...} that parses. Raises ValueError when there is none."""
    s = text.strip()
    try:
        return json.loads(s)
    except ValueError:
        pass
    for block in _FENCE.findall(s):
        try:
            return json.loads(block.strip())
        except ValueError:
            continue
    for start in (i for i, ch in enumerate(s) if ch == "{"):
        end = _balanced_end(s, start)
        if end is None:
            continue
        try:
            return json.loads(s[start : end + 1])
        except ValueError:
            continue
    raise ValueError("no JSON object in the answer")


def _balanced_end(s: str, start: int) -> int | None:
    depth, in_str, esc = 0, False, False
    for i in range(start, len(s)):
        ch = s[i]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def clean_text(text: str, limit: int = REASONING_MAX_CHARS) -> str:
    """One line, no control or format characters, at most `limit` characters."""
    s = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in text)
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1].rstrip() + "…"


# The prompt ----------------------------------------------------------------------------------


def prompt_candidates(candidates: Sequence[Candidate], state: AgentState | None = None) -> list[Candidate]:
    """The candidates the model sees (and may pick): the best MAX_PROMPT_CANDIDATES by score.

    With a short call open, OPEN is not allowed, so only calls it could roll into (later expiry
    and higher strike than some short call) are worth showing.
    """
    pool = list(enumerate(candidates))
    shorts = state.short_calls if state is not None else ()
    if shorts:
        pool = [(i, c) for i, c in pool if any(_rolls_into(c, p) for p in shorts)]
    ranked = sorted(pool, key=lambda ic: (-ic[1].score, ic[0]))
    return [c for _, c in ranked[:MAX_PROMPT_CANDIDATES]]


def _rolls_into(c: Candidate, p: OptionPosition) -> bool:
    return c.expiration_timestamp > p.expiration_timestamp and c.strike > p.strike


def prompt_positions(state: AgentState) -> list[OptionPosition]:
    """The positions the model sees: short calls first, at most MAX_PROMPT_POSITIONS."""
    ordered = sorted(state.positions, key=lambda p: (not p.is_short_call, p.expiration_timestamp))
    return ordered[:MAX_PROMPT_POSITIONS]


def _g(x: float, digits: int = 4) -> str:
    """A compact number: no trailing zeros."""
    s = f"{x:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def system_prompt(state: AgentState, settings: Settings) -> str:
    u = state.underlying
    s = settings
    return (
        f"You are the decision step of a covered-call agent on Deribit {u} options (premiums in {u} per contract).\n"
        "Choose exactly ONE action, using only ids listed in the user message:\n"
        "- DO_NOTHING: candidate_id null, position_id null.\n"
        "- OPEN_COVERED_CALL: sell candidate_id; only when no short call is open; position_id null.\n"
        "- CLOSE_COVERED_CALL: buy back the short call position_id; candidate_id null.\n"
        "- ROLL_COVERED_CALL: buy back position_id and sell candidate_id, which must have a later expiry AND a higher strike.\n"
        f"You never set a symbol, size or price: the code sizes every order at {_g(s.default_order_size)} {u} and prices it "
        "from the book. Extra keys, unknown ids or a broken rule void your answer (then nothing is done).\n"
        f"Risk limits (a risk engine vetoes breaches): short calls <= {u} held; margin used <= {_g(s.max_margin_used_pct)}%; "
        f"|options delta| <= {_g(s.max_net_delta_abs)} {u}; short calls per expiry <= {_g(s.max_expiry_exposure)} {u}.\n"
        f"Profile {s.mode}: DTE {_g(s.min_dte)}-{_g(s.max_dte)} (target {_g(s.target_dte)}), "
        f"delta {_g(s.min_delta)}-{_g(s.max_delta)} (target {_g(s.target_delta)}), OTM >= {_g(s.min_otm_pct)}%, "
        f"premium >= {_g(s.min_premium)} {u}, annual yield >= {_g(s.min_annual_yield_pct)}%.\n"
        f"An open call: close it when >= {_g(s.close_capture_pct)}% of the premium is captured with >= "
        f"{_g(s.close_min_hours_left)} h left; roll it up and out for a net credit when its delta >= "
        f"{_g(s.roll_trigger_delta)} or spot >= {_g(s.roll_trigger_spot_pct)}% of strike (new delta <= "
        f"{_g(s.roll_max_delta)}, at most {s.max_rolls} rolls); let it expire under {_g(s.expire_hours)} h with delta <= "
        f"{_g(s.expire_max_delta)}. When unsure, DO_NOTHING.\n"
        'Answer with this JSON object only: {"action": "...", "candidate_id": "c1" or null, '
        '"position_id": "p1" or null, "reasoning": "one or two short sentences"}'
    )


def user_prompt(state: AgentState, candidates: Sequence[Candidate], previous: str | None = None) -> str:
    u = state.underlying
    a = state.account
    shown = prompt_candidates(candidates, state)
    lines = [
        f"Time {state.timestamp:%Y-%m-%d %H:%M} UTC. {u} index {state.spot:,.0f}; forward {state.forward:,.0f}.",
        f"Account: equity {a.equity:.4f} {u}, available {a.available_funds:.4f}, margin used {a.margin_used_pct:.1f}%, "
        f"options delta {a.options_delta:+.3f} {u}.",
    ]
    if shown:
        what = "Calls you may roll into (later expiry and higher strike than a short call)" if state.short_calls \
            else "Calls you may sell"
        lines.append(f"{what}: {len(shown)} best by score of {len(candidates)} passing the filters "
                     f"({state.chain_size} options in the chain):")
        lines.append(f"id strike dte delta bid{u} bid$ otm% yield% oi spr% score")
        for c in shown:
            lines.append(
                f"{c.id} {c.strike:.0f} {c.dte:.1f} {c.delta:.2f} {c.bid:.4f} {c.bid_usd:.0f} {c.otm_pct:.1f} "
                f"{c.annualized_yield_pct:.1f} {c.open_interest:.0f} {c.spread_pct:.1f} {c.score:.1f}"
            )
    elif candidates:
        lines.append(f"None of the {len(candidates)} calls passing the filters has a later expiry and a higher strike "
                     "than the short call: nothing to roll into.")
    else:
        lines.append(f"No call passes the filters ({state.chain_size} options in the chain): nothing to open or roll into.")
    positions = prompt_positions(state)
    if positions:
        lines.append("Open positions (size < 0: short):")
        lines.append("id symbol size avg mark ask delta dte capt% spot%K rolls")
        for p in positions:
            cost = close_cost(p)
            capt = (1.0 - cost / p.average_price) * 100.0 if p.average_price > 0 else 0.0
            ask = f"{p.ask:.4f}" if p.ask is not None else "-"
            lines.append(
                f"{p.id} {p.instrument_name} {_g(p.size)} {p.average_price:.4f} {p.mark:.4f} {ask} {p.delta:.2f} "
                f"{p.dte:.1f} {capt:.0f} {state.spot / p.strike * 100.0:.1f} {state.history.roll_count.get(p.instrument_name, 0)}"
            )
        shorts = [p.id for p in positions if p.is_short_call]
        if shorts:
            lines.append(f"Short calls open: {', '.join(shorts)} (OPEN not allowed; CLOSE or ROLL one of them, or DO_NOTHING).")
        else:
            lines.append("No short call open: OPEN or DO_NOTHING.")
    else:
        lines.append("No open position: OPEN or DO_NOTHING.")
    prev = previous if previous is not None else state.history.previous_decision
    if prev:
        lines.append(f"Previous decision: {clean_text(prev, PREVIOUS_MAX_CHARS)}")
    if state.history.rejection_note():
        lines.append(clean_text(state.history.rejection_note(), 2 * PREVIOUS_MAX_CHARS))
    return "\n".join(lines)


def build_prompt(state: AgentState, candidates: Sequence[Candidate], settings: Settings,
                 previous: str | None = None) -> list[dict[str, str]]:
    """The chat messages for one decision: rules and limits (system), the state (user)."""
    return [
        {"role": "system", "content": system_prompt(state, settings)},
        {"role": "user", "content": user_prompt(state, candidates, previous)},
    ]


def decision_schema(state: AgentState, candidates: Sequence[Candidate]) -> dict[str, Any]:
    """The strict JSON schema of an answer: the action as an enum, ids as enums of the given ids."""
    cids = [c.id for c in prompt_candidates(candidates, state)]
    pids = [p.id for p in prompt_positions(state) if p.is_short_call]
    return {
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": [a.value for a in ActionType]},
            "candidate_id": _nullable_enum(cids),
            "position_id": _nullable_enum(pids),
            "reasoning": {"type": "string"},
        },
        "required": list(ALLOWED_KEYS),
        "additionalProperties": False,
    }


def _nullable_enum(ids: list[str]) -> dict[str, Any]:
    if not ids:
        return {"type": "null"}
    return {"type": ["string", "null"], "enum": [*ids, None]}


# Validation ----------------------------------------------------------------------------------


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


# The public calls ----------------------------------------------------------------------------

_PLAIN_DECIDE = ("Your reply is parsed by a program: output only the JSON object, no prose, no code fence. "
                 "Keys: action, candidate_id, position_id, reasoning; nothing else.")


async def llm_decide(
    state: AgentState,
    candidates: Sequence[Candidate] | None,
    settings: Settings,
    *,
    client: openai.AsyncOpenAI | None = None,
    previous: str | None = None,
) -> LLMOutcome:
    """Ask the model for one action among the prepared ids; invalid or failed -> DO_NOTHING fallback."""
    cands = state.candidates if candidates is None else candidates
    messages = build_prompt(state, cands, settings, previous)
    raw = await _complete(settings, messages, client=client, max_tokens=DECIDE_MAX_TOKENS,
                          schema=decision_schema(state, cands), plain_hint=_PLAIN_DECIDE)
    if raw.error is not None:
        return LLMOutcome(fallback_action(state, raw.error), _record(settings, raw, parsed=None, valid=False, error=raw.error))
    try:
        obj = extract_json(raw.content or "")
    except ValueError as exc:
        err = f"bad JSON: {exc}: {_short(raw.content, 80)!r}"
        return LLMOutcome(fallback_action(state, err), _record(settings, raw, parsed=None, valid=False, error=err))
    parsed = obj if isinstance(obj, dict) else None
    result = validate_llm_choice(obj, state, cands, settings)
    if isinstance(result, str):
        err = f"invalid answer: {result}"
        return LLMOutcome(fallback_action(state, err), _record(settings, raw, parsed=parsed, valid=False, error=err))
    return LLMOutcome(result, _record(settings, raw, parsed=parsed, valid=True, error=None))


async def choose_action_with_llm(state: AgentState, candidates: Sequence[Candidate] | None, settings: Settings,
                                 **kw: Any) -> Action:
    """Just the action of `llm_decide`."""
    return (await llm_decide(state, candidates, settings, **kw)).action


async def llm_brain(state: AgentState, settings: Settings, *, client: openai.AsyncOpenAI | None = None
                    ) -> tuple[Action, dict[str, Any]]:
    """`llm_decide` in the shape `agent.tick.LLMBrain` expects: (action, record as a dict)."""
    out = await llm_decide(state, state.candidates, settings, client=client)
    return out.action, out.record.to_dict()


async def llm_chat(settings: Settings, system: str, user: str, *, client: openai.AsyncOpenAI | None = None,
                   max_tokens: int = 400) -> LLMTextOutcome:
    """A plain completion (for questions to the agent). Errors come back in the record, never raised."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    raw = await _complete(settings, messages, client=client, max_tokens=max_tokens)
    if raw.finish_reason == "length" and raw.content and raw.content.strip() and raw.error and "length" in raw.error:
        # An answer cut at max_tokens is still worth showing; finish_reason in the record says so.
        raw.error = None
        raw.content = raw.content.rstrip() + "…"
    if raw.error is not None:
        return LLMTextOutcome(None, _record(settings, raw, parsed=None, valid=False, error=raw.error))
    return LLMTextOutcome((raw.content or "").strip(), _record(settings, raw, parsed=None, valid=True, error=None))


# What-if: a question -> a few validated overrides of the state ----------------------------------

# name -> (min, max, meaning). The set `agent.whatif` can apply (see `whatif_command`).
WHATIF_NUMBERS: dict[str, tuple[float, float, str]] = {
    "equity": (0.0, 1_000_000.0, "coin held, absolute (e.g. 0 for 'no BTC')"),
    "spot": (1.0, 100_000_000.0, "index price in USD, absolute"),
    "spot_pct": (-99.0, 1000.0, "index price change in percent (e.g. -10 for a 10% drop)"),
    "iv": (-100.0, 300.0, "implied volatility change in vol points added to every option (e.g. 10)"),
    "dte_shift": (-365.0, 0.0, "days added to every days-to-expiry: time passing is negative (-3 = three days later)"),
    "margin_used_pct": (0.0, 100.0, "margin used in percent, absolute"),
}
WHATIF_CHOICES: dict[str, tuple[str, ...]] = {}  # string-valued overrides (none yet)
WHATIF_KEYS = tuple(WHATIF_NUMBERS) + tuple(WHATIF_CHOICES)


def _plain(v: float) -> str:
    s = f"{v:.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


def whatif_command(overrides: dict[str, float | str]) -> str:
    """Overrides in `agent.whatif.parse_overrides` syntax: `equity=0 spot=-10% iv=+10 days=2 margin=45`."""
    parts = []
    for k, v in overrides.items():
        if k == "spot_pct":
            parts.append(f"spot={'+' if float(v) >= 0 else '-'}{_plain(abs(float(v)))}%")
        elif k == "iv":
            parts.append(f"iv={'+' if float(v) >= 0 else '-'}{_plain(abs(float(v)))}")
        elif k == "dte_shift":
            parts.append(f"days={_plain(-float(v))}")
        elif k == "margin_used_pct":
            parts.append(f"margin={_plain(float(v))}")
        elif isinstance(v, (int, float)):
            parts.append(f"{k}={_plain(float(v))}")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)


def whatif_schema() -> dict[str, Any]:
    props: dict[str, Any] = {k: {"type": ["number", "null"]} for k in WHATIF_NUMBERS}
    for k, choices in WHATIF_CHOICES.items():
        props[k] = {"type": ["string", "null"], "enum": [*choices, None]}
    return {"type": "object", "properties": props, "required": list(WHATIF_KEYS), "additionalProperties": False}


def whatif_prompt(question: str) -> list[dict[str, str]]:
    keys = "\n".join(f"- {k}: {lo:g}..{hi:g}, {meaning}" for k, (lo, hi, meaning) in WHATIF_NUMBERS.items())
    keys += "".join(f"\n- {k}: one of {', '.join(c)}" for k, c in WHATIF_CHOICES.items())
    system = (
        "Turn a what-if question about a covered-call trading agent into overrides of its current state.\n"
        f"Allowed keys (use null for every key the question does not change):\n{keys}\n"
        "Use spot or spot_pct, not both. If the question cannot be expressed with these keys, set every key to null.\n"
        'Answer with one JSON object only, e.g. {"equity": 0, "spot": null, ...}.'
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": clean_text(question, 500)}]


def validate_whatif(obj: Any) -> dict[str, float | str] | str:
    """The overrides an answer stands for (null keys dropped), or why it is rejected."""
    if not isinstance(obj, dict):
        return f"answer is not a JSON object (got {type(obj).__name__})"
    unknown = sorted(str(k) for k in obj if k not in WHATIF_KEYS)
    if unknown:
        return f"unknown override keys {', '.join(_short(k, 30) for k in unknown[:5])} (allowed: {', '.join(WHATIF_KEYS)})"
    out: dict[str, float | str] = {}
    for k, v in obj.items():
        if v is None:
            continue
        if k in WHATIF_CHOICES:
            if not isinstance(v, str) or v not in WHATIF_CHOICES[k]:
                return f"{k} must be one of {', '.join(WHATIF_CHOICES[k])} (got {_short(repr(v), 30)})"
            out[k] = v
            continue
        lo, hi, _ = WHATIF_NUMBERS[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"{k} must be a number (got {_short(repr(v), 30)})"
        if not lo <= v <= hi:
            return f"{k}={v:g} is outside {lo:g}..{hi:g}"
        out[k] = float(v)
    if "spot" in out and "spot_pct" in out:
        return "spot and spot_pct both set: use one"
    if not out:
        return "the question maps to no supported override"
    return out


_PLAIN_WHATIF = "Your reply is parsed by a program: output only the JSON object, no prose, no code fence."


async def llm_whatif_overrides(question: str, settings: Settings, *, client: openai.AsyncOpenAI | None = None
                               ) -> tuple[dict[str, float | str] | None, LLMCallRecord]:
    """Overrides for a what-if question (keys in WHATIF_KEYS), or None with the reason in record.error."""
    raw = await _complete(settings, whatif_prompt(question), client=client, max_tokens=WHATIF_MAX_TOKENS,
                          schema=whatif_schema(), schema_name="whatif_overrides", plain_hint=_PLAIN_WHATIF)
    if raw.error is not None:
        return None, _record(settings, raw, parsed=None, valid=False, error=raw.error)
    try:
        obj = extract_json(raw.content or "")
    except ValueError as exc:
        err = f"bad JSON: {exc}"
        return None, _record(settings, raw, parsed=None, valid=False, error=err)
    parsed = obj if isinstance(obj, dict) else None
    result = validate_whatif(obj)
    if isinstance(result, str):
        return None, _record(settings, raw, parsed=parsed, valid=False, error=f"invalid overrides: {result}")
    return result, _record(settings, raw, parsed=parsed, valid=True, error=None)


__all__ = [
    "LLMCallRecord", "LLMOutcome", "LLMTextOutcome", "MAX_PROMPT_CANDIDATES", "WHATIF_KEYS", "whatif_command",
    "build_prompt", "choose_action_with_llm", "decision_schema", "estimate_tokens", "extract_json", "fallback_action",
    "llm_brain", "llm_chat", "llm_decide", "llm_whatif_overrides", "make_client", "prompt_candidates",
    "validate_llm_choice", "validate_whatif",
]
