"""The audit chain: every row of every audit table, hash-linked, and checked against anchors.

`audit_chain` has one entry per audit row, in the order they were written:
`(seq, tbl, row_id, row_hash, prev_hash, hash)` with `row_hash = sha256(table + canonical JSON of
the row's non-null columns)` and `hash = sha256(prev_hash + seq + table + row_id + row_hash)`. The
entry is written by `StoreBase._insert` in the same transaction as the row, so no module has to
remember it. `verify_audit` recomputes everything: a changed row, a deleted row, a row inserted
behind the store's back, a broken link.

What a database cannot show by itself is a rewritten suffix (rows changed and every later hash
recomputed) or a cut-off tail: for that the head (hash and entry count) is copied outside the
database, into AUDIT_ANCHOR_FILE and the daily chat summary, and `verify_audit(anchors)` checks
the chain still passes through every anchor.

A table added later joins the chain with one line, `chained("fills")`, next to its migration (the
table needs an INTEGER PRIMARY KEY; rows that exist before it is registered are chained by calling
`chain_backfill(conn, table)` in that migration).
"""

from __future__ import annotations

import hashlib
import os
from sqlalchemy.exc import DBAPIError
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .common import APPEND_ONLY_TABLES, GENESIS_HASH, canonical

CHAINED_TABLES: list[str] = list(APPEND_ONLY_TABLES)


def chained(table: str) -> None:
    """Register an audit table: its rows join the chain (one line per table, next to its migration)."""
    if table not in CHAINED_TABLES:
        CHAINED_TABLES.append(table)


def row_hash(table: str, row: dict[str, Any]) -> str:
    content = {k: v for k, v in row.items() if v is not None}
    return hashlib.sha256((table + canonical(content)).encode()).hexdigest()


def link_hash(prev_hash: str, seq: int, table: str, row_id: int, rhash: str) -> str:
    return hashlib.sha256(f"{prev_hash}|{seq}|{table}|{row_id}|{rhash}".encode()).hexdigest()


def _fetch(conn: Any, table: str, row_id: int) -> dict[str, Any] | None:
    r = conn.execute(f"SELECT * FROM {table} WHERE id = ?", [row_id]).fetchone()
    return None if r is None else dict(r._mapping)


def chain_append(conn: Any, table: str, row_id: int) -> None:
    """Append the entry of `table` row `row_id` (read back as stored) to the chain."""
    row = _fetch(conn, table, row_id)
    if row is None:
        raise RuntimeError(f"audit chain: {table} #{row_id} vanished inside its own transaction")
    last = conn.execute("SELECT seq, hash FROM audit_chain ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
    rh = row_hash(table, row)
    conn.execute("INSERT INTO audit_chain (seq, tbl, row_id, row_hash, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?)",
                 [seq, table, row_id, rh, prev, link_hash(prev, seq, table, row_id, rh)])


def chain_backfill(conn: Any, table: str, batch: int = 5000) -> int:
    """Chain the rows of `table` that have no entry yet (in id order); how many. The same entries
    chain_append would make, read and written a batch at a time (a million-row upgrade takes
    seconds, not a statement per row)."""
    last = conn.execute("SELECT seq, hash FROM audit_chain ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (last[0], last[1]) if last else (0, GENESIS_HASH)
    done, after = 0, 0
    while True:
        rows = conn.execute(f"SELECT * FROM {table} WHERE id > ? AND id NOT IN (SELECT row_id FROM audit_chain "
                            f"WHERE tbl = ?) ORDER BY id LIMIT ?", [after, table, batch]).fetchall()
        if not rows:
            return done
        entries = []
        for r in rows:
            row = dict(r._mapping)
            seq += 1
            rh = row_hash(table, row)
            h = link_hash(prev, seq, table, row["id"], rh)
            entries.append([seq, table, row["id"], rh, prev, h])
            prev, after = h, row["id"]
        conn.executemany("INSERT INTO audit_chain (seq, tbl, row_id, row_hash, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?)",
                         entries)
        done += len(rows)


# --- heads and anchors ------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    hash: str
    count: int  # entries in the chain (= seq of the last one)

    def as_text(self) -> str:
        return f"{self.hash}:{self.count}"


@dataclass(frozen=True)
class Anchor:
    count: int
    hash: str
    source: str  # where it came from (file:line, --head)


def parse_head(text: str, source: str = "--head") -> Anchor:
    """`HASH:N` -> Anchor; ValueError with one line otherwise."""
    h, sep, n = text.strip().rpartition(":")
    if not sep or len(h) != 64 or any(c not in "0123456789abcdef" for c in h) or not n.isdigit():
        raise ValueError(f"bad head {text!r}: expected HASH:N (64 hex digits, a colon, the entry count), "
                         f"as `chatops audit head` prints it")
    return Anchor(int(n), h, source)


def append_anchor(path: str | Path, head: Head, *, why: str, now: datetime | None = None) -> None:
    """Append one line `<UTC time> <HASH>:<N> <why>` to the anchor file (created if missing), synced."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    ts = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, f"{ts} {head.as_text()} {why}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_anchors(path: str | Path) -> list[Anchor]:
    """The anchors of an anchor file (lines `<time> HASH:N [why]`); ValueError names a bad line."""
    out = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts or line.startswith("#"):
            continue
        if len(parts) < 2:
            raise ValueError(f"{path}:{i}: expected '<time> HASH:N', got {line[:80]!r}")
        out.append(parse_head(parts[1], f"{path}:{i} ({parts[0]})"))
    return out


@dataclass
class AuditReport:
    ok: bool
    head: Head
    problems: list[str] = field(default_factory=list)
    anchors_checked: int = 0

    def as_text(self) -> str:
        if self.ok:
            return (f"audit chain OK: {self.head.count} rows chained, head {self.head.as_text()}, "
                    f"{self.anchors_checked} anchor(s) matched")
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"audit chain BROKEN: {self.problems[0]}{more}"


class ChainMixin:
    def _chain_row(self, conn: Any, table: str, row_id: int) -> None:
        if table in CHAINED_TABLES:
            chain_append(conn, table, row_id)

    def audit_head(self) -> Head:
        """The chain's head: the hash of its last entry and the number of entries."""
        r = self._row("SELECT seq, hash FROM audit_chain ORDER BY seq DESC LIMIT 1")  # type: ignore[attr-defined]
        return Head(r["hash"], r["seq"]) if r else Head(GENESIS_HASH, 0)

    def verify_audit(self, anchors: list[Anchor] = (), *, batch: int = 5000, max_problems: int = 20) -> AuditReport:
        """Recompute the chain and every chained row; check it passes through every anchor."""
        problems: list[str] = []
        prev, seq, by_seq = GENESIS_HASH, 0, {}
        wanted = {a.count for a in anchors}
        per_table: dict[str, int] = {}
        while len(problems) < max_problems:
            rows = self._rows("SELECT * FROM audit_chain WHERE seq > ? ORDER BY seq LIMIT ?",  # type: ignore[attr-defined]
                              [seq, batch])
            if not rows:
                break
            fetched = self._rows_of(rows)
            for e in rows:
                s, t, rid = e["seq"], e["tbl"], e["row_id"]
                if s != seq + 1:
                    problems.append(f"chain entries {seq + 1}..{s - 1} are missing (deleted)")
                if e["prev_hash"] != prev:
                    problems.append(f"chain entry {s} does not link to entry {s - 1}: an entry before it was "
                                    f"deleted, inserted or rewritten")
                if e["hash"] != link_hash(e["prev_hash"], s, t, rid, e["row_hash"]):
                    problems.append(f"chain entry {s} ({t} #{rid}) was edited: its hash does not match")
                row = fetched.get((t, rid))
                if row is None:
                    problems.append(f"{t} #{rid} (chain entry {s}) was deleted")
                elif row_hash(t, row) != e["row_hash"]:
                    problems.append(f"{t} #{rid} (chain entry {s}) was rewritten: its content does not match")
                per_table[t] = per_table.get(t, 0) + 1
                if s in wanted:
                    by_seq[s] = e["hash"]
                prev, seq = e["hash"], s
        head = Head(prev, seq)
        with self._locked():  # type: ignore[attr-defined]
            existing = set(self.db.table_names())  # type: ignore[attr-defined]
        for t in CHAINED_TABLES:
            if t not in existing:
                continue
            n = self._scalar(f"SELECT COUNT(*) FROM {t}")  # type: ignore[attr-defined]
            if n > per_table.get(t, 0):
                stray = self._rows(  # type: ignore[attr-defined]
                    f"SELECT id FROM {t} WHERE id NOT IN (SELECT row_id FROM audit_chain WHERE tbl = ?) "
                    f"ORDER BY id LIMIT 3", [t])
                problems.append(f"{t} has {n - per_table.get(t, 0)} row(s) not in the chain (inserted behind the "
                                f"store's back), e.g. #{', #'.join(str(r['id']) for r in stray)}")
        for a in anchors:
            if a.count > head.count:
                problems.append(f"truncated: the anchor {a.source} says {a.count} entries, the chain has only "
                                f"{head.count} ({a.count - head.count} missing at the end)")
            elif a.count and by_seq.get(a.count) != a.hash:
                problems.append(f"rewritten: chain entry {a.count} differs from the anchor {a.source} (the rows up to "
                                f"it were changed and their hashes recomputed)")
        return AuditReport(not problems, head, problems, len(anchors))

    def _rows_of(self, entries: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
        by_table: dict[str, list[int]] = {}
        for e in entries:
            by_table.setdefault(e["tbl"], []).append(e["row_id"])
        out: dict[tuple[str, int], dict[str, Any]] = {}
        for t, ids in by_table.items():
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                marks = ", ".join("?" for _ in part)
                try:
                    rows = self._rows(f"SELECT * FROM {t} WHERE id IN ({marks})", part)  # type: ignore[attr-defined]
                except DBAPIError:  # the table itself was dropped
                    rows = []
                for r in rows:
                    out[(t, r["id"])] = r
        return out
