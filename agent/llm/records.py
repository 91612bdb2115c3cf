"""What one LLM call leaves behind: its record for the audit trail, and the outcomes callers get."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from .. import models


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
    attempts: int = 1  # HTTP requests made (more when the server refused a parameter and was asked again)
    structured: bool = True  # the answer was asked for with a JSON schema response_format
    reasoning_tokens: int | None = None  # part of tokens_out (reasoning models), when the server says
    cached_tokens: int | None = None  # part of tokens_in served from the prompt cache, when the server says
    adaptations: tuple[str, ...] = ()  # parameters changed after a 400 ("max_tokens not supported by ...: ...")
    reason: str | None = None  # a fallback's short, stable cause (for "most common reason" alerts)
    request: dict[str, Any] = field(default_factory=dict)  # the parameters sent (no messages, no secret)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LLMOutcome:
    action: models.Action
    record: LLMCallRecord


@dataclass(frozen=True)
class LLMTextOutcome:
    text: str | None  # None when the call failed: record.error says why
    record: LLMCallRecord


def estimate_tokens(text: str) -> int:
    """About four bytes per token: good enough for budgets and for servers that send no usage."""
    n = len(text.encode("utf-8"))
    return 0 if n == 0 else max(1, math.ceil(n / 4))


def messages_text(messages: Sequence[dict[str, Any]]) -> str:
    return "\n\n".join(f"[{m.get('role')}]\n{m.get('content')}" for m in messages)


def short(text: Any, n: int = 200) -> str:
    """One line of at most n characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None
