"""Vocabulary, returned row values and small helpers of the store (no I/O)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from pydantic import BaseModel

from agent.models import Action, Decision




# --- vocabulary -------------------------------------------------------------------------------

STATUSES = ("pending", "approved", "executing", "executed", "failed", "rejected", "expired",
            "superseded", "cancelled", "blocked")
FINAL_STATUSES = frozenset({"executed", "failed", "rejected", "expired", "superseded", "cancelled", "blocked"})

# The proposal state machine (DESIGN.md). `transition()` refuses any other move with ValueError.
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"approved", "rejected", "expired", "superseded", "cancelled"}),
    "approved": frozenset({"executing", "blocked"}),
    "executing": frozenset({"executed", "failed"}),
}

# The first migration's append-only tables; later ones add theirs (order_events: store/orders.py).
V1_APPEND_ONLY_TABLES = ("events", "votes", "decisions", "executions", "orders", "questions", "answers",
                         "llm_calls", "settings_changes", "config_snapshots")
APPEND_ONLY_TABLES = V1_APPEND_ONLY_TABLES + ("order_events",)
TABLES = APPEND_ONLY_TABLES + ("proposals", "flags", "messages", "outbox", "order_legs", "ledger_fills",
                               "ledger_settlements", "account_snapshots", "bot_runs", "notices_sent")

LABEL_PREFIX = "cc-"
GENESIS_HASH = "0" * 64
REDACTED = "***"
DEFAULT_BUSY_TIMEOUT = 5.0
PAGE_SIZE = 8192


def label_for(proposal_id: int, instance_id: str | None = None) -> str:
    """The exchange order label of a proposal (derived from its id; used to find it after a crash).

    `instance_id` is this database's own random tag: a new database against the same exchange
    account must never find an old database's `cc-1` and take it for its own."""
    return f"{LABEL_PREFIX}{instance_id}-{proposal_id}" if instance_id else f"{LABEL_PREFIX}{proposal_id}"


class StoreUnavailableError(RuntimeError):
    """The database cannot be reached (a PostgreSQL server down or refusing us); one line, no password."""


class StoreBusyError(RuntimeError):
    """The write lock could not be had within the busy timeout (another writer holds it)."""


# --- values returned --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProposalRow:
    id: int
    decision_id: int | None
    created_at: datetime
    expires_at: datetime
    underlying: str
    action: str  # ActionType value
    symbol: str | None
    roll_from: str | None
    size: float | None
    approvals_required: int
    label: str
    status: str
    status_reason: str | None
    decided_by: str | None  # who moved it out of pending
    decided_at: datetime | None
    updated_at: datetime
    action_json: str  # the full Action, as proposed
    approval_mode: str = "manual"  # the mode it was made in: only then may `auto` approve it

    def to_action(self) -> Action:
        return Action.model_validate_json(self.action_json)


@dataclass(frozen=True)
class VoteRow:
    id: int
    proposal_id: int
    user: str
    channel: str
    vote: str  # approve | reject
    reason: str | None
    ts: datetime
    person: str | None = None  # who counts: a person of PEOPLE_FILE, or the identity `channel:id`


@dataclass(frozen=True)
class VoteOutcome:
    """What `vote_and_maybe_approve` did. kind: recorded | already_voted | not_pending | expired |
    approved | rejected | unknown (no such proposal). status: the proposal's status afterwards."""

    kind: str
    proposal_id: int
    status: str | None
    approvals: int = 0
    required: int = 1


@dataclass(frozen=True)
class MessageRef:
    proposal_id: int
    channel: str
    chat_id: str
    message_id: str
    updated_at: datetime


@dataclass(frozen=True)
class OutboxItem:
    id: int
    channel: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_error: str | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    first_broken_id: int | None
    reason: str
    head_hash: str = GENESIS_HASH  # hash of the last event: keep a copy elsewhere to detect truncation


# --- small helpers ----------------------------------------------------------------------------


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime) -> str:
    """Fixed-width ISO-8601 UTC text (sorts as text)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _ts_param(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return iso(value)


def _json_default(o: Any) -> Any:
    if isinstance(o, BaseModel):
        return o.model_dump(mode="json", exclude_none=True)
    if isinstance(o, datetime):
        return iso(o)
    if isinstance(o, Enum):
        return o.value
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return str(o)


def _strip_none(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _strip_none(v) for k, v in o.items() if v is not None}
    if isinstance(o, (list, tuple)):
        return [_strip_none(v) for v in o]
    return o


def dumps(o: Any) -> str:
    """Minified JSON (the storage form)."""
    return json.dumps(o, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def canonical(o: Any) -> str:
    """Canonical JSON (sorted keys, minified): the form that is hashed."""
    return json.dumps(o, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def parse_ref(ref: int | str | None) -> tuple[int | None, int | None]:
    """(proposal_id, decision_id) from a chat reference: 12, "12", "#12", "cc-12" -> proposal 12;
    "d34" -> decision 34; anything else -> (None, None)."""
    if ref is None or isinstance(ref, bool):
        return None, None
    fits = lambda n: n if 0 <= n <= 2**63 - 1 else None  # noqa: E731 - SQLite's integers; bigger names no row
    if isinstance(ref, int):
        return fits(ref), None
    r = str(ref).strip().lstrip("#").lower()
    if r.startswith(LABEL_PREFIX):
        r = r[len(LABEL_PREFIX):]
    if r.isdigit():
        return fits(int(r)), None
    if r[:1] == "d" and r[1:].isdigit():
        return None, fits(int(r[1:]))
    return None, None


def _first(rec: dict[str, Any], *keys: str) -> Any:
    """The first of `keys` whose value is not None."""
    return next((rec[k] for k in keys if rec.get(k) is not None), None)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _model_json(m: BaseModel | None) -> str | None:
    return None if m is None else m.model_dump_json(exclude_none=True)


_SECRET_PARTS = frozenset({"token", "secret", "key", "password", "passwd", "pwd", "apikey", "credential",
                           "credentials", "passphrase"})


def is_secret_key(name: str) -> bool:
    """A key name that holds a secret: a word of it is token/secret/key/password/... (so
    `openai_api_key`, `TELEGRAM_BOT_TOKEN` and `client_secret` are; `max_tokens` is not)."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name)).lower())
    return any(w in _SECRET_PARTS for w in words) or "password" in name.lower() or "secret" in name.lower()


def _is_redacted(value: Any) -> bool:
    return value is None or value == "" or value == REDACTED or value is False


def assert_no_secrets(obj: Any, where: str = "config") -> None:
    """Raise ValueError if a secret-looking key carries a value that is not redacted ('***')."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if is_secret_key(k) and not isinstance(v, (dict, list, tuple)) and not _is_redacted(v):
                raise ValueError(f"refusing to store {where}: {k!r} looks like a secret and is not redacted "
                                 f"(pass settings.redacted(), where secrets are '***')")
            assert_no_secrets(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            assert_no_secrets(v, where)


def serialize_decision(decision: Decision, checked_config: str | None = None) -> dict[str, Any]:
    """The column values of one decision row (config as `config_json`, stored apart). This is the
    exact serialization `record_decision` uses (the benchmark builds its bulk rows with it).
    `checked_config`: a config_json already checked for secrets (the same settings as the last
    tick's need not be walked again)."""
    config_json = canonical(_strip_none(decision.config_snapshot)) if decision.config_snapshot else None
    if config_json is None or config_json != checked_config:
        assert_no_secrets(decision.config_snapshot, "config snapshot")
    proposed = _model_json(decision.proposed_action)
    final = _model_json(decision.final_action)
    fa = decision.final_action
    return {
        "ts": iso(decision.timestamp),
        "underlying": decision.underlying,
        "decision_source": decision.decision_source,
        "proposed_action": decision.proposed_action.action.value,
        "final_action": fa.action.value,
        "final_symbol": fa.symbol,
        "risk_allowed": int(decision.risk_check.allowed),
        "requests": decision.requests,
        "credits": decision.credits,
        "state_json": dumps(_strip_none(decision.state)),
        "proposed_json": proposed,
        "risk_json": _model_json(decision.risk_check),
        "final_json": None if final == proposed else final,
        "execution_json": _model_json(decision.execution),
        "shadow_json": _model_json(decision.shadow_action),
        "timings_json": dumps(decision.timings_ms) if decision.timings_ms else None,
        "config_json": config_json,
    }


def _proposal(r: dict[str, Any]) -> ProposalRow:
    return ProposalRow(
        id=r["id"], decision_id=r["decision_id"], created_at=parse_ts(r["created_at"]),
        expires_at=parse_ts(r["expires_at"]), underlying=r["underlying"], action=r["action"], symbol=r["symbol"],
        roll_from=r["roll_from"], size=r["size"], approvals_required=r["approvals_required"], label=r["label"],
        status=r["status"], status_reason=r["status_reason"], decided_by=r["decided_by"],
        decided_at=parse_ts(r["decided_at"]), updated_at=parse_ts(r["updated_at"]), action_json=r["action_json"],
        approval_mode=r.get("approval_mode") or "manual",
    )


def _vote(r: dict[str, Any]) -> VoteRow:
    return VoteRow(id=r["id"], proposal_id=r["proposal_id"], user=r["user"], channel=r["channel"], vote=r["vote"],
                   reason=r["reason"], ts=parse_ts(r["ts"]), person=r.get("person"))


def _outbox(r: dict[str, Any]) -> OutboxItem:
    return OutboxItem(id=r["id"], channel=r["channel"], payload=json.loads(r["payload_json"]), attempts=r["attempts"],
                      created_at=parse_ts(r["created_at"]), next_attempt_at=parse_ts(r["next_attempt_at"]),
                      last_error=r["last_error"], delivered_at=parse_ts(r["delivered_at"]))


def _event_dict(r: dict[str, Any]) -> dict[str, Any]:
    out = dict(r)
    out["data"] = _loads(out.pop("data_json"))
    return out


_DECISION_JSON = {"state_json": "state", "proposed_json": "proposed", "risk_json": "risk", "final_json": "final",
                  "execution_json": "execution", "shadow_json": "shadow", "timings_json": "timings",
                  "config_json": "config"}


def _decision_dict(r: dict[str, Any], full: bool = True) -> dict[str, Any]:
    out = {k: v for k, v in r.items() if k not in _DECISION_JSON}
    out["risk_allowed"] = bool(out["risk_allowed"])
    if full:
        for col, key in _DECISION_JSON.items():
            if col in r:
                out[key] = _loads(r[col])
        if out.get("final") is None:
            out["final"] = out.get("proposed")
    return out


def _hash_event(prev_hash: str, row: dict[str, Any]) -> str:
    content = {k: row[k] for k in ("id", "ts", "kind", "proposal_id", "decision_id", "actor", "channel", "reason",
                                   "data_json")}
    return hashlib.sha256((prev_hash + canonical(content)).encode()).hexdigest()


def _status_tuple(status: str | Sequence[str]) -> tuple[str, ...]:
    statuses = (status,) if isinstance(status, str) else tuple(status)
    for s in statuses:
        if s not in STATUSES:
            raise ValueError(f"unknown proposal status {s!r} (one of {', '.join(STATUSES)})")
    return statuses


_LLM_KEYS = {"model", "mode", "prompt", "raw_response", "parsed", "parsed_json", "valid", "error", "tokens_in",
             "tokens_out", "latency_ms", "cost_usd", "ts", "decision_id", "prompt_tokens", "completion_tokens",
             "reasoning_tokens", "cached_tokens"}
LLM_MODES = ("drive", "shadow", "ask")

_TS_COLUMN = {"decisions": "ts", "proposals": "created_at", "votes": "ts", "events": "ts", "executions": "ts",
              "orders": "ts", "questions": "ts", "answers": "ts", "llm_calls": "ts", "settings_changes": "ts",
              "config_snapshots": "first_seen", "flags": "updated_at", "messages": "created_at",
              "outbox": "created_at", "order_events": "ts", "order_legs": "updated_at",
              "ledger_fills": "ts", "ledger_settlements": "ts", "account_snapshots": "ts", "bot_runs": "started_at",
              "notices_sent": "ts"}

