"""The store's plumbing: one connection, the in-process lock, `write()` and query helpers."""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any



from chatops.redact import redact, redact_value

from .common import DEFAULT_BUSY_TIMEOUT, _ts_param, iso, utc_now
from .db import Database
from .schema import connect, migrate


class RedactingConnection:
    """The connection as `write()` hands it out: every string parameter of every statement passes
    the redactor first (the store's write boundary: no module can store a secret by forgetting)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Database) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        if isinstance(params, dict):
            params = {k: redact(v) if isinstance(v, str) else v for k, v in params.items()}
        else:
            params = [redact(v) if isinstance(v, str) else v for v in params]
        return self._conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)



class StoreBase:
    """Connection, locking and the one write path; the record mixins build on it."""

    def __init__(self, target: str | Path, *, now: Callable[[], datetime] | None = None,
                 busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        """`target`: a SQLite file path, `sqlite:///path` or `postgresql://user:pass@host:port/db`."""
        self.busy_timeout = busy_timeout
        self._now = now or utc_now
        self._lock = threading.RLock()
        self._depth = 0  # nesting of write() in the thread that holds the lock
        self._writer: int | None = None  # the thread inside write(), which reads its own transaction
        self._local = threading.local()  # per-thread read connections (SQLite WAL: they never wait on a writer)
        self._readers: list[sqlite3.Connection] = []
        self.fence: Callable[[Database], None] | None = None  # the leader lease's check, run in every write
        self.db = connect(target, busy_timeout)
        self.path = self.db.display  # for messages: never the password
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
            for r in self._readers:
                r.close()
            self._readers.clear()
            self.db.close()

    def __enter__(self) -> "StoreBase":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def now(self) -> datetime:
        return self._now()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if not self._lock.acquire(timeout=self.busy_timeout):
            raise self.db.busy_error()
        try:
            yield
        finally:
            self._lock.release()

    @contextmanager
    def write(self, *, fenced: bool = True) -> Iterator[Database]:
        """The one way to write: in-process lock + one write transaction (BEGIN IMMEDIATE on SQLite,
        BEGIN + the store's advisory lock on PostgreSQL) ... COMMIT (rolled back on error). A
        leader's store first runs its lease fence in the same transaction, so a write by a bot
        whose term is stale is refused by the database. Nested use in the same thread becomes a
        savepoint of the outer transaction. Keep the block short and never `await` inside it (the
        lock is re-entrant per thread, not per task)."""
        with self._locked():
            db = self.db
            if self._depth:
                self._depth += 1
                try:
                    with db.savepoint(f"w{self._depth}"):
                        yield RedactingConnection(db)
                finally:
                    self._depth -= 1
                return
            self._depth = 1
            self._writer = threading.get_ident()
            try:
                with db.transaction():
                    if fenced and self.fence is not None:
                        self.fence(db)
                    yield RedactingConnection(db)
            finally:
                self._depth = 0
                self._writer = None

    def _reader(self) -> sqlite3.Connection | None:
        """This thread's read connection to a SQLite file; None inside this thread's own write (it
        must see its transaction), for an in-memory database and on PostgreSQL. In WAL mode a reader never waits for a writer,
        in this process or another (even one holding BEGIN EXCLUSIVE): a locked database delays
        writes, not the reads that buttons and status answers need."""
        path = None if self.db.is_pg else (self.db.url.database or ":memory:")
        if path is None or path == ":memory:" or self._writer == threading.get_ident():
            return None  # PostgreSQL (MVCC: reads never wait on a writer anyway) or in-memory SQLite
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def _rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        reader = self._reader()
        if reader is None:
            with self._locked():
                return self.db.query(sql, params)
        try:
            cur = reader.execute(sql, params)
            names = [d[0] for d in cur.description or ()]
            return [dict(zip(names, r)) for r in cur.fetchall()]
        except sqlite3.OperationalError as exc:
            if self.db.is_busy(exc):
                raise self.db.busy_error() from None
            raise

    def _row(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        reader = self._reader()
        if reader is None:
            with self._locked():
                return self.db.scalar(sql, params)
        row = reader.execute(sql, params).fetchone()
        return row[0] if row else None

    def _insert(self, conn: Any, table: str, row: dict[str, Any], *, or_ignore: bool = False) -> int:
        """INSERT one row (strings redacted); a row of an audit table also joins the audit chain in
        the same transaction (chain.CHAINED_TABLES). With or_ignore, 0 when a constraint ignored it."""
        row = {k: redact_value(v) if isinstance(v, str) else v for k, v in row.items()}
        rid = conn.insert(table, row, or_ignore=or_ignore)
        if not rid:
            return 0
        self._chain_row(conn, table, rid)  # type: ignore[attr-defined]
        return rid

    def count(self, table: str) -> int:
        with self._locked():
            return self.db.count(table)

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
