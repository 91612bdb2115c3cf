"""The one SQLite store (through sqlite-utils): schema, migrations, writes, review queries, audit chain.

Concurrency. One file in WAL mode, shared by the bot's process (an asyncio loop plus threads) and
short-lived CLI processes (`chatops approve 12`). Every write goes through `Store.write()`:
an in-process `threading.RLock`, then `BEGIN IMMEDIATE` ... `COMMIT`, so the write lock is taken
before anything is read and a compare-and-swap can never lose an update (sqlite-utils' `atomic()`
opens a deferred transaction, which can fail or lose writes when two writers race). Waiting is
bounded by `busy_timeout`; past it, `StoreBusyError("database is locked: ...")`. Reads are plain
queries under the same in-process lock (one connection, shared across threads).

Audit. `events`, `votes`, `decisions`, `executions`, `orders`, `questions`, `answers`,
`llm_calls`, `settings_changes` and `config_snapshots` refuse UPDATE and DELETE (triggers).
Proposals are never deleted and only their status fields change, through compare-and-swap.
Each event row carries `hash = sha256(prev_hash + canonical JSON of its content)`;
`verify_chain()` recomputes the chain and names the first broken row.

Compactness of a decision row (a tick every 5 minutes, 105k a year): JSON is minified with nulls
dropped; `final_json` is NULL when the final action equals the proposed one; the config snapshot
is stored once per distinct content in `config_snapshots` (decisions.config_id). The view
`decisions_full` puts `final_json` and `config_json` back for ad-hoc SQL.

Timestamps are ISO-8601 UTC text with a fixed width (`2026-11-25T12:00:00.000000Z`), so they
sort as text. Naive datetimes passed in are taken as UTC.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlite_utils import Database

from agent.models import Action, ActionType, Decision, ExecutionResult, PositionHistory, RiskResult

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

APPEND_ONLY_TABLES = ("events", "votes", "decisions", "executions", "orders", "questions", "answers",
                      "llm_calls", "settings_changes", "config_snapshots")
TABLES = APPEND_ONLY_TABLES + ("proposals", "flags", "messages", "outbox")

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
    if isinstance(ref, int):
        return ref, None
    r = str(ref).strip().lstrip("#").lower()
    if r.startswith(LABEL_PREFIX):
        r = r[len(LABEL_PREFIX):]
    if r.isdigit():
        return int(r), None
    if r[:1] == "d" and r[1:].isdigit():
        return None, int(r[1:])
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


def serialize_decision(decision: Decision) -> dict[str, Any]:
    """The column values of one decision row (config as `config_json`, stored apart). This is the
    exact serialization `record_decision` uses (the benchmark builds its bulk rows with it)."""
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
        "config_json": canonical(_strip_none(decision.config_snapshot)) if decision.config_snapshot else None,
    }


DECISION_COLUMNS = ("ts", "underlying", "decision_source", "proposed_action", "final_action", "final_symbol",
                    "risk_allowed", "requests", "credits", "config_id", "state_json", "proposed_json", "risk_json",
                    "final_json", "execution_json", "shadow_json", "timings_json")


# --- schema and migrations --------------------------------------------------------------------
#
# sqlite-utils 4.2 ships `sqlite_utils.migrations.Migrations`, but it works out what is pending
# outside the transaction and applies under a deferred BEGIN, so two processes opening a fresh
# file at once could both run migration 1. Ours: an ordered list of functions, a `_migrations`
# table (version, name, applied_at) mirrored in PRAGMA user_version; each migration runs once,
# in order, inside BEGIN IMMEDIATE, and re-checks the version after taking the write lock.


def _append_only_triggers(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, 'append-only table: {table}'); END",
        f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, 'append-only table: {table}'); END",
    ]


_STATUS_CHECK = ", ".join(f"'{s}'" for s in STATUSES)

_V1_CORE = [
    """CREATE TABLE config_snapshots (
        id INTEGER PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,           -- sha256 of config_json (canonical)
        config_json TEXT NOT NULL,
        first_seen TEXT NOT NULL)""",
    """CREATE TABLE decisions (
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        underlying TEXT NOT NULL,
        decision_source TEXT NOT NULL,
        proposed_action TEXT NOT NULL,
        final_action TEXT NOT NULL,
        final_symbol TEXT,
        risk_allowed INTEGER NOT NULL CHECK (risk_allowed IN (0, 1)),
        requests INTEGER NOT NULL DEFAULT 0,
        credits INTEGER NOT NULL DEFAULT 0,
        config_id INTEGER REFERENCES config_snapshots(id),
        state_json TEXT NOT NULL,
        proposed_json TEXT NOT NULL,
        risk_json TEXT NOT NULL,
        final_json TEXT,                     -- NULL: the same as proposed_json
        execution_json TEXT,
        shadow_json TEXT,
        timings_json TEXT)""",
    f"""CREATE TABLE proposals (
        id INTEGER PRIMARY KEY,
        decision_id INTEGER REFERENCES decisions(id),
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        underlying TEXT NOT NULL,
        action TEXT NOT NULL,
        symbol TEXT,
        roll_from TEXT,
        size REAL,
        approvals_required INTEGER NOT NULL CHECK (approvals_required >= 1),
        label TEXT UNIQUE,
        status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ({_STATUS_CHECK})),
        status_reason TEXT,
        decided_by TEXT,
        decided_at TEXT,
        updated_at TEXT NOT NULL,
        action_json TEXT NOT NULL)""",
    "CREATE TRIGGER proposals_no_delete BEFORE DELETE ON proposals "
    "BEGIN SELECT RAISE(ABORT, 'proposals are never deleted'); END",
    "CREATE TRIGGER proposals_immutable BEFORE UPDATE OF id, decision_id, created_at, expires_at, underlying, "
    "action, symbol, roll_from, size, approvals_required, action_json ON proposals "
    "BEGIN SELECT RAISE(ABORT, 'proposal content is immutable: only its status changes'); END",
    "CREATE TRIGGER proposals_label_once BEFORE UPDATE OF label ON proposals "
    "WHEN OLD.label IS NOT NULL AND NEW.label IS NOT OLD.label "
    "BEGIN SELECT RAISE(ABORT, 'a proposal label is set once'); END",
    """CREATE TABLE votes (
        id INTEGER PRIMARY KEY,
        proposal_id INTEGER NOT NULL REFERENCES proposals(id),
        user TEXT NOT NULL,
        channel TEXT NOT NULL,
        vote TEXT NOT NULL CHECK (vote IN ('approve', 'reject')),
        reason TEXT,
        ts TEXT NOT NULL,
        UNIQUE (proposal_id, user))""",
    # No foreign keys on events: the log may name ids that do not exist (a vote on #999).
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        kind TEXT NOT NULL,
        proposal_id INTEGER,
        decision_id INTEGER,
        actor TEXT NOT NULL,
        channel TEXT NOT NULL,
        reason TEXT,
        data_json TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL)""",
    """CREATE TABLE executions (
        id INTEGER PRIMARY KEY,
        proposal_id INTEGER NOT NULL REFERENCES proposals(id),
        ts TEXT NOT NULL,
        status TEXT NOT NULL,
        dry_run INTEGER NOT NULL,
        message TEXT,
        error_code INTEGER,
        result_json TEXT NOT NULL)""",
    """CREATE TABLE orders (
        id INTEGER PRIMARY KEY,
        execution_id INTEGER NOT NULL REFERENCES executions(id),
        proposal_id INTEGER NOT NULL REFERENCES proposals(id),
        ts TEXT NOT NULL,
        order_id TEXT,
        instrument TEXT NOT NULL,
        side TEXT NOT NULL,
        amount REAL NOT NULL,
        price REAL,
        label TEXT,
        order_type TEXT,
        reduce_only INTEGER NOT NULL DEFAULT 0,
        order_state TEXT,
        filled_amount REAL,
        average_price REAL,
        error_code INTEGER,
        error_message TEXT,
        reused INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE questions (
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        user TEXT NOT NULL,
        channel TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('why', 'ask', 'whatif')),
        text TEXT NOT NULL,
        ref TEXT,                            -- the reference as typed ("12", "#12", "d34")
        proposal_id INTEGER,
        decision_id INTEGER)""",
    """CREATE TABLE answers (
        id INTEGER PRIMARY KEY,
        question_id INTEGER NOT NULL REFERENCES questions(id),
        ts TEXT NOT NULL,
        text TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('db', 'llm', 'rules')))""",
    """CREATE TABLE llm_calls (
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        decision_id INTEGER REFERENCES decisions(id),
        mode TEXT NOT NULL CHECK (mode IN ('drive', 'shadow', 'ask')),
        model TEXT,
        prompt TEXT,
        raw_response TEXT,
        parsed_json TEXT,
        valid INTEGER NOT NULL,
        error TEXT,
        tokens_in INTEGER,
        tokens_out INTEGER,
        latency_ms REAL,
        cost_usd REAL,
        extra_json TEXT)""",
    """CREATE TABLE settings_changes (
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        key TEXT NOT NULL,
        old TEXT,
        new TEXT,
        actor TEXT NOT NULL,
        channel TEXT NOT NULL,
        reason TEXT)""",
    """CREATE TABLE flags (
        key TEXT PRIMARY KEY,
        value TEXT,
        updated_at TEXT NOT NULL,
        updated_by TEXT)""",
    """CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        proposal_id INTEGER NOT NULL REFERENCES proposals(id),
        channel TEXT NOT NULL,
        chat_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (proposal_id, channel, chat_id))""",
    """CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        channel TEXT NOT NULL,
        payload_json TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        next_attempt_at TEXT NOT NULL,
        last_error TEXT,
        delivered_at TEXT)""",
    """CREATE VIEW decisions_full AS
        SELECT d.id, d.ts, d.underlying, d.decision_source, d.proposed_action, d.final_action, d.final_symbol,
               d.risk_allowed, d.requests, d.credits, d.state_json, d.proposed_json, d.risk_json,
               COALESCE(d.final_json, d.proposed_json) AS final_json, d.execution_json, d.shadow_json,
               d.timings_json, c.config_json
        FROM decisions d LEFT JOIN config_snapshots c ON c.id = d.config_id""",
] + [t for table in APPEND_ONLY_TABLES for t in _append_only_triggers(table)]

_V2_REVIEW_INDEXES = [
    "CREATE INDEX idx_decisions_ts ON decisions(ts)",
    "CREATE INDEX idx_decisions_action_ts ON decisions(final_action, ts)",
    "CREATE INDEX idx_decisions_underlying_ts ON decisions(underlying, ts)",
    "CREATE INDEX idx_proposals_status ON proposals(status, expires_at)",
    "CREATE INDEX idx_proposals_underlying_status ON proposals(underlying, status)",
    "CREATE INDEX idx_proposals_created ON proposals(created_at)",
    "CREATE INDEX idx_proposals_decision ON proposals(decision_id)",
    "CREATE INDEX idx_events_proposal ON events(proposal_id)",
    "CREATE INDEX idx_events_ts ON events(ts)",
    "CREATE INDEX idx_events_kind_ts ON events(kind, ts)",
    # votes(proposal_id): served by the UNIQUE (proposal_id, user) index; messages likewise.
    "CREATE INDEX idx_executions_proposal ON executions(proposal_id)",
    "CREATE INDEX idx_orders_execution ON orders(execution_id)",
    "CREATE INDEX idx_orders_proposal ON orders(proposal_id)",
    "CREATE INDEX idx_questions_proposal ON questions(proposal_id)",
    "CREATE INDEX idx_questions_ts ON questions(ts)",
    "CREATE INDEX idx_answers_question ON answers(question_id)",
    "CREATE INDEX idx_llm_calls_ts ON llm_calls(ts)",
    "CREATE INDEX idx_llm_calls_decision ON llm_calls(decision_id)",
    "CREATE INDEX idx_settings_changes_key_ts ON settings_changes(key, ts)",
    "CREATE INDEX idx_outbox_due ON outbox(channel, next_attempt_at) WHERE delivered_at IS NULL",
]


def _m001_core(db: Database) -> None:
    """Tables, the decisions_full view and the append-only triggers."""
    for stmt in _V1_CORE:
        db.execute(stmt)


def _m002_review_indexes(db: Database) -> None:
    """Indexes that keep review and the state machine fast on a year (or ten) of ticks."""
    for stmt in _V2_REVIEW_INDEXES:
        db.execute(stmt)


Migration = tuple[str, Callable[[Database], None]]
MIGRATIONS: tuple[Migration, ...] = (
    ("core", _m001_core),
    ("review_indexes", _m002_review_indexes),
)
SCHEMA_VERSION = len(MIGRATIONS)


def _busy(exc: BaseException) -> bool:
    msg = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)


def _busy_error(path: str, timeout: float) -> StoreBusyError:
    return StoreBusyError(f"database is locked: another writer held {path} for more than {timeout:g} s; "
                          f"retry in a moment, or stop the process that holds it")


@contextmanager
def _immediate(conn: sqlite3.Connection, path: str, timeout: float) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT on an autocommit connection (ROLLBACK on any error)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if _busy(exc):
            raise _busy_error(path, timeout) from None
        raise
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if _busy(exc):
            raise _busy_error(path, timeout) from None
        raise


def schema_version(db: Database) -> int:
    if not db["_migrations"].exists():
        return 0
    row = db.execute("SELECT MAX(version) FROM _migrations").fetchone()
    return row[0] or 0


def migrate(db: Database, migrations: Sequence[Migration] = MIGRATIONS, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
            now: Callable[[], datetime] = utc_now) -> list[int]:
    """Apply the pending migrations in order, each once, each in its own BEGIN IMMEDIATE
    transaction together with its `_migrations` row. Returns the versions applied now.
    `db` must wrap an autocommit connection (isolation_level=None), as `Store` opens it."""
    conn = db.conn
    path = _db_path(db)
    with _immediate(conn, path, busy_timeout):
        db.execute("CREATE TABLE IF NOT EXISTS _migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                   "applied_at TEXT NOT NULL)")
    applied = []
    current = schema_version(db)
    if current > len(migrations) and migrations is MIGRATIONS:
        raise RuntimeError(f"database schema v{current} is newer than this code (v{len(migrations)}): "
                           f"upgrade the code before opening {path}")
    for version, (name, fn) in enumerate(migrations, start=1):
        if version <= current:
            continue
        with _immediate(conn, path, busy_timeout):
            # Re-check under the write lock: another process may have applied it meanwhile.
            if schema_version(db) >= version:
                continue
            fn(db)
            db.execute("INSERT INTO _migrations (version, name, applied_at) VALUES (?, ?, ?)",
                       [version, name, iso(now())])
            db.execute(f"PRAGMA user_version = {version}")
        applied.append(version)
    return applied


def _db_path(db: Database) -> str:
    row = db.conn.execute("PRAGMA database_list").fetchone()
    return (row[2] if row and row[2] else ":memory:")


def connect(path: str | Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> Database:
    """An autocommit connection wrapped by sqlite-utils: WAL, busy_timeout, foreign keys on."""
    path = str(path)
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    # Decision rows are ~1.6 KB: 4 KB pages hold only two of them and waste a fifth of the
    # file. Takes effect only on a new, empty file (before the first write and the WAL switch).
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    db = Database(conn, execute_plugins=False)
    if path != ":memory:":
        db.enable_wal()
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = FULL")  # an approval that was answered "ok" survives a power cut
    return db


# --- the store ---------------------------------------------------------------------------------


def _proposal(r: dict[str, Any]) -> ProposalRow:
    return ProposalRow(
        id=r["id"], decision_id=r["decision_id"], created_at=parse_ts(r["created_at"]),
        expires_at=parse_ts(r["expires_at"]), underlying=r["underlying"], action=r["action"], symbol=r["symbol"],
        roll_from=r["roll_from"], size=r["size"], approvals_required=r["approvals_required"], label=r["label"],
        status=r["status"], status_reason=r["status_reason"], decided_by=r["decided_by"],
        decided_at=parse_ts(r["decided_at"]), updated_at=parse_ts(r["updated_at"]), action_json=r["action_json"],
    )


def _vote(r: dict[str, Any]) -> VoteRow:
    return VoteRow(id=r["id"], proposal_id=r["proposal_id"], user=r["user"], channel=r["channel"], vote=r["vote"],
                   reason=r["reason"], ts=parse_ts(r["ts"]))


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
             "tokens_out", "latency_ms", "cost_usd", "ts", "decision_id", "prompt_tokens", "completion_tokens"}
LLM_MODES = ("drive", "shadow", "ask")

_TS_COLUMN = {"decisions": "ts", "proposals": "created_at", "votes": "ts", "events": "ts", "executions": "ts",
              "orders": "ts", "questions": "ts", "answers": "ts", "llm_calls": "ts", "settings_changes": "ts",
              "config_snapshots": "first_seen", "flags": "updated_at", "messages": "created_at",
              "outbox": "created_at"}


class Store:
    """The agent's SQLite file. Safe for one process's threads and asyncio loop plus other
    processes on the same file; see the module docstring for how."""

    def __init__(self, path: str | Path, *, now: Callable[[], datetime] | None = None,
                 busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        self.path = str(path)
        self.busy_timeout = busy_timeout
        self._now = now or utc_now
        self._lock = threading.RLock()
        self._depth = 0  # nesting of write() in the thread that holds the lock
        self.db = connect(self.path, busy_timeout)
        try:
            with self._locked():
                migrate(self.db, busy_timeout=busy_timeout, now=self._now)
            self.instance_id = self._ensure_instance_id()
        except BaseException:
            self.db.close()
            raise

    def _ensure_instance_id(self) -> str:
        """A random tag made once per database, part of every order label."""
        current = self.get_flag("instance_id")
        if current:
            return current
        with self.write() as conn:
            row = conn.execute("SELECT value FROM flags WHERE key = 'instance_id'").fetchone()
            if row and row[0]:
                return str(row[0])
            new = secrets.token_hex(3)
            # Part of the database's identity, not a state change: no event (the chain starts clean).
            conn.execute("INSERT INTO flags (key, value, updated_at, updated_by) VALUES ('instance_id', ?, ?, 'store')",
                         [new, iso(self._now())])
            return new

    # --- plumbing --------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def now(self) -> datetime:
        return self._now()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if not self._lock.acquire(timeout=self.busy_timeout):
            raise _busy_error(self.path, self.busy_timeout)
        try:
            yield
        finally:
            self._lock.release()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """The one way to write: in-process lock + BEGIN IMMEDIATE ... COMMIT (rolled back on error).
        Nested use in the same thread becomes a savepoint of the outer transaction. Keep the block
        short and never `await` inside it (the lock is re-entrant per thread, not per task)."""
        with self._locked():
            conn = self.db.conn
            if self._depth:
                # Nested in this thread: a savepoint inside the open transaction.
                self._depth += 1
                sp = f"w{self._depth}"
                conn.execute(f"SAVEPOINT {sp}")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.execute(f"ROLLBACK TO {sp}")
                        conn.execute(f"RELEASE {sp}")
                    raise
                else:
                    conn.execute(f"RELEASE {sp}")
                finally:
                    self._depth -= 1
                return
            self._depth = 1
            try:
                with _immediate(self.db.conn, self.path, self.busy_timeout):
                    yield self.db.conn
            finally:
                self._depth = 0

    def _rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        with self._locked():
            try:
                return list(self.db.query(sql, params))
            except sqlite3.OperationalError as exc:
                if _busy(exc):
                    raise _busy_error(self.path, self.busy_timeout) from None
                raise

    def _row(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._locked():
            row = self.db.conn.execute(sql, params).fetchone()
        return row[0] if row else None

    @staticmethod
    def _insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> int:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        cur = conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", list(row.values()))
        return int(cur.lastrowid)

    # --- events and the hash chain --------------------------------------------------------

    def append_event(self, kind: str, *, proposal_id: int | None = None, decision_id: int | None = None,
                     actor: str, channel: str, reason: str | None = None, data: Any = None) -> int:
        """Append one row to the hash-chained event log; returns its id."""
        with self.write() as conn:
            last = conn.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
            prev_id, prev_hash = last if last else (0, GENESIS_HASH)
            row = {"id": prev_id + 1, "ts": iso(self._now()), "kind": kind, "proposal_id": proposal_id,
                   "decision_id": decision_id, "actor": str(actor), "channel": str(channel), "reason": reason,
                   "data_json": None if data is None else canonical(data)}
            row["prev_hash"] = prev_hash
            row["hash"] = _hash_event(prev_hash, row)
            return self._insert(conn, "events", row)

    def verify_chain(self, batch: int = 5000) -> ChainReport:
        """Recompute the event chain; name the first row whose content changed, or where a row
        was deleted or inserted. (Cutting rows off the end is only visible against a kept head_hash.)"""
        expected_prev, prev_id, checked = GENESIS_HASH, 0, 0
        while True:
            rows = self._rows("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", [prev_id, batch])
            if not rows:
                return ChainReport(True, checked, None, f"{checked} events verified", expected_prev)
            for r in rows:
                rid = r["id"]
                if rid != prev_id + 1:
                    return ChainReport(False, checked, rid, f"event ids jump from {prev_id} to {rid}: "
                                       f"{rid - prev_id - 1} row(s) deleted before event {rid}", expected_prev)
                if r["hash"] != _hash_event(r["prev_hash"], r):
                    return ChainReport(False, checked, rid, f"event {rid} content changed: its hash does not match",
                                       expected_prev)
                if r["prev_hash"] != expected_prev:
                    return ChainReport(False, checked, rid, f"event {rid} does not link to event {prev_id}: a row "
                                       f"before it was deleted, inserted or rewritten", expected_prev)
                expected_prev, prev_id = r["hash"], rid
                checked += 1

    def list_events(self, since: datetime | None = None, until: datetime | None = None, proposal_id: int | None = None,
                    kind: str | None = None, limit: int = 1000, order: str = "asc") -> list[dict[str, Any]]:
        """The latest `limit` events matching (data parsed into `data`), returned oldest first, or
        newest first with order='desc'."""
        where, params = self._time_filter("ts", since, until)
        if proposal_id is not None:
            where.append("proposal_id = ?")
            params.append(proposal_id)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        o = _order(order)
        rows = self._rows(f"SELECT * FROM events {self._where(where)} ORDER BY id DESC LIMIT ?", params + [limit])
        return [_event_dict(r) for r in (reversed(rows) if o == "ASC" else rows)]

    # --- decisions ------------------------------------------------------------------------

    def record_decision(self, decision: Decision) -> int:
        """Store one tick (and its LLM calls) in one transaction; returns the decision id.
        Raises ValueError if the config snapshot holds an unredacted secret."""
        row = serialize_decision(decision)
        config_json = row.pop("config_json")
        with self.write() as conn:
            row["config_id"] = self._config_id(conn, config_json)
            decision_id = self._insert(conn, "decisions", row)
            mode_default = "shadow" if decision.shadow_action is not None else "drive"
            for rec in decision.llm_calls:
                fields = {"mode": mode_default, **rec, "decision_id": decision_id}
                fields.pop("default_ts", None)
                self._insert_llm_call(conn, default_ts=row["ts"], **fields)
        return decision_id

    def _config_id(self, conn: sqlite3.Connection, config_json: str | None) -> int | None:
        if config_json is None:
            return None
        digest = hashlib.sha256(config_json.encode()).hexdigest()
        found = conn.execute("SELECT id FROM config_snapshots WHERE hash = ?", [digest]).fetchone()
        if found:
            return found[0]
        return self._insert(conn, "config_snapshots", {"hash": digest, "config_json": config_json,
                                                        "first_seen": iso(self._now())})

    def get_decision(self, decision_id: int) -> dict[str, Any] | None:
        """A decision with its JSON parsed (state, proposed, risk, final, execution, shadow, timings, config)."""
        r = self._row("SELECT d.*, c.config_json FROM decisions d LEFT JOIN config_snapshots c ON c.id = d.config_id "
                      "WHERE d.id = ?", [decision_id])
        return None if r is None else _decision_dict(r)

    def decision_model(self, decision_id: int) -> Decision | None:
        """The stored decision as an `agent.models.Decision` (llm_calls stay in their own table)."""
        d = self.get_decision(decision_id)
        if d is None:
            return None
        return Decision(
            timestamp=parse_ts(d["ts"]), underlying=d["underlying"], state=d["state"],
            proposed_action=Action.model_validate(d["proposed"]), risk_check=RiskResult.model_validate(d["risk"]),
            final_action=Action.model_validate(d["final"]),
            execution=ExecutionResult.model_validate(d["execution"]) if d["execution"] else None,
            config_snapshot=d["config"] or {}, decision_source=d["decision_source"],
            shadow_action=Action.model_validate(d["shadow"]) if d["shadow"] else None,
            timings_ms=d["timings"] or {}, requests=d["requests"], credits=d["credits"],
        )

    def list_decisions(self, since: datetime | None = None, until: datetime | None = None,
                       action: str | ActionType | None = None, limit: int = 100, order: str = "desc",
                       underlying: str | None = None, full: bool = True) -> list[dict[str, Any]]:
        """Decisions by time (newest first by default). Each dict has the scalar columns, `reasoning`
        (of the final action) and, with full=True, the JSON parsed (see get_decision)."""
        where, params = self._time_filter("d.ts", since, until)
        if action is not None:
            where.append("d.final_action = ?")
            params.append(action.value if isinstance(action, ActionType) else action)
        if underlying is not None:
            where.append("d.underlying = ?")
            params.append(underlying)
        cols = "d.*, c.config_json" if full else (
            "d.id, d.ts, d.underlying, d.decision_source, d.proposed_action, d.final_action, d.final_symbol, "
            "d.risk_allowed, d.requests, d.credits")
        join = "LEFT JOIN config_snapshots c ON c.id = d.config_id" if full else ""
        o = _order(order)
        sql = (f"SELECT {cols}, json_extract(COALESCE(d.final_json, d.proposed_json), '$.reasoning') AS reasoning "
               f"FROM decisions d {join} {self._where(where)} ORDER BY d.ts {o}, d.id {o} LIMIT ?")
        return [_decision_dict(r, full) for r in self._rows(sql, params + [limit])]

    def last_decision(self, underlying: str | None = None) -> dict[str, Any] | None:
        rows = self.list_decisions(limit=1, underlying=underlying)
        return rows[0] if rows else None

    def last_tick_at(self) -> datetime | None:
        return parse_ts(self._scalar("SELECT MAX(ts) FROM decisions"))

    # --- proposals and the state machine --------------------------------------------------

    def create_proposal(self, decision_id: int | None, action: Action, *, expires_at: datetime,
                        approvals_required: int, actor: str = "agent", channel: str = "scheduler") -> ProposalRow:
        """A pending proposal of `action`; its label is set in the same transaction; event proposal_created."""
        if approvals_required < 1:
            raise ValueError(f"approvals_required must be at least 1, got {approvals_required}")
        now = iso(self._now())
        with self.write() as conn:
            pid = self._insert(conn, "proposals", {
                "decision_id": decision_id, "created_at": now, "expires_at": iso(expires_at),
                "underlying": action.underlying, "action": action.action.value, "symbol": action.symbol,
                "roll_from": action.roll_from, "size": action.size, "approvals_required": approvals_required,
                "status": "pending", "updated_at": now, "action_json": _model_json(action)})
            conn.execute("UPDATE proposals SET label = ? WHERE id = ?", [label_for(pid, self.instance_id), pid])
            self.append_event("proposal_created", proposal_id=pid, decision_id=decision_id, actor=actor,
                              channel=channel, reason=action.reasoning[:500] or None,
                              data={"action": action.action.value, "symbol": action.symbol,
                                    "roll_from": action.roll_from, "size": action.size,
                                    "expires_at": iso(expires_at), "approvals_required": approvals_required})
            row = self.get_proposal(pid)
        assert row is not None
        return row

    def transition(self, proposal_id: int, from_status: str | Sequence[str], to_status: str, *, actor: str,
                   channel: str, reason: str | None = None, data: Any = None) -> bool:
        """Compare-and-swap the status (inside BEGIN IMMEDIATE) and append a `proposal_<to>` event
        in the same transaction. False when the CAS lost (status was not `from_status`)."""
        froms = _status_tuple(from_status)
        _status_tuple(to_status)
        for f in froms:
            if to_status not in TRANSITIONS.get(f, ()):
                raise ValueError(f"illegal proposal transition {f} -> {to_status}")
        with self.write() as conn:
            return self._cas(conn, proposal_id, froms, to_status, actor=actor, channel=channel, reason=reason,
                             data=data)

    def _cas(self, conn: sqlite3.Connection, proposal_id: int, froms: tuple[str, ...], to_status: str, *, actor: str,
             channel: str, reason: str | None, data: Any = None) -> bool:
        old = conn.execute("SELECT status, decision_id FROM proposals WHERE id = ?", [proposal_id]).fetchone()
        if old is None or old[0] not in froms:
            return False
        now = iso(self._now())
        decided = old[0] == "pending"
        marks = ", ".join("?" for _ in froms)
        cur = conn.execute(
            f"UPDATE proposals SET status = ?, status_reason = ?, updated_at = ?, "
            f"decided_by = CASE WHEN ? THEN ? ELSE decided_by END, "
            f"decided_at = CASE WHEN ? THEN ? ELSE decided_at END "
            f"WHERE id = ? AND status IN ({marks})",
            [to_status, reason, now, decided, str(actor), decided, now, proposal_id, *froms])
        if cur.rowcount != 1:
            return False
        payload = {"from": old[0], "to": to_status}
        if data is not None:
            payload["data"] = data
        self.append_event(f"proposal_{to_status}", proposal_id=proposal_id, decision_id=old[1], actor=actor,
                          channel=channel, reason=reason, data=payload)
        return True

    def get_proposal(self, proposal_id: int) -> ProposalRow | None:
        r = self._row("SELECT * FROM proposals WHERE id = ?", [proposal_id])
        return None if r is None else _proposal(r)

    def pending_proposals(self, underlying: str | None = None) -> list[ProposalRow]:
        if underlying is None:
            return self.proposals_in_status("pending")
        return [_proposal(r) for r in self._rows(
            "SELECT * FROM proposals WHERE underlying = ? AND status = 'pending' ORDER BY id", [underlying])]

    def proposals_in_status(self, *statuses: str) -> list[ProposalRow]:
        """Proposals in any of `statuses`, oldest first."""
        sts = _status_tuple(statuses)
        marks = ", ".join("?" for _ in sts)
        return [_proposal(r) for r in self._rows(f"SELECT * FROM proposals WHERE status IN ({marks}) ORDER BY id",
                                                 list(sts))]

    def latest_proposal(self) -> ProposalRow | None:
        r = self._row("SELECT * FROM proposals ORDER BY id DESC LIMIT 1")
        return None if r is None else _proposal(r)

    def list_proposals(self, status: str | Sequence[str] | None = None, since: datetime | None = None,
                       until: datetime | None = None, action: str | ActionType | None = None, limit: int = 100,
                       underlying: str | None = None, order: str = "desc") -> list[ProposalRow]:
        """Proposals by creation time (newest first by default)."""
        where, params = self._time_filter("created_at", since, until)
        if status is not None:
            sts = _status_tuple(status)
            where.append(f"status IN ({', '.join('?' for _ in sts)})")
            params += list(sts)
        if action is not None:
            where.append("action = ?")
            params.append(action.value if isinstance(action, ActionType) else action)
        if underlying is not None:
            where.append("underlying = ?")
            params.append(underlying)
        o = _order(order)
        sql = f"SELECT * FROM proposals {self._where(where)} ORDER BY created_at {o}, id {o} LIMIT ?"
        return [_proposal(r) for r in self._rows(sql, params + [limit])]

    def expire_due(self, now: datetime | None = None) -> list[int]:
        """CAS pending -> expired for every proposal past expires_at (one transaction); their ids."""
        cutoff = iso(now or self._now())
        done = []
        with self.write() as conn:
            due = [r[0] for r in conn.execute(
                "SELECT id FROM proposals WHERE status = 'pending' AND expires_at <= ? ORDER BY id", [cutoff])]
            for pid in due:
                if self._cas(conn, pid, ("pending",), "expired", actor="system", channel="scheduler",
                             reason="approval window elapsed"):
                    done.append(pid)
        return done

    # --- votes ----------------------------------------------------------------------------

    def add_vote(self, proposal_id: int, user: str, channel: str, vote: str, reason: str | None = None) -> bool:
        """Record a vote (and a `vote` event); False if this user already voted on this proposal.
        No status change: see vote_and_maybe_approve for the combined rule."""
        with self.write() as conn:
            return self._insert_vote(conn, proposal_id, str(user), channel, vote, reason)

    def _insert_vote(self, conn: sqlite3.Connection, proposal_id: int, user: str, channel: str, vote: str,
                     reason: str | None) -> bool:
        if vote not in ("approve", "reject"):
            raise ValueError(f"vote must be 'approve' or 'reject', got {vote!r}")
        if conn.execute("SELECT 1 FROM proposals WHERE id = ?", [proposal_id]).fetchone() is None:
            raise ValueError(f"no proposal #{proposal_id}")
        cur = conn.execute("INSERT OR IGNORE INTO votes (proposal_id, user, channel, vote, reason, ts) "
                           "VALUES (?, ?, ?, ?, ?, ?)", [proposal_id, user, channel, vote, reason, iso(self._now())])
        if cur.rowcount != 1:
            return False
        self.append_event("vote", proposal_id=proposal_id, actor=user, channel=channel, reason=reason,
                          data={"vote": vote})
        return True

    def votes(self, proposal_id: int) -> list[VoteRow]:
        return [_vote(r) for r in self._rows("SELECT * FROM votes WHERE proposal_id = ? ORDER BY id", [proposal_id])]

    def approve_count(self, proposal_id: int) -> int:
        return int(self._scalar("SELECT COUNT(*) FROM votes WHERE proposal_id = ? AND vote = 'approve'",
                                [proposal_id]))

    def vote_and_maybe_approve(self, proposal_id: int, user: str, channel: str, vote: str, reason: str | None = None,
                               approvals_required: int | None = None, *, now: datetime | None = None) -> VoteOutcome:
        """In ONE transaction: the proposal must be pending and not expired at `now`; the vote is
        recorded; enough approvals CAS pending -> approved, a reject CAS pending -> rejected.
        `approvals_required` defaults to the proposal's own. Any number of concurrent callers,
        threads or processes, give exactly one approved (or rejected) transition."""
        user = str(user)
        at = now or self._now()
        with self.write() as conn:
            row = conn.execute("SELECT status, expires_at, approvals_required FROM proposals WHERE id = ?",
                               [proposal_id]).fetchone()
            if row is None:
                return VoteOutcome("unknown", proposal_id, None)
            status, expires_at, own_required = row
            required = approvals_required if approvals_required is not None else own_required
            count = lambda: conn.execute(  # noqa: E731
                "SELECT COUNT(*) FROM votes WHERE proposal_id = ? AND vote = 'approve'", [proposal_id]).fetchone()[0]
            if status != "pending":
                return VoteOutcome("not_pending", proposal_id, status, count(), required)
            if iso(at) >= expires_at:
                self._cas(conn, proposal_id, ("pending",), "expired", actor="system", channel=channel,
                          reason=f"approval window elapsed before {user}'s {vote}")
                return VoteOutcome("expired", proposal_id, "expired", count(), required)
            if not self._insert_vote(conn, proposal_id, user, channel, vote, reason):
                return VoteOutcome("already_voted", proposal_id, status, count(), required)
            n = count()
            if vote == "reject":
                self._cas(conn, proposal_id, ("pending",), "rejected", actor=user, channel=channel,
                          reason=reason or f"rejected by {user}")
                return VoteOutcome("rejected", proposal_id, "rejected", n, required)
            if n >= required:
                self._cas(conn, proposal_id, ("pending",), "approved", actor=user, channel=channel,
                          reason=reason or f"{n}/{required} approvals", data={"approvals": n, "required": required})
                return VoteOutcome("approved", proposal_id, "approved", n, required)
            return VoteOutcome("recorded", proposal_id, "pending", n, required)

    # --- executions -----------------------------------------------------------------------

    def record_execution(self, proposal_id: int, result: ExecutionResult, *, actor: str = "agent",
                         channel: str = "executor") -> int:
        """Store an execution attempt and each of its orders, plus an `execution_recorded` event.
        (The status transition is the caller's, e.g. transition(pid, 'executing', 'executed').)"""
        now = iso(self._now())
        with self.write() as conn:
            eid = self._insert(conn, "executions", {
                "proposal_id": proposal_id, "ts": now, "status": result.status.value, "dry_run": int(result.dry_run),
                "message": result.message, "error_code": result.error_code, "result_json": _model_json(result)})
            for o in result.orders:
                r = o.request
                self._insert(conn, "orders", {
                    "execution_id": eid, "proposal_id": proposal_id, "ts": now, "order_id": o.order_id,
                    "instrument": r.instrument_name, "side": r.side, "amount": r.amount, "price": r.price,
                    "label": r.label, "order_type": r.order_type, "reduce_only": int(r.reduce_only),
                    "order_state": o.order_state, "filled_amount": o.filled_amount, "average_price": o.average_price,
                    "error_code": o.error_code, "error_message": o.error_message, "reused": int(o.reused)})
            self.append_event("execution_recorded", proposal_id=proposal_id, actor=actor, channel=channel,
                              reason=result.message[:500] or None,
                              data={"execution_id": eid, "status": result.status.value, "dry_run": result.dry_run,
                                    "orders": [o.order_id for o in result.orders]})
        return eid

    def executions(self, proposal_id: int) -> list[dict[str, Any]]:
        """Execution attempts of a proposal, each with its `orders` and `result` parsed."""
        out = []
        for e in self._rows("SELECT * FROM executions WHERE proposal_id = ? ORDER BY id", [proposal_id]):
            e = dict(e)
            e["result"] = _loads(e.pop("result_json"))
            e["dry_run"] = bool(e["dry_run"])
            e["orders"] = self._rows("SELECT * FROM orders WHERE execution_id = ? ORDER BY id", [e["id"]])
            out.append(e)
        return out

    # --- flags and settings ---------------------------------------------------------------

    def set_flag(self, key: str, value: Any, *, actor: str, channel: str, reason: str | None = None) -> None:
        """Set a flag (e.g. `paused`); stored as text; the change is also an event `flag_set`."""
        text = None if value is None else value if isinstance(value, str) else dumps(value)
        with self.write() as conn:
            old = conn.execute("SELECT value FROM flags WHERE key = ?", [key]).fetchone()
            conn.execute("INSERT INTO flags (key, value, updated_at, updated_by) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, "
                         "updated_by = excluded.updated_by", [key, text, iso(self._now()), str(actor)])
            self.append_event("flag_set", actor=actor, channel=channel, reason=reason,
                              data={"key": key, "old": old[0] if old else None, "new": text})

    def get_flag(self, key: str, default: str | None = None) -> str | None:
        r = self._row("SELECT value FROM flags WHERE key = ?", [key])
        return default if r is None or r["value"] is None else r["value"]

    def flags(self) -> dict[str, str | None]:
        return {r["key"]: r["value"] for r in self._rows("SELECT key, value FROM flags ORDER BY key")}

    def record_setting_change(self, key: str, old: Any, new: Any, *, actor: str, channel: str,
                              reason: str | None = None) -> int:
        """Append a settings change (values of secret-looking keys are stored as '***'); also an event."""
        def text(v: Any) -> str | None:
            if v is None:
                return None
            if is_secret_key(key) and v != "":
                return REDACTED
            return v if isinstance(v, str) else dumps(v)

        row = {"ts": iso(self._now()), "key": key, "old": text(old), "new": text(new), "actor": str(actor),
               "channel": channel, "reason": reason}
        with self.write() as conn:
            sid = self._insert(conn, "settings_changes", row)
            self.append_event("setting_changed", actor=actor, channel=channel, reason=reason,
                              data={"key": key, "old": row["old"], "new": row["new"], "settings_change_id": sid})
        return sid

    def settings_changes(self, key: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, params = ([], []) if key is None else (["key = ?"], [key])
        return self._rows(f"SELECT * FROM settings_changes {self._where(where)} ORDER BY id DESC LIMIT ?",
                          params + [limit])

    # --- questions and answers ------------------------------------------------------------

    def record_question(self, user: str, channel: str, kind: str, text: str, ref: int | str | None = None, *,
                        proposal_id: int | None = None, decision_id: int | None = None) -> int:
        """A question asked in chat (kind why|ask|whatif). `ref` is what it refers to as typed: a
        proposal (12, "12", "#12", "cc-12") or a decision ("d34"); kept as text and parsed into ids."""
        ref_pid, ref_did = parse_ref(ref)
        with self.write() as conn:
            return self._insert(conn, "questions", {
                "ts": iso(self._now()), "user": str(user), "channel": channel, "kind": kind, "text": text,
                "ref": None if ref is None or ref == "" else str(ref),
                "proposal_id": proposal_id if proposal_id is not None else ref_pid,
                "decision_id": decision_id if decision_id is not None else ref_did})

    def record_answer(self, question_id: int, text: str, source: str) -> int:
        """The answer given (source db|llm|rules)."""
        with self.write() as conn:
            return self._insert(conn, "answers", {"question_id": question_id, "ts": iso(self._now()), "text": text,
                                                  "source": source})

    # --- LLM calls ------------------------------------------------------------------------

    def record_llm_call(self, *, mode: str, valid: bool, model: str | None = None, prompt: str | None = None,
                        raw_response: str | None = None, parsed: Any = None, error: str | None = None,
                        tokens_in: int | None = None, tokens_out: int | None = None, latency_ms: float | None = None,
                        cost_usd: float | None = None, decision_id: int | None = None, ts: datetime | None = None,
                        **extra: Any) -> int:
        """One LLM call (mode drive|shadow|ask); unknown keyword fields go to extra_json."""
        with self.write() as conn:
            return self._insert_llm_call(conn, mode=mode, valid=valid, model=model, prompt=prompt,
                                         raw_response=raw_response, parsed=parsed, error=error, tokens_in=tokens_in,
                                         tokens_out=tokens_out, latency_ms=latency_ms, cost_usd=cost_usd,
                                         decision_id=decision_id, ts=ts, **extra)

    def _insert_llm_call(self, conn: sqlite3.Connection, *, default_ts: str | None = None, **rec: Any) -> int:
        parsed = _first(rec, "parsed", "parsed_json")
        if isinstance(parsed, str):
            try:
                parsed = json.loads(parsed)
            except ValueError:
                pass
        ts = rec.get("ts")
        mode = rec.get("mode") or "drive"
        extra = {k: v for k, v in rec.items() if k not in _LLM_KEYS and v is not None}
        if mode not in LLM_MODES:  # keep the caller's word, but never lose the record over it
            extra["mode"], mode = mode, "drive"
        tokens_in = _first(rec, "tokens_in", "prompt_tokens")
        tokens_out = _first(rec, "tokens_out", "completion_tokens")
        return self._insert(conn, "llm_calls", {
            "ts": _ts_param(ts) or default_ts or iso(self._now()), "decision_id": rec.get("decision_id"),
            "mode": mode, "model": rec.get("model"), "prompt": rec.get("prompt"),
            "raw_response": rec.get("raw_response"), "parsed_json": None if parsed is None else dumps(parsed),
            "valid": int(bool(rec.get("valid"))), "error": rec.get("error"), "tokens_in": tokens_in,
            "tokens_out": tokens_out, "latency_ms": rec.get("latency_ms"), "cost_usd": rec.get("cost_usd"),
            "extra_json": dumps(extra) if extra else None})

    def llm_stats(self, since: datetime | None = None) -> dict[str, Any]:
        """LLM use since a time: calls, fallbacks (= invalid: calls whose answer was not used, so the
        rules decided), errors, tokens_in, tokens_out, tokens (both), cost_usd, avg_latency_ms,
        by_mode {mode: calls}, fallback_decisions (decisions with source llm_fallback)."""
        cutoff = _ts_param(since) or ""
        r = self._row(
            "SELECT COUNT(*) AS calls, COALESCE(SUM(valid = 0), 0) AS invalid, "
            "COALESCE(SUM(error IS NOT NULL), 0) AS errors, COALESCE(SUM(valid = 0), 0) AS fallbacks, "
            "COALESCE(SUM(tokens_in), 0) AS tokens_in, COALESCE(SUM(tokens_out), 0) AS tokens_out, "
            "COALESCE(SUM(cost_usd), 0.0) AS cost_usd, AVG(latency_ms) AS avg_latency_ms "
            "FROM llm_calls WHERE ts >= ?", [cutoff]) or {}
        out = dict(r)
        out["tokens"] = out["tokens_in"] + out["tokens_out"]
        out["by_mode"] = {x["mode"]: x["n"] for x in self._rows(
            "SELECT mode, COUNT(*) AS n FROM llm_calls WHERE ts >= ? GROUP BY mode", [cutoff])}
        out["fallback_decisions"] = self._scalar(
            "SELECT COUNT(*) FROM decisions WHERE ts >= ? AND decision_source = 'llm_fallback'", [cutoff])
        return out

    # --- chat messages and the outbox -----------------------------------------------------

    def save_message_ref(self, proposal_id: int, channel: str, chat_id: str | int, message_id: str | int) -> None:
        """Remember where a proposal was posted (one ref per proposal, channel and chat; replaced on repost)."""
        now = iso(self._now())
        with self.write() as conn:
            conn.execute("INSERT INTO messages (proposal_id, channel, chat_id, message_id, created_at, updated_at) "
                         "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(proposal_id, channel, chat_id) DO UPDATE SET "
                         "message_id = excluded.message_id, updated_at = excluded.updated_at",
                         [proposal_id, channel, str(chat_id), str(message_id), now, now])

    def message_refs(self, proposal_id: int, channel: str | None = None) -> list[MessageRef]:
        where, params = ["proposal_id = ?"], [proposal_id]
        if channel is not None:
            where.append("channel = ?")
            params.append(channel)
        return [MessageRef(r["proposal_id"], r["channel"], r["chat_id"], r["message_id"], parse_ts(r["updated_at"]))
                for r in self._rows(f"SELECT * FROM messages {self._where(where)} ORDER BY id", params)]

    def enqueue_outbox(self, channel: str, payload: dict[str, Any], error: str, *,
                       next_attempt_at: datetime | None = None) -> int:
        """A message `channel` failed to deliver (that failure counts as attempt 1); due at once
        unless `next_attempt_at` says otherwise."""
        now = self._now()
        with self.write() as conn:
            return self._insert(conn, "outbox", {
                "channel": channel, "payload_json": dumps(payload), "attempts": 1, "created_at": iso(now),
                "next_attempt_at": iso(next_attempt_at or now), "last_error": error})

    def due_outbox(self, channel: str, now: datetime | None = None, limit: int = 100) -> list[OutboxItem]:
        """Undelivered messages of `channel` whose retry time has come, oldest first (send in this order)."""
        return [_outbox(r) for r in self._rows(
            "SELECT * FROM outbox WHERE channel = ? AND delivered_at IS NULL AND next_attempt_at <= ? ORDER BY id "
            "LIMIT ?", [channel, iso(now or self._now()), limit])]

    def mark_outbox_attempt(self, outbox_id: int, error: str, next_attempt_at: datetime) -> None:
        with self.write() as conn:
            conn.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                         "WHERE id = ? AND delivered_at IS NULL", [error, iso(next_attempt_at), outbox_id])

    def mark_outbox_delivered(self, outbox_id: int) -> bool:
        with self.write() as conn:
            cur = conn.execute("UPDATE outbox SET delivered_at = ? WHERE id = ? AND delivered_at IS NULL",
                               [iso(self._now()), outbox_id])
            return cur.rowcount == 1

    def outbox_item(self, outbox_id: int) -> OutboxItem | None:
        r = self._row("SELECT * FROM outbox WHERE id = ?", [outbox_id])
        return None if r is None else _outbox(r)

    # --- review ---------------------------------------------------------------------------

    def proposal_story(self, proposal_id: int) -> dict[str, Any] | None:
        """Everything about one proposal: proposal (with `action` parsed as `action_obj`), decision,
        votes, events, executions (with orders), questions (with answers), messages."""
        p = self.get_proposal(proposal_id)
        if p is None:
            return None
        proposal = asdict(p)
        proposal["action_obj"] = json.loads(p.action_json)
        questions = []
        for q in self._rows("SELECT * FROM questions WHERE proposal_id = ? ORDER BY id", [proposal_id]):
            q = dict(q)
            q["answers"] = self._rows("SELECT * FROM answers WHERE question_id = ? ORDER BY id", [q["id"]])
            questions.append(q)
        return {
            "proposal": proposal,
            "decision": self.get_decision(p.decision_id) if p.decision_id is not None else None,
            "votes": [asdict(v) for v in self.votes(proposal_id)],
            "events": self.list_events(proposal_id=proposal_id, limit=10_000),
            "executions": self.executions(proposal_id),
            "questions": questions,
            "messages": [asdict(m) for m in self.message_refs(proposal_id)],
        }

    def iter_rows(self, table: str, *, since: datetime | None = None, until: datetime | None = None,
                  order: str = "asc", batch_size: int = 1000, **equals: Any) -> Iterator[dict[str, Any]]:
        """Every row of `table` (raw column values), filtered by time and column equality, fetched in
        batches (the lock is not held between them), for CSV / JSON-lines exports."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r} (one of {', '.join(TABLES)})")
        with self._locked():
            columns = set(self.db[table].columns_dict)
        bad = [c for c in equals if c not in columns]
        if bad:
            raise ValueError(f"{table} has no column {', '.join(bad)}")
        where, params = self._time_filter(_TS_COLUMN[table], since, until)
        for col, value in equals.items():
            where.append(f"{col} = ?")
            params.append(value)
        o = _order(order)
        cmp = ">" if o == "ASC" else "<"
        last: int | None = None
        while True:
            w = list(where) + ([f"rowid {cmp} ?"] if last is not None else [])
            p = list(params) + ([last] if last is not None else [])
            rows = self._rows(f"SELECT rowid AS _rowid, * FROM {table} {self._where(w)} ORDER BY rowid {o} LIMIT ?",
                              p + [batch_size])
            for r in rows:
                last = r.pop("_rowid")
                yield r
            if len(rows) < batch_size:
                return

    def history_for_policy(self, underlying: str, now: datetime | None = None) -> PositionHistory:
        """What the policy needs from the past (executed proposals up to `now`): the last action
        time per symbol (its symbol and roll_from), rolls per chain (a roll's new symbol inherits
        roll_from's count + 1; a close ends the chain), and a one-line previous decision."""
        cutoff = iso(now or self._now())
        last_at: dict[str, datetime] = {}
        rolls: dict[str, int] = {}
        for r in self._rows("SELECT action, symbol, roll_from, updated_at "
                            "FROM proposals WHERE underlying = ? AND status = 'executed' AND updated_at <= ? "
                            "ORDER BY updated_at, id", [underlying, cutoff]):
            at = parse_ts(r["updated_at"])
            for sym in (r["symbol"], r["roll_from"]):
                if sym:
                    last_at[sym] = at
            if r["action"] == ActionType.OPEN_COVERED_CALL.value and r["symbol"]:
                rolls[r["symbol"]] = 0
            elif r["action"] == ActionType.ROLL_COVERED_CALL.value and r["symbol"]:
                rolls[r["symbol"]] = rolls.pop(r["roll_from"], 0) + 1
            elif r["action"] == ActionType.CLOSE_COVERED_CALL.value and r["symbol"]:
                rolls.pop(r["symbol"], None)
        d = self._row("SELECT ts, final_action, final_symbol, decision_source, "
                      "json_extract(COALESCE(final_json, proposed_json), '$.reasoning') AS reasoning "
                      "FROM decisions WHERE underlying = ? AND ts <= ? ORDER BY ts DESC, id DESC LIMIT 1",
                      [underlying, cutoff])
        previous = None
        if d is not None:
            why = " ".join((d["reasoning"] or "").split())
            why = why if len(why) <= 160 else why[:157] + "..."
            sym = f" {d['final_symbol']}" if d["final_symbol"] else ""
            previous = f"{parse_ts(d['ts']):%Y-%m-%d %H:%M}Z {d['final_action']}{sym} ({d['decision_source']}): {why}"
        return PositionHistory(last_action_at=last_at, roll_count=rolls, previous_decision=previous)

    # --- query helpers --------------------------------------------------------------------

    @staticmethod
    def _time_filter(col: str, since: datetime | str | None,
                     until: datetime | str | None) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append(f"{col} >= ?")
            params.append(_ts_param(since))
        if until is not None:
            where.append(f"{col} < ?")
            params.append(_ts_param(until))
        return where, params

    @staticmethod
    def _where(clauses: list[str]) -> str:
        return ("WHERE " + " AND ".join(clauses)) if clauses else ""


def _order(order: str) -> str:
    o = order.lower()
    if o not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
    return o.upper()


__all__ = [
    "APPEND_ONLY_TABLES", "ChainReport", "DECISION_COLUMNS", "FINAL_STATUSES", "LABEL_PREFIX", "MIGRATIONS",
    "MessageRef", "OutboxItem", "ProposalRow", "SCHEMA_VERSION", "STATUSES", "Store", "StoreBusyError",
    "TRANSITIONS", "VoteOutcome", "VoteRow", "assert_no_secrets", "connect", "iso", "label_for", "migrate",
    "parse_ref", "parse_ts", "serialize_decision",
]
