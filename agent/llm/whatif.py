"""What-if by question: a few validated overrides of the state, asked of the model as JSON."""

from __future__ import annotations

import math
from typing import Any

import openai

from ..config import Settings
from .call import complete, make_record
from .parse import clean_text, extract_json
from .records import LLMCallRecord
from .records import short as _short

WHATIF_MAX_TOKENS = 200

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
    raw = await complete(settings, whatif_prompt(question), client=client, max_tokens=WHATIF_MAX_TOKENS,
                          schema=whatif_schema(), schema_name="whatif_overrides", plain_hint=_PLAIN_WHATIF)
    if raw.error is not None:
        return None, make_record(settings, raw, parsed=None, valid=False, error=raw.error)
    try:
        obj = extract_json(raw.content or "")
    except ValueError as exc:
        err = f"bad JSON: {exc}"
        return None, make_record(settings, raw, parsed=None, valid=False, error=err, reason="bad JSON")
    parsed = obj if isinstance(obj, dict) else None
    result = validate_whatif(obj)
    if isinstance(result, str):
        return None, make_record(settings, raw, parsed=parsed, valid=False, error=f"invalid overrides: {result}",
                                 reason="invalid overrides")
    return result, make_record(settings, raw, parsed=parsed, valid=True, error=None)

