"""The one chat-completion call every LLM use goes through: client, parameters, adaptation, record.

Never raises: a timeout, an HTTP error, a refusal or an empty answer comes back in `_Raw.error`.
Error texts carry the server's message and status, never a header or a key.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import openai

from ..config import Settings
from . import caps as capabilities
from .records import LLMCallRecord, estimate_tokens, int_or_none, messages_text, short

RAW_MAX_CHARS = 4000  # what is kept of an answer in the record


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
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None
    error: str | None = None
    reason: str | None = None  # short cause of a failure
    attempts: int = 0
    structured: bool = False
    latency_ms: float = 0.0
    adaptations: list[str] = field(default_factory=list)
    request: dict[str, Any] = field(default_factory=dict)


def make_client(settings: Settings) -> openai.AsyncOpenAI:
    """The client every call uses: the settings' timeout, no hidden retries."""
    return openai.AsyncOpenAI(
        api_key=settings.secret("openai_api_key") or "not-needed",
        base_url=settings.openai_base_url,  # None: the SDK's default or OPENAI_BASE_URL
        timeout=settings.llm_timeout_sec,
        max_retries=0,
    )


def _error_text(exc: BaseException, timeout: float) -> tuple[str, str]:
    """(one-line error, short stable reason)."""
    if isinstance(exc, (openai.APITimeoutError, TimeoutError, asyncio.TimeoutError)):
        return f"timeout: no answer within {timeout:g} s", "timeout"
    if isinstance(exc, openai.RateLimitError):
        return f"rate limited (HTTP 429): {short(exc.message)}", "rate limited (HTTP 429)"
    if isinstance(exc, openai.APIStatusError):
        kind = "server error" if exc.status_code >= 500 else "request refused"
        return f"{kind} (HTTP {exc.status_code}): {short(exc.message)}", f"{kind} (HTTP {exc.status_code})"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection error: {short(exc.message)} ({short(exc.__cause__ or '', 120)})", "connection error"
    if isinstance(exc, openai.APIResponseValidationError):
        return f"invalid response from the server: {short(exc.message)}", "invalid response from the server"
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid response from the server: not JSON ({short(exc)})", "invalid response from the server"
    return f"unexpected error: {type(exc).__name__}: {short(exc)}", f"unexpected error: {type(exc).__name__}"


def _with_hint(messages: list[dict[str, Any]], hint: str) -> list[dict[str, Any]]:
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0]['content']}\n{hint}"
    else:
        out.insert(0, {"role": "system", "content": hint})
    return out


async def complete(
    settings: Settings,
    messages: list[dict[str, Any]],
    *,
    client: openai.AsyncOpenAI | None,
    max_tokens: int,
    schema: dict[str, Any] | None = None,
    schema_name: str = "answer",
    plain_hint: str = "",
) -> _Raw:
    """One chat completion under the LLM_TIMEOUT_SEC deadline (which bounds the whole call).

    The parameters come from what the (server, model) is known to take (`caps`). A 400/422 that
    refuses one of them is adapted to once and asked again once; without structured output the
    answer is asked for as plain-text JSON (`plain_hint` appended to the system message).
    """
    timeout = settings.llm_timeout_sec
    model = settings.llm_model_name
    raw = _Raw(model=model, prompt=messages_text(messages))
    own = client is None
    t0 = time.perf_counter()
    try:
        if client is None:
            client = make_client(settings)
        base_url = str(client.base_url)
        caps = capabilities.caps_for(base_url, settings)
        tried: set[str] = set()
        async with asyncio.timeout(timeout):
            while True:
                structured = schema is not None and caps.structured
                sent = messages if structured or not plain_hint or schema is None else _with_hint(messages, plain_hint)
                params = capabilities.request_params(caps, settings, max_tokens=max_tokens,
                                                     schema=schema, schema_name=schema_name)
                raw.attempts += 1
                raw.structured = structured
                raw.prompt = messages_text(sent)
                raw.request = {k: v for k, v in params.items() if k != "response_format"}
                raw.request["response_format"] = "json_schema" if "response_format" in params else None
                try:
                    completion = await client.chat.completions.create(
                        model=model, messages=sent, timeout=timeout, **params)  # type: ignore[arg-type]
                except openai.APIStatusError as exc:
                    kind = capabilities.classify_rejection(exc)
                    step = capabilities.adapt(caps, kind, model) if kind and kind not in tried else None
                    if step is None:
                        raise
                    tried.add(kind)  # type: ignore[arg-type]
                    caps, change = step
                    capabilities.learn(base_url, model, caps, change)
                    raw.adaptations.append(change)
                    continue
                break
        _read_completion(raw, completion)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded fallback
        raw.error, raw.reason = _error_text(exc, timeout)
        if raw.adaptations:
            raw.error = f"{raw.error} (after: {'; '.join(raw.adaptations)})"
        if not raw.raw:
            body = getattr(exc, "body", None)
            raw.raw = short(json.dumps(body) if isinstance(body, (dict, list)) else (body or exc), 1000)
    finally:
        raw.latency_ms = round((time.perf_counter() - t0) * 1000.0, 1)
        if own and client is not None:
            try:
                await client.close()
            except Exception:  # noqa: BLE001 - closing must not mask the outcome
                pass
    return raw


def _read_completion(raw: _Raw, completion: Any) -> None:
    usage = getattr(completion, "usage", None)
    if usage is not None:
        raw.usage_in = int_or_none(getattr(usage, "prompt_tokens", None))
        raw.usage_out = int_or_none(getattr(usage, "completion_tokens", None))
        raw.reasoning_tokens = int_or_none(getattr(getattr(usage, "completion_tokens_details", None),
                                                   "reasoning_tokens", None))
        raw.cached_tokens = int_or_none(getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None))
    raw.model = getattr(completion, "model", None) or raw.model
    choices = getattr(completion, "choices", None) or []
    if not choices:
        raw.error = raw.reason = "no choices in the answer"
        raw.raw = short(_dump(completion), 1000)
        return
    choice = choices[0]
    raw.finish_reason = getattr(choice, "finish_reason", None)
    msg = getattr(choice, "message", None)
    content = getattr(msg, "content", None)
    refusal = getattr(msg, "refusal", None)
    tool_calls = getattr(msg, "tool_calls", None)
    raw.content = content if isinstance(content, str) else None
    if refusal:
        raw.raw = str(refusal)[:RAW_MAX_CHARS]
        raw.error, raw.reason = f"refusal: {short(refusal)}", "refusal"
    elif tool_calls:
        raw.raw = short(json.dumps([_dump(t) for t in tool_calls]), 2000)
        raw.error = raw.reason = "tool calls instead of content"
    elif raw.finish_reason == "length":
        raw.raw = (raw.content or "")[:RAW_MAX_CHARS]
        raw.error = "answer cut off (finish_reason=length)"
        if not (raw.content or "").strip() and raw.reasoning_tokens:
            raw.error += f": all {raw.reasoning_tokens} tokens went to reasoning"
        raw.reason = "answer cut off (finish_reason=length)"
    elif raw.finish_reason == "content_filter":
        raw.raw = (raw.content or "")[:RAW_MAX_CHARS]
        raw.error = "answer withheld by the content filter (finish_reason=content_filter)"
        raw.reason = "content filter"
    elif raw.content is None or not raw.content.strip():
        raw.raw = raw.content or ""
        raw.error = raw.reason = "empty content"
    else:
        raw.raw = raw.content if len(raw.content) <= RAW_MAX_CHARS else (
            raw.content[:RAW_MAX_CHARS] + f"… [{len(raw.content):,} characters in all]")


def _dump(obj: Any) -> Any:
    return obj.model_dump() if hasattr(obj, "model_dump") else obj


def make_record(settings: Settings, raw: _Raw, *, parsed: dict[str, Any] | None, valid: bool,
                error: str | None, reason: str | None = None) -> LLMCallRecord:
    estimated = raw.usage_in is None or raw.usage_out is None
    t_in = raw.usage_in if raw.usage_in is not None else estimate_tokens(raw.prompt)
    t_out = raw.usage_out if raw.usage_out is not None else estimate_tokens(raw.raw if raw.content is not None else "")
    if not valid and reason is None:
        reason = raw.reason or (error.split(":", 1)[0] if error else None)
    if not valid and raw.adaptations and reason:
        reason = f"{reason} after: {raw.adaptations[-1]}"
    return LLMCallRecord(
        model=raw.model, prompt=raw.prompt, raw_response=raw.raw, parsed=parsed, valid=valid, error=error,
        tokens_in=t_in, tokens_out=t_out, latency_ms=raw.latency_ms,
        cost_usd=capabilities.cost_usd(settings, raw.model, t_in, t_out, raw.cached_tokens),
        finish_reason=raw.finish_reason, tokens_estimated=estimated, attempts=raw.attempts, structured=raw.structured,
        reasoning_tokens=raw.reasoning_tokens, cached_tokens=raw.cached_tokens, adaptations=tuple(raw.adaptations),
        reason=reason if not valid else None, request=dict(raw.request),
    )
