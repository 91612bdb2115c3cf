"""Schema and migrations, written once for SQLite and PostgreSQL (see `db.py` for what differs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from .common import DEFAULT_BUSY_TIMEOUT, STATUSES, TRANSITIONS, V1_APPEND_ONLY_TABLES, iso, utc_now
from .db import Database, connect
from .lease import lease_migration



DECISION_COLUMNS = ("ts", "underlying", "decision_source", "proposed_action", "final_action", "final_symbol",
                    "risk_allowed", "requests", "credits", "config_id", "state_json", "proposed_json", "risk_json",
                    "final_json", "execution_json", "shadow_json", "timings_json")


# --- schema and migrations --------------------------------------------------------------------
#
# An ordered list of functions, a `_migrations` table (version, name, applied_at), on SQLite
# mirrored in PRAGMA user_version; each migration runs once, in order, inside the write
# transaction (BEGIN IMMEDIATE, or BEGIN + the advisory lock on PostgreSQL, whose DDL is
# transactional too), and re-checks the version after taking the write lock, so two processes
# opening a fresh database at once never both run migration 1.


def _append_only_triggers(db: Database, table: str) -> list[str]:
    return (db.refuse_trigger(f"{table}_no_update", "BEFORE UPDATE", table, f"append-only table: {table}")
            + db.refuse_trigger(f"{table}_no_delete", "BEFORE DELETE", table, f"append-only table: {table}"))


def _proposal_triggers(db: Database) -> list[str]:
    return (db.refuse_trigger("proposals_no_delete", "BEFORE DELETE", "proposals", "proposals are never deleted")
            + db.refuse_trigger("proposals_immutable", "BEFORE UPDATE OF id, decision_id, created_at, expires_at, "
                                "underlying, action, symbol, roll_from, size, approvals_required, action_json",
                                "proposals", "proposal content is immutable: only its status changes")
            + db.refuse_trigger("proposals_label_once", "BEFORE UPDATE OF label", "proposals",
                                "a proposal label is set once",
                                when="OLD.label IS NOT NULL AND (NEW.label IS NULL OR NEW.label <> OLD.label)"))


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
    """CREATE TABLE votes (
        id INTEGER PRIMARY KEY,
        proposal_id INTEGER NOT NULL REFERENCES proposals(id),
        "user" TEXT NOT NULL,
        channel TEXT NOT NULL,
        vote TEXT NOT NULL CHECK (vote IN ('approve', 'reject')),
        reason TEXT,
        ts TEXT NOT NULL,
        UNIQUE (proposal_id, "user"))""",
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
        "user" TEXT NOT NULL,
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
]

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
    for stmt in db.trigger_support() + _V1_CORE + _proposal_triggers(db):
        db.execute(stmt)
    for table in V1_APPEND_ONLY_TABLES:
        for stmt in _append_only_triggers(db, table):
            db.execute(stmt)


def _m002_review_indexes(db: Database) -> None:
    """Indexes that keep review and the state machine fast on a year (or ten) of ticks."""
    for stmt in _V2_REVIEW_INDEXES:
        db.execute(stmt)


def _m003_llm_token_details(db: Database) -> None:
    """Reasoning tokens (part of tokens_out) and prompt-cache hits (part of tokens_in) per LLM call."""
    db.execute("ALTER TABLE llm_calls ADD COLUMN reasoning_tokens INTEGER")
    db.execute("ALTER TABLE llm_calls ADD COLUMN cached_tokens INTEGER")


def state_machine_trigger(db: Database) -> list[str]:
    """The trigger that refuses a status change that is not an edge of TRANSITIONS. A migration
    that adds an edge drops `proposals_state_machine` and re-creates it with this."""
    edges = ", ".join(f"'{a}>{b}'" for a, tos in sorted(TRANSITIONS.items()) for b in sorted(tos))
    return db.refuse_trigger("proposals_state_machine", "BEFORE UPDATE OF status", "proposals",
                             "illegal proposal transition: not an edge of the state machine",
                             when=f"NEW.status IS DISTINCT FROM OLD.status AND (OLD.status || '>' || NEW.status) "
                                  f"NOT IN ({edges})")


# Quorum belongs to the proposal: approved (and executing) only with approvals_required distinct
# approving persons and no reject, or, for a proposal made in APPROVAL_MODE=auto, the vote of `auto`.
QUORUM_SQL = (
    "NOT EXISTS (SELECT 1 FROM votes WHERE proposal_id = {p}.id AND vote = 'reject') AND ("
    "(SELECT COUNT(DISTINCT person) FROM votes WHERE proposal_id = {p}.id AND vote = 'approve' "
    "AND person <> 'auto') >= {p}.approvals_required OR ({p}.approval_mode = 'auto' AND EXISTS (SELECT 1 FROM votes "
    "WHERE proposal_id = {p}.id AND vote = 'approve' AND person = 'auto')))")


def _v4_authority(db: Database) -> list[str]:
    return [
        """CREATE TABLE audit_chain (
            seq INTEGER PRIMARY KEY,
            tbl TEXT NOT NULL,
            row_id INTEGER NOT NULL,
            row_hash TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL,
            UNIQUE (tbl, row_id))""",
        *_append_only_triggers(db, "audit_chain"),
        # votes: one per PERSON (a person with identities on several channels counts once); rebuilt
        # because the old UNIQUE (proposal_id, user) made console 42 collide with telegram 42.
        *db.drop_trigger("votes_no_update", "votes"),
        *db.drop_trigger("votes_no_delete", "votes"),
        """CREATE TABLE votes_v4 (
            id INTEGER PRIMARY KEY,
            proposal_id INTEGER NOT NULL REFERENCES proposals(id),
            "user" TEXT NOT NULL,
            channel TEXT NOT NULL,
            vote TEXT NOT NULL CHECK (vote IN ('approve', 'reject')),
            reason TEXT,
            ts TEXT NOT NULL,
            person TEXT NOT NULL,
            UNIQUE (proposal_id, person))""",
        'INSERT INTO votes_v4 (id, proposal_id, "user", channel, vote, reason, ts, person) '
        """SELECT id, proposal_id, "user", channel, vote, reason, ts, CASE WHEN "user" = 'auto' THEN 'auto' """
        """WHEN channel IN ('cli', 'terminal') THEN 'console:' || "user" ELSE channel || ':' || "user" END FROM votes""",
        "DROP TABLE votes",
        "ALTER TABLE votes_v4 RENAME TO votes",
        *(["SELECT setval(pg_get_serial_sequence('votes', 'id'), COALESCE((SELECT MAX(id) FROM votes), 0) + 1, false)"]
          if db.is_pg else []),
        *_append_only_triggers(db, "votes"),
        *db.refuse_trigger("votes_only_pending", "BEFORE INSERT", "votes", "a vote is only taken on a pending proposal",
                           when="(SELECT status FROM proposals WHERE id = NEW.proposal_id) IS DISTINCT FROM 'pending'"),
        # proposals: the mode they were made in (whether `auto` may approve them) is part of them.
        "ALTER TABLE proposals ADD COLUMN approval_mode TEXT NOT NULL DEFAULT 'manual' "
        "CHECK (approval_mode IN ('manual', 'auto'))",
        *db.drop_trigger("proposals_immutable", "proposals"),
        *db.refuse_trigger("proposals_immutable", "BEFORE UPDATE OF id, decision_id, created_at, expires_at, underlying, "
                           "action, symbol, roll_from, size, approvals_required, approval_mode, action_json", "proposals",
                           "proposal content is immutable: only its status changes"),
        *db.refuse_trigger("proposals_born_pending", "BEFORE INSERT", "proposals", "a proposal starts pending",
                           when="NEW.status IS DISTINCT FROM 'pending'"),
        *state_machine_trigger(db),
        *db.refuse_trigger("proposals_quorum", "BEFORE UPDATE OF status", "proposals",
                           "quorum not met: not enough distinct approving persons for this proposal",
                           when="NEW.status IN ('approved', 'executing') AND NEW.status IS DISTINCT FROM OLD.status "
                                "AND NOT (" + QUORUM_SQL.format(p="NEW") + ")"),
    ]


def _m004_authority(db: Database) -> None:
    """Votes per person, the proposal's own approval mode, state-machine and quorum triggers, and
    the audit chain over every audit table (existing rows chained, events first)."""
    from .chain import CHAINED_TABLES, chain_backfill

    for stmt in _v4_authority(db):
        db.execute(stmt)
    for table in CHAINED_TABLES:
        if db.has_table(table):
            chain_backfill(db, table)


def _m008_history_index(db: Database) -> None:
    """The policy's history reads executed proposals of a window, newest last: an index that ends
    the scan at the window instead of at the first executed proposal ever."""
    db.execute("CREATE INDEX IF NOT EXISTS idx_proposals_history ON proposals(underlying, status, updated_at)")


from .orders import _m005_order_tracking  # noqa: E402  (its DDL lives with its records)


from .ledger import _m007_ledger  # noqa: E402  (its DDL lives with its records)


Migration = tuple[str, Callable[[Database], None]]
MIGRATIONS: tuple[Migration, ...] = (
    ("core", _m001_core),
    ("review_indexes", _m002_review_indexes),
    ("llm_token_details", _m003_llm_token_details),
    ("authority", _m004_authority),
    ("order_tracking", _m005_order_tracking),
    ("leader_lease", lease_migration),
    ("ledger", _m007_ledger),
    ("history_index", _m008_history_index),
)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(db: Database) -> int:
    if not db.has_table("_migrations"):
        return 0
    return db.scalar("SELECT MAX(version) FROM _migrations") or 0


def migrate(db: Database, migrations: Sequence[Migration] = MIGRATIONS, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
            now: Callable[[], datetime] = utc_now) -> list[int]:
    """Apply the pending migrations in order, each once, each in its own write transaction
    together with its `_migrations` row. Returns the versions applied now."""
    if not db.has_table("_migrations"):
        with db.transaction():
            db.execute("CREATE TABLE IF NOT EXISTS _migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                       "applied_at TEXT NOT NULL)")
    applied = []
    current = schema_version(db)
    if current > len(migrations) and migrations is MIGRATIONS:
        raise RuntimeError(f"database schema v{current} is newer than this code (v{len(migrations)}): "
                           f"upgrade the code before opening {db.display}")
    for version, (name, fn) in enumerate(migrations, start=1):
        if version <= current:
            continue
        with db.transaction():
            # Re-check under the write lock: another process may have applied it meanwhile.
            if schema_version(db) >= version:
                continue
            fn(db)
            db.execute("INSERT INTO _migrations (version, name, applied_at) VALUES (?, ?, ?)",
                       [version, name, iso(now())])
            if not db.is_pg:
                db.execute(f"PRAGMA user_version = {version}")
        applied.append(version)
    return applied


__all__ = ["DECISION_COLUMNS", "MIGRATIONS", "SCHEMA_VERSION", "Database", "connect", "migrate", "schema_version"]
