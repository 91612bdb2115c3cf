"""The one store, on SQLite or PostgreSQL: schema, migrations, writes, review queries, audit chain.

The package splits the store by job: `common` (vocabulary, row values, helpers), `db` (the
engine layer: SQLAlchemy Core over sqlite3 or psycopg 3, and the few places the two differ),
`schema` (tables, migrations), `base` (the lock and the one write path), and one mixin
module per kind of record (`events`, `decisions`, `proposals`, `flags`, `questions`, `messages`,
`review`, `ledger`). `Store` puts them together.

Engines. `Store("data/chatops.db")` or `Store("sqlite:///...")` is an embedded SQLite file;
`Store("postgresql://user:pass@host:5432/db")` is a PostgreSQL database. Every query below is
written once; what differs lives in `db.py`.

Concurrency (SQLite; PostgreSQL the same with BEGIN + an advisory lock). One file in WAL mode, shared by the bot's process (an asyncio loop plus threads) and
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
`verify_chain()` recomputes the chain and names the first broken row. Every row of every audit
table also joins `audit_chain` (see `chain`), whose head is anchored outside the database.
Triggers refuse a status change that is not an edge of the state machine and an `approved`
without the proposal's own quorum (`schema.QUORUM_SQL`).

Secrets: every string parameter of every write passes `chatops.redact` (see `base`).

Compactness of a decision row (a tick every 5 minutes, 105k a year): JSON is minified with nulls
dropped; `final_json` is NULL when the final action equals the proposed one; the config snapshot
is stored once per distinct content in `config_snapshots` (decisions.config_id). The view
`decisions_full` puts `final_json` and `config_json` back for ad-hoc SQL.

Timestamps are ISO-8601 UTC text with a fixed width (`2026-11-25T12:00:00.000000Z`), so they
sort as text. Naive datetimes passed in are taken as UTC.
"""

from __future__ import annotations

from .base import StoreBase
from .common import (APPEND_ONLY_TABLES, FINAL_STATUSES, GENESIS_HASH, LABEL_PREFIX, REDACTED, STATUSES, TABLES,
                     TRANSITIONS, ChainReport, MessageRef, OutboxItem, ProposalRow, StoreBusyError, VoteOutcome,
                     VoteRow, assert_no_secrets, canonical, dumps, is_secret_key, iso, label_for, parse_ref,
                     parse_ts, serialize_decision, utc_now)
from .chain import CHAINED_TABLES, Anchor, AuditReport, ChainMixin, Head, chained, parse_head, read_anchors
from .decisions import DecisionsMixin
from .events import EventsMixin
from .flags import FlagsMixin
from .lease import LeaseLostError, LeaseMixin, LeaseState, lease_line, this_holder
from .ledger import LedgerMixin
from .messages import MessagesMixin
from .orders import ClaimResult, OrdersMixin
from .proposals import ProposalsMixin
from .questions import QuestionsMixin
from .review import ReviewMixin
from .common import StoreUnavailableError
from .db import Database, redact_url
from .schema import DECISION_COLUMNS, MIGRATIONS, SCHEMA_VERSION, connect, migrate, schema_version


class Store(EventsMixin, DecisionsMixin, ProposalsMixin, FlagsMixin, QuestionsMixin, MessagesMixin, ReviewMixin,
            LedgerMixin, OrdersMixin, ChainMixin, LeaseMixin, StoreBase):
    """The agent's database (SQLite file or PostgreSQL). Safe for one process's threads and
    asyncio loop plus other processes on the same database; see the package docstring for how."""


__all__ = [
    "APPEND_ONLY_TABLES", "Anchor", "AuditReport", "CHAINED_TABLES", "ClaimResult", "Head", "chained", "parse_head", "read_anchors", "ChainReport", "DECISION_COLUMNS", "FINAL_STATUSES", "GENESIS_HASH", "LABEL_PREFIX",
    "Database", "redact_url", "StoreUnavailableError", "LeaseLostError", "LeaseState", "lease_line", "this_holder",
    "MIGRATIONS", "MessageRef", "OutboxItem", "ProposalRow", "REDACTED", "SCHEMA_VERSION", "STATUSES", "Store",
    "StoreBusyError", "TABLES", "TRANSITIONS", "VoteOutcome", "VoteRow", "assert_no_secrets", "canonical",
    "connect", "dumps", "is_secret_key", "iso", "label_for", "migrate", "parse_ref", "parse_ts", "schema_version",
    "serialize_decision", "utc_now",
]
