"""What a model accepts, learnt from its family and from the server's own 400 answers; its price.

Reasoning families (o1, o3, o4, gpt-5 and later) start with `max_completion_tokens` (reasoning
tokens count against it, so it gets room for them), `reasoning_effort` and no temperature; every
other model starts with `max_tokens` and temperature 0. A 400 (or 422) is classified by its `param`
and `code` fields, then its message: max_tokens unsupported -> max_completion_tokens; temperature
unsupported -> omitted; response_format / json_schema unsupported -> plain-text JSON;
reasoning_effort unsupported -> omitted. Each adaptation is made once, retried once, remembered per
(server, model) for the life of the process, and logged in one line.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..config import Settings

log = logging.getLogger("agent.llm")

# Room for the hidden reasoning on top of the visible answer, by reasoning_effort.
REASONING_HEADROOM = {"none": 1000, "minimal": 1000, "low": 4000, "medium": 12000, "high": 32000}

# USD per million tokens: (input, cached input, output). Longest matching prefix wins; dated
# snapshots ("gpt-4.1-mini-2025-04-14") match their family. LLM_PRICE_IN/OUT_PER_MTOK override.
PRICES: dict[str, tuple[float, float, float]] = {
    "gpt-4.1": (2.00, 0.50, 8.00),
    "gpt-4.1-mini": (0.40, 0.10, 1.60),
    "gpt-4.1-nano": (0.10, 0.025, 0.40),
    "gpt-4o": (2.50, 1.25, 10.00),
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "o1": (15.00, 7.50, 60.00),
    "o1-mini": (1.10, 0.55, 4.40),
    "o3": (2.00, 0.50, 8.00),
    "o3-mini": (1.10, 0.55, 4.40),
    "o4-mini": (1.10, 0.275, 4.40),
    "gpt-5": (1.25, 0.125, 10.00),
    "gpt-5-mini": (0.25, 0.025, 2.00),
    "gpt-5-nano": (0.05, 0.005, 0.40),
}


def base_name(model: str) -> str:
    """`openai/gpt-5-mini` (routers) -> `gpt-5-mini`, lower case."""
    return model.strip().lower().rsplit("/", 1)[-1]


_O_SERIES = re.compile(r"^o(\d+)(?:-|$)")
_GPT_N = re.compile(r"^gpt-(\d+)(?:[.\-]|$)")


def is_reasoning_model(model: str) -> bool:
    """o1, o3, o4-mini, gpt-5, gpt-5-mini, gpt-5.1, gpt-6... (not the gpt-5 *chat* models)."""
    name = base_name(model)
    if _O_SERIES.match(name):
        return True
    m = _GPT_N.match(name)
    return bool(m) and int(m.group(1)) >= 5 and "-chat" not in name


def _row(model: str) -> tuple[float, float, float] | None:
    name = base_name(model)
    return next((PRICES[k] for k in sorted(PRICES, key=len, reverse=True)
                 if name == k or name.startswith(k + "-")), None)


def price(settings: Settings, model: str) -> tuple[float, float, float]:
    """(input, cached input, output) USD per million tokens for the served `model` (or, when it
    is not listed, the configured one; 0 when neither is: a local server costs nothing)."""
    p_in, p_cached, p_out = _row(model) or _row(settings.llm_model_name) or (0.0, 0.0, 0.0)
    if settings.llm_price_in_per_mtok is not None:
        p_in = p_cached = settings.llm_price_in_per_mtok
    if settings.llm_price_out_per_mtok is not None:
        p_out = settings.llm_price_out_per_mtok
    return p_in, p_cached, p_out


def cost_usd(settings: Settings, model: str, tokens_in: int, tokens_out: int, cached: int | None) -> float:
    p_in, p_cached, p_out = price(settings, model)
    cached = min(max(cached or 0, 0), tokens_in)
    return round(((tokens_in - cached) * p_in + cached * p_cached + tokens_out * p_out) / 1_000_000, 8)


@dataclass(frozen=True)
class Caps:
    """The parameters one (server, model) takes."""

    token_param: str = "max_tokens"  # or "max_completion_tokens"
    temperature: bool = True  # send temperature 0
    structured: bool = True  # response_format json_schema
    reasoning_effort: str | None = None  # sent when set
    reasoning: bool = False  # leave room for reasoning tokens in the token limit


_LEARNED: dict[tuple[str, str], Caps] = {}


def initial_caps(settings: Settings) -> Caps:
    if is_reasoning_model(settings.llm_model_name):
        return Caps(token_param="max_completion_tokens", temperature=False, reasoning=True,
                    reasoning_effort=settings.llm_reasoning_effort)
    return Caps()


def caps_for(base_url: str, settings: Settings) -> Caps:
    return _LEARNED.get((base_url, settings.llm_model_name)) or initial_caps(settings)


def token_limit(caps: Caps, visible: int, settings: Settings) -> int:
    if not caps.reasoning:
        return visible
    return visible + REASONING_HEADROOM.get(caps.reasoning_effort or settings.llm_reasoning_effort, 4000)


def request_params(caps: Caps, settings: Settings, *, max_tokens: int, schema: dict[str, Any] | None,
                   schema_name: str) -> dict[str, Any]:
    """The keyword arguments of one chat.completions.create call (besides model and messages)."""
    out: dict[str, Any] = {caps.token_param: token_limit(caps, max_tokens, settings)}
    if caps.temperature:
        out["temperature"] = 0
    if caps.reasoning_effort:
        out["reasoning_effort"] = caps.reasoning_effort
    if schema is not None and caps.structured:
        out["response_format"] = {"type": "json_schema",
                                  "json_schema": {"name": schema_name, "strict": True, "schema": schema}}
    return out


_UNSUPPORTED_CODES = {"unsupported_parameter", "unsupported_value"}
_UNSUPPORTED_WORDS = ("not supported", "unsupported", "does not support", "not support", "not allowed",
                      "is not available", "not permitted", "unrecognized", "unknown parameter", "extra inputs")


def classify_rejection(exc: Any) -> str | None:
    """Which parameter a 400/422 refuses: max_tokens | max_completion_tokens | temperature |
    response_format | reasoning_effort, or None when it is about something else."""
    if getattr(exc, "status_code", None) not in (400, 422):
        return None
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else body
    text = f"{getattr(exc, 'message', '')} {message or ''}".lower()
    param = str(getattr(exc, "param", None) or "").lower()
    code = str(getattr(exc, "code", None) or "").lower()
    unsupported = code in _UNSUPPORTED_CODES or any(w in text for w in _UNSUPPORTED_WORDS)
    for name in ("max_completion_tokens", "max_tokens", "temperature", "reasoning_effort"):
        if param == name or param.endswith("." + name):
            return name if unsupported else None
    if param.startswith("response_format") or "json_schema" in param:
        return "response_format"
    if param:
        return None  # the server named another parameter: not one we can change
    # No param field (many compatible servers): the message, then.
    if "max_tokens" in text and ("max_completion_tokens" in text or unsupported):
        return "max_tokens"
    if "max_completion_tokens" in text and unsupported:
        return "max_completion_tokens"
    if "temperature" in text and unsupported:
        return "temperature"
    if "reasoning_effort" in text and unsupported:
        return "reasoning_effort"
    if any(k in text for k in ("response_format", "json_schema", "structured output", "response format")):
        return "response_format"
    return None


def adapt(caps: Caps, kind: str, model: str) -> tuple[Caps, str] | None:
    """The caps without what the server refused, and a sentence saying what changed; None when
    there is nothing left to change (so a refusal is never retried in a loop)."""
    if kind == "max_tokens" and caps.token_param == "max_tokens":
        # Only reasoning models say this: give room for reasoning and drop temperature with it.
        return (replace(caps, token_param="max_completion_tokens", reasoning=True, temperature=False),
                f"max_tokens not supported by {model}: sent max_completion_tokens (with room for reasoning) "
                "and no temperature")
    if kind == "max_completion_tokens" and caps.token_param == "max_completion_tokens":
        return replace(caps, token_param="max_tokens"), f"max_completion_tokens not supported by {model}: sent max_tokens"
    if kind == "temperature" and caps.temperature:
        return replace(caps, temperature=False), f"temperature 0 not supported by {model}: sent no temperature"
    if kind == "reasoning_effort" and caps.reasoning_effort:
        return replace(caps, reasoning_effort=None), f"reasoning_effort not supported by {model}: not sent"
    if kind == "response_format" and caps.structured:
        return replace(caps, structured=False), f"response_format not supported by {model}: asked for plain-text JSON"
    return None


def safe_url(url: str) -> str:
    """The server's address without user:password@ or a query string (fit for a log line)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def learn(base_url: str, model: str, caps: Caps, change: str) -> None:
    _LEARNED[(base_url, model)] = caps
    log.warning("LLM %s at %s: %s (remembered for this process)", model, safe_url(base_url), change)


def forget_all() -> None:
    """Tests only: start from the families again."""
    _LEARNED.clear()
