"""The engine layer: one connection to SQLite or PostgreSQL through SQLAlchemy Core.

The store's queries are plain SQL text written once for both engines. They use `?` positional
placeholders (turned into SQLAlchemy named binds here, so the same text runs on sqlite3 and on
psycopg 3) or `:name` placeholders with a dict. What differs between the engines lives here and
nowhere else:

- the write transaction: SQLite `BEGIN IMMEDIATE`; PostgreSQL `BEGIN` + one transaction-scoped
  advisory lock (`pg_advisory_xact_lock`), so on both engines exactly one writer at a time reads
  and writes, and a compare-and-swap can never lose an update;
- DDL: in CREATE / ALTER TABLE, `INTEGER PRIMARY KEY` becomes an identity column and `REAL` a
  DOUBLE PRECISION on PostgreSQL (`ddl()`, applied by `execute()`), so a table is written once; triggers that refuse a change are written once as (event, table,
  condition, message) and rendered as a SQLite trigger or a PL/pgSQL one (`refuse_trigger()`);
- small expressions: a JSON field as text (`json_text()`), the database clock in epoch seconds
  (`now_epoch()`).

The connection is in driver autocommit; the store issues BEGIN / COMMIT / ROLLBACK / SAVEPOINT
itself, so nothing is ever left in a transaction it did not open. The password of a
PostgreSQL URL never leaves this module: `display` is the URL with it replaced by `***`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import TextClause, create_engine, event, inspect, text
from sqlalchemy.engine import URL, Connection, CursorResult, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import StaticPool

from .common import DEFAULT_BUSY_TIMEOUT, PAGE_SIZE, StoreBusyError, StoreUnavailableError

# The advisory lock every PostgreSQL write transaction takes (any 64-bit number, fixed per store).
PG_WRITE_LOCK = 0x63_63_6F_70_73  # "ccops"

Params = Sequence[Any] | dict[str, Any]


def parse_target(target: str | Path) -> URL:
    """A path (SQLite file), `sqlite:///path`, or `postgresql://user:pass@host:port/db`."""
    s = str(target)
    if "://" not in s:
        return URL.create("sqlite", database=s)
    try:
        url = make_url(s)
    except Exception:
        raise ValueError(f"DATABASE_URL is not a database URL (sqlite:///path or postgresql://user:pass@host/db): "
                         f"{_hide(s)}") from None
    if url.get_backend_name() in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite":
        return url
    raise ValueError(f"DATABASE_URL must be sqlite:///path or postgresql://...; got a {url.get_backend_name()} URL")


def _hide(s: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", s)


def redact_url(target: str | Path) -> str:
    """The database URL or path as safe to print: any password replaced by ***."""
    try:
        url = parse_target(target)
    except ValueError:
        return _hide(str(target))
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return url.set(drivername="postgresql").render_as_string(hide_password=True)


@functools.lru_cache(maxsize=4096)
def _to_named(sql: str) -> tuple[str, int]:
    """`?` placeholders (outside quotes) -> `:_p0, :_p1, ...`; returns (sql, count)."""
    out: list[str] = []
    n = 0
    quote: str | None = None
    for ch in sql:
        if quote:
            out.append(ch)
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append(f":_p{n}")
            n += 1
        else:
            out.append(ch)
    return "".join(out), n


@functools.lru_cache(maxsize=4096)
def _text(sql: str) -> TextClause:
    """One TextClause per statement text: building one parses the SQL for bind names, and the
    store runs the same few dozen statements all day (a tick's writes are ~10 of them)."""
    return text(sql)


def bind(sql: str, params: Params = ()) -> tuple[Any, dict[str, Any]]:
    if isinstance(params, dict):
        return _text(sql), params
    named, n = _to_named(sql)
    params = list(params)
    if n != len(params):
        raise ValueError(f"{n} placeholders but {len(params)} parameters in: {sql[:200]}")
    return _text(named), {f"_p{i}": v for i, v in enumerate(params)}


class Database:
    """One connection (shared by the store's threads under the store's lock) to one database."""

    def __init__(self, target: str | Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        self.url = parse_target(target)
        self.dialect = self.url.get_backend_name()  # "sqlite" | "postgresql"
        self.display = redact_url(target)
        self.busy_timeout = busy_timeout
        self.in_transaction = False
        if self.dialect == "sqlite":
            path = self.url.database or ":memory:"
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(self.url, poolclass=StaticPool,
                                        connect_args={"timeout": busy_timeout, "check_same_thread": False})
            event.listen(self.engine, "connect", self._sqlite_pragmas)
        else:
            ms = int(busy_timeout * 1000)
            self.engine = create_engine(self.url, poolclass=StaticPool, connect_args={
                "connect_timeout": max(1, int(busy_timeout)),
                "options": f"-c lock_timeout={ms} -c statement_timeout=0 -c TimeZone=UTC"})
        try:
            self.conn: Connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except OperationalError as exc:
            self.engine.dispose()
            raise StoreUnavailableError(f"cannot open the database {self.display}: {_first_line(exc)}") from None

    def _sqlite_pragmas(self, dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        path = self.url.database or ":memory:"
        c = dbapi_conn.cursor()
        c.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        # Decision rows are ~1.6 KB: 4 KB pages hold only two of them and waste a fifth of the
        # file. Takes effect only on a new, empty file (before the first write and the WAL switch).
        c.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        if path != ":memory:":
            c.execute("PRAGMA journal_mode = WAL")
        c.execute("PRAGMA foreign_keys = ON")
        c.execute("PRAGMA synchronous = FULL")  # an approval that was answered "ok" survives a power cut
        c.close()

    @property
    def is_pg(self) -> bool:
        return self.dialect == "postgresql"

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            self.engine.dispose()

    # --- statements -------------------------------------------------------------------------

    def execute(self, sql: str, params: Params = ()) -> CursorResult:
        try:
            if not self.is_pg:
                # SQLite takes the statement as written (`?` and `:name` are its own paramstyles):
                # no TextClause to compile per call, a third of a small statement's time.
                if isinstance(params, dict):
                    return self.conn.exec_driver_sql(sql, params)
                return self.conn.exec_driver_sql(sql, tuple(params)) if params else self.conn.exec_driver_sql(sql)
            if _DDL_TABLE.match(sql):
                sql = self.ddl(sql)
            stmt, values = bind(sql, params)
            return self.conn.execute(stmt, values)
        except DBAPIError as exc:
            if self.is_busy(exc):
                raise self.busy_error() from None
            raise

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        if not rows:
            return
        stmt, _ = bind(sql, rows[0])
        batch = [bind(sql, r)[1] for r in rows]
        self.conn.execute(stmt, batch)

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in self.execute(sql, params)]

    def scalar(self, sql: str, params: Params = ()) -> Any:
        row = self.execute(sql, params).fetchone()
        return row[0] if row else None

    def insert(self, table: str, row: dict[str, Any], pk: str | None = "id", *, or_ignore: bool = False) -> int | None:
        """INSERT one row (column names quoted: `user` is a reserved word on PostgreSQL); the new
        id. With or_ignore, a row a constraint refuses is skipped and 0 returned."""
        cols = ", ".join(f'"{c}"' for c in row)
        marks = ", ".join(f":{_bindname(c)}" for c in row)
        values = {_bindname(c): v for c, v in row.items()}
        sql = f"INSERT INTO {table} ({cols}) VALUES ({marks})" + (" ON CONFLICT DO NOTHING" if or_ignore else "")
        if pk is None:
            self.execute(sql, values)
            return None
        if self.is_pg:
            rid = self.execute(f"{sql} RETURNING {pk}", values).scalar()
            return 0 if rid is None else int(rid)
        cur = self.execute(sql, values)
        if or_ignore and cur.rowcount != 1:
            return 0
        return int(cur.lastrowid)

    # --- transactions -------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator["Database"]:
        """BEGIN IMMEDIATE (SQLite) or BEGIN + the store's advisory lock (PostgreSQL) ... COMMIT,
        rolled back on any error."""
        try:
            if self.is_pg:
                self.conn.exec_driver_sql("BEGIN")
                self.in_transaction = True
                self.conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")
            else:
                self.conn.exec_driver_sql("BEGIN IMMEDIATE")
                self.in_transaction = True
        except DBAPIError as exc:
            self._rollback()
            if self.is_busy(exc):
                raise self.busy_error() from None
            raise
        try:
            yield self
        except BaseException:
            self._rollback()
            raise
        try:
            self.conn.exec_driver_sql("COMMIT")
            self.in_transaction = False
        except DBAPIError as exc:
            self._rollback()
            if self.is_busy(exc):
                raise self.busy_error() from None
            raise

    def _rollback(self) -> None:
        if self.in_transaction:
            self.in_transaction = False
            try:
                self.conn.exec_driver_sql("ROLLBACK")
            except DBAPIError:
                pass  # the connection is gone: the server rolls back by itself

    @contextmanager
    def savepoint(self, name: str) -> Iterator["Database"]:
        self.conn.exec_driver_sql(f"SAVEPOINT {name}")
        try:
            yield self
        except BaseException:
            if self.in_transaction:
                try:
                    self.conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {name}")
                    self.conn.exec_driver_sql(f"RELEASE SAVEPOINT {name}")
                except DBAPIError:
                    pass
            raise
        else:
            self.conn.exec_driver_sql(f"RELEASE SAVEPOINT {name}")

    def is_busy(self, exc: BaseException) -> bool:
        orig = getattr(exc, "orig", exc)
        if self.is_pg:
            return getattr(orig, "sqlstate", None) in ("55P03", "40P01")  # lock_not_available, deadlock
        msg = str(orig).lower()
        return "locked" in msg or "busy" in msg

    def busy_error(self) -> StoreBusyError:
        return StoreBusyError(f"database is locked: another writer held {self.display} for more than "
                              f"{self.busy_timeout:g} s; retry in a moment, or stop the process that holds it")

    # --- schema helpers -----------------------------------------------------------------------

    def ddl(self, stmt: str) -> str:
        """One DDL text for both engines: SQLite's `INTEGER PRIMARY KEY` (the rowid) is an identity
        column on PostgreSQL, and `REAL` (8 bytes in SQLite) is DOUBLE PRECISION."""
        if not self.is_pg:
            return stmt
        stmt = re.sub(r"\bINTEGER PRIMARY KEY\b", "INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", stmt)
        return re.sub(r"\bREAL\b", "DOUBLE PRECISION", stmt)

    def refuse_trigger(self, name: str, timing_event: str, table: str, message: str, when: str | None = None) -> list[str]:
        """A trigger that aborts the statement with `message` (when `when` holds, if given).
        `timing_event`: e.g. "BEFORE UPDATE", "BEFORE DELETE", "BEFORE UPDATE OF a, b"."""
        msg = message.replace("'", "''")
        if not self.is_pg:
            cond = f" FOR EACH ROW WHEN {when}" if when else ""
            return [f"CREATE TRIGGER {name} {timing_event} ON {table}{cond} "
                    f"BEGIN SELECT RAISE(ABORT, '{msg}'); END"]
        # PL/pgSQL: one function per trigger, the condition as an IF (so it may hold subqueries,
        # which a PostgreSQL trigger's WHEN may not).
        fn = f"{name}_fn"
        return [f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF {when or 'TRUE'} THEN RAISE EXCEPTION '{msg}' USING ERRCODE = 'integrity_constraint_violation'; "
                f"END IF; IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; RETURN NEW; END $$",
                f"CREATE TRIGGER {name} {timing_event} ON {table} FOR EACH ROW EXECUTE FUNCTION {fn}()"]

    def drop_trigger(self, name: str, table: str) -> list[str]:
        if self.is_pg:
            return [f"DROP TRIGGER {name} ON {table}", f"DROP FUNCTION {name}_fn()"]
        return [f"DROP TRIGGER {name}"]

    def trigger_support(self) -> list[str]:
        return []

    def json_text(self, expr: str, key: str) -> str:
        """The text value of `key` of the JSON text `expr` (a dotted key, `sel.delta`, goes down objects)."""
        if self.is_pg:
            if "." in key:
                return f"(({expr})::json #>> '{{{key.replace('.', ',')}}}')"
            return f"(({expr})::json ->> '{key}')"
        return f"json_extract({expr}, '$.{key}')"

    def json_number(self, expr: str, key: str) -> str:
        """The numeric value of `key` of the JSON text `expr` (dotted as in `json_text`)."""
        if self.is_pg:
            return f"{self.json_text(expr, key)}::double precision"
        return f"json_extract({expr}, '$.{key}')"

    def now_epoch(self) -> str:
        """The database's clock, in seconds since the epoch (one clock for every host)."""
        if self.is_pg:
            return "EXTRACT(EPOCH FROM clock_timestamp())::double precision"
        return "((julianday('now') - 2440587.5) * 86400.0)"

    def has_table(self, name: str) -> bool:
        return name in self.table_names()

    def table_names(self) -> list[str]:
        if self.is_pg:
            return [r[0] for r in self.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
                "AND table_type = 'BASE TABLE' ORDER BY table_name")]
        return [r[0] for r in self.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]

    def columns(self, table: str) -> list[str]:
        return [c["name"] for c in inspect(self.conn).get_columns(table)]

    def index_names(self, table: str) -> set[str]:
        return {i["name"] for i in inspect(self.conn).get_indexes(table)}

    def count(self, table: str) -> int:
        return int(self.scalar(f"SELECT COUNT(*) FROM {table}"))


_DDL_TABLE = re.compile(r"\s*(CREATE|ALTER)\s+TABLE\b", re.I)


def _bindname(col: str) -> str:
    return "c_" + re.sub(r"\W", "_", col)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", exc)
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def connect(target: str | Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> Database:
    return Database(target, busy_timeout)
