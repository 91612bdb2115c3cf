"""The leader lease: one row saying which bot leads, under which term, until when (database clock).

Any number of bots share one database; exactly one holds the lease and acts. A bot takes the lease
when it is free or expired (the term goes up by one each time it changes hands, or lapses), and
renews it well before it expires. Every write of the leading bot's store runs its fence first, in
the same write transaction: `UPDATE leader_lease SET fenced_term = <its term>`, which a trigger
refuses unless that term is still the lease's and the lease has not expired. Writes are serialized
(BEGIN IMMEDIATE / the advisory lock), so a deposed leader's write is either before the takeover
or refused by the database: it cannot act after another bot leads.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from .db import Database

FENCE_MESSAGE = "stale leader term: this bot no longer holds the leader lease"


class LeaseLostError(RuntimeError):
    """This bot's leader lease expired or passed to another bot: it must stop acting."""


@dataclass(frozen=True)
class LeaseState:
    holder: str | None  # "host:pid"
    term: int
    expires_in: float  # seconds (database clock); <= 0: expired
    mine: bool
    renewed_ago: float | None = None


def lease_migration(db: Database) -> None:
    """The lease row, the fence trigger, and the bots seen (leader and standbys)."""
    for stmt in [
        """CREATE TABLE leader_lease (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            holder TEXT,                         -- host:pid of the leading bot
            term INTEGER NOT NULL,               -- +1 each time the lease changes hands or lapses
            acquired_at REAL,                    -- seconds since the epoch, database clock
            renewed_at REAL,
            expires_at REAL NOT NULL,
            fenced_term INTEGER NOT NULL)        -- written by every fenced write; checked by the trigger""",
        "INSERT INTO leader_lease (id, holder, term, expires_at, fenced_term) VALUES (1, NULL, 0, 0, 0)",
        """CREATE TABLE bot_instances (
            holder TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('leader', 'standby')),
            term INTEGER,
            started_at REAL NOT NULL,
            seen_at REAL NOT NULL)""",
    ] + db.refuse_trigger("leader_lease_fence", "BEFORE UPDATE OF fenced_term", "leader_lease", FENCE_MESSAGE,
                          when=f"NEW.fenced_term <> OLD.term OR OLD.expires_at <= {db.now_epoch()}") \
      + db.refuse_trigger("leader_lease_no_delete", "BEFORE DELETE", "leader_lease", "the lease row is never deleted"):
        db.execute(stmt)


def this_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _dead_here(holder: str | None) -> bool:
    """The holder is a process of this host that no longer exists (SIGKILLed, crashed)."""
    if not holder or ":" not in holder:
        return False
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LeaseMixin:
    def acquire_lease(self, holder: str, lease_sec: float, term: int | None = None) -> LeaseState:
        """Renew `holder`'s lease of `term`, or take a free or expired lease (a new term), or
        report who holds it. Never fenced: it is how a bot gets (or keeps) the right to write."""
        with self.write(fenced=False) as db:
            now = db.scalar(f"SELECT {db.now_epoch()}")
            row = db.execute("SELECT holder, term, expires_at, renewed_at FROM leader_lease WHERE id = 1").fetchone()
            cur_holder, cur_term, expires_at, renewed_at = row
            if cur_holder == holder and term is not None and cur_term == term and expires_at > now:
                db.execute("UPDATE leader_lease SET renewed_at = ?, expires_at = ? WHERE id = 1 AND term = ?",
                           [now, now + lease_sec, term])
                self._seen(db, holder, "leader", term, now)
                return LeaseState(holder, term, lease_sec, True, 0.0)
            if expires_at <= now or cur_holder is None or _dead_here(cur_holder):
                new_term = cur_term + 1
                db.execute("UPDATE leader_lease SET holder = ?, term = ?, acquired_at = ?, renewed_at = ?, "
                           "expires_at = ? WHERE id = 1", [holder, new_term, now, now, now + lease_sec])
                self._seen(db, holder, "leader", new_term, now)
                self.append_event("leader_elected", actor=holder, channel="bot",
                                  reason=f"term {new_term}" + (f"; took over from {cur_holder}" if cur_holder else ""),
                                  data={"term": new_term, "previous": cur_holder, "lease_sec": lease_sec})
                return LeaseState(holder, new_term, lease_sec, True, 0.0)
            self._seen(db, holder, "standby", None, now)
            return LeaseState(cur_holder, cur_term, expires_at - now, False,
                              None if renewed_at is None else now - renewed_at)

    def _seen(self, db: Database, holder: str, role: str, term: int | None, now: float) -> None:
        db.execute("INSERT INTO bot_instances (holder, role, term, started_at, seen_at) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT (holder) DO UPDATE SET role = excluded.role, term = excluded.term, "
                   "seen_at = excluded.seen_at", [holder, role, term, now, now])

    def release_lease(self, holder: str, term: int) -> bool:
        """A clean stop: the lease ends now, so a standby takes over at its next look."""
        with self.write(fenced=False) as db:
            db.execute("DELETE FROM bot_instances WHERE holder = ?", [holder])
            cur = db.execute("UPDATE leader_lease SET expires_at = 0 WHERE id = 1 AND holder = ? AND term = ?",
                             [holder, term])
            return cur.rowcount == 1

    def forget_bot(self, holder: str) -> None:
        with self.write(fenced=False) as db:
            db.execute("DELETE FROM bot_instances WHERE holder = ?", [holder])

    @staticmethod
    def fence_write(db: Database, term: int) -> None:
        """Run inside a write transaction: refused by the database unless `term` still leads."""
        try:
            db.execute("UPDATE leader_lease SET fenced_term = ? WHERE id = 1", [term])
        except IntegrityError as exc:
            if FENCE_MESSAGE in str(exc):
                raise LeaseLostError(f"{FENCE_MESSAGE} (term {term}): write refused") from None
            raise

    def lease_status(self, lease_sec: float) -> dict[str, Any]:
        """Who leads (term, seconds left, last renewal) and the standbys seen lately."""
        with self._locked():
            db = self.db
            now = db.scalar(f"SELECT {db.now_epoch()}")
            r = db.query("SELECT holder, term, expires_at, renewed_at FROM leader_lease WHERE id = 1")[0]
            bots = db.query("SELECT holder, role, seen_at FROM bot_instances WHERE seen_at >= ? ORDER BY holder",
                            [now - 3 * lease_sec])
        live = r["holder"] is not None and r["expires_at"] > now
        return {"leader": r["holder"] if live else None, "term": r["term"],
                "expires_in": round(r["expires_at"] - now, 1) if live else None,
                "renewed_ago": round(now - r["renewed_at"], 1) if r["renewed_at"] else None,
                "last_leader": r["holder"],
                "standbys": [b["holder"] for b in bots if b["role"] == "standby" and b["holder"] != r["holder"]]}


def lease_line(status: dict[str, Any]) -> str:
    """One line for `chatops status`."""
    standbys = status["standbys"]
    sb = f"; standby: {', '.join(standbys)}" if standbys else "; no standby"
    if status["leader"]:
        return (f"Leader: {status['leader']} (term {status['term']}, lease renewed {status['renewed_ago']:.1f}s ago, "
                f"{status['expires_in']:.1f}s left){sb}")
    if status["last_leader"]:
        return f"Leader: none (the lease of {status['last_leader']}, term {status['term']}, has expired){sb}"
    return f"Leader: none (no bot has run on this database){sb}"
