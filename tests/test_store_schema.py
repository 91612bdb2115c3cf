"""The store on both engines: migrations, append-only audit, a locked database, labels per database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from agent.models import Action, ActionType
from agent.tick import config_snapshot
from chatops import store as store_mod
from chatops.store import common as store_common
from chatops.store import (APPEND_ONLY_TABLES, MIGRATIONS, SCHEMA_VERSION, Store, StoreBusyError, connect, label_for,
                           migrate, schema_version, serialize_decision)
from tests.builders import NOW, settings
from tests.store_helpers import (Clock, clock, decision, drop_trigger, execution_result, full_store, kinds,  # noqa: F401
                                 new_proposal, open_action, raw, store)

ROOT = Path(__file__).resolve().parents[1]


# --- opening and migrations --------------------------------------------------------------------


def test_fresh_database_has_the_schema(store, target):
    names = set(store.db.table_names())
    for t in ("decisions", "proposals", "votes", "executions", "orders", "questions", "answers", "llm_calls", "events",
              "settings_changes", "flags", "messages", "outbox", "config_snapshots", "_migrations"):
        assert t in names
    assert schema_version(store.db) == SCHEMA_VERSION == len(MIGRATIONS)
    if store.db.is_pg:
        assert store.db.scalar("SELECT COUNT(*) FROM pg_trigger WHERE tgname = 'events_no_update'") == 1
        return
    assert Path(target).exists()  # parent dir created
    assert store.db.scalar("PRAGMA journal_mode") == "wal"
    assert store.db.scalar("PRAGMA foreign_keys") == 1
    assert store.db.scalar("PRAGMA busy_timeout") == 5000
    assert store.db.scalar("PRAGMA user_version") == SCHEMA_VERSION


def test_migrations_are_idempotent(target, clock):
    Store(target, now=clock).close()
    first = list(connect(target).query("SELECT * FROM _migrations ORDER BY version"))
    clock.advance(3600)
    s = Store(target, now=clock)
    assert migrate(s.db) == []  # nothing left to apply
    assert list(s.db.query("SELECT * FROM _migrations ORDER BY version")) == first
    assert [r["name"] for r in first] == [name for name, _ in MIGRATIONS]
    s.close()


def test_a_v1_database_is_upgraded_keeping_its_rows(target, clock):
    db = connect(target)
    assert migrate(db, MIGRATIONS[:1]) == [1]
    assert schema_version(db) == 1
    assert "idx_decisions_ts" not in db.index_names("decisions")
    row = serialize_decision(decision())
    row.pop("config_json")
    db.execute(f"INSERT INTO decisions ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))
    db.close()

    s = Store(target, now=clock)
    assert schema_version(s.db) == SCHEMA_VERSION
    assert s.db.index_names("decisions") >= {"idx_decisions_ts", "idx_decisions_action_ts"}
    assert s.db.index_names("events") >= {"idx_events_proposal"}
    old = s.get_decision(1)
    assert old["final_action"] == "DO_NOTHING" and old["state"]["n_cand"] == 11
    assert s.verify_audit().ok  # the old row joined the audit chain in the upgrade
    s.close()


def test_a_newer_schema_is_refused_with_one_line(target, clock):
    Store(target, now=clock).close()
    with raw(target) as c:
        c.execute("INSERT INTO _migrations VALUES (99, 'future', '2030-01-01T00:00:00.000000Z')")
    with pytest.raises(RuntimeError, match=r"schema v99 is newer than this code") as err:
        Store(target, now=clock)
    assert "\n" not in str(err.value)

@pytest.mark.parametrize("table", APPEND_ONLY_TABLES)
def test_audit_tables_refuse_update_and_delete(full_store, target, table):
    store, _ = full_store
    c = raw(target)
    assert c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] >= 1
    with pytest.raises(IntegrityError, match="append-only table"):
        c.execute(f"UPDATE {table} SET id = id")
    with pytest.raises(IntegrityError, match="append-only table"):
        c.execute(f"DELETE FROM {table}")
    assert c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] >= 1
    c.close()


def test_proposals_are_never_deleted_and_only_status_changes(full_store, target):
    _, p = full_store
    c = raw(target)
    with pytest.raises(IntegrityError, match="never deleted"):
        c.execute("DELETE FROM proposals WHERE id = ?", [p.id])
    with pytest.raises(IntegrityError, match="immutable"):
        c.execute("UPDATE proposals SET size = 5 WHERE id = ?", [p.id])
    with pytest.raises(IntegrityError, match="label is set once"):
        c.execute("UPDATE proposals SET label = 'cc-999' WHERE id = ?", [p.id])
    c.close()


def test_mutable_tables_can_change(full_store, target):
    store, p = full_store
    store.save_message_ref(p.id, "telegram", 42, 2002)  # re-post replaces the ref
    assert [m.message_id for m in store.message_refs(p.id)] == ["2002"]
    store.set_flag("paused", "1", actor="alice", channel="cli")
    assert store.get_flag("paused") == "1"

# --- a locked database -------------------------------------------------------------------------


def test_locked_database_gives_a_one_line_store_busy_error(target, clock):
    s = Store(target, now=clock, busy_timeout=0.2)
    holder = raw(target)
    held = holder.transaction()  # another process's write transaction, left open
    held.__enter__()
    t0 = time.monotonic()
    with pytest.raises(StoreBusyError) as err:
        s.set_flag("paused", "1", actor="a", channel="cli")
    waited = time.monotonic() - t0
    msg = str(err.value)
    assert msg.startswith("database is locked: ") and "\n" not in msg and s.db.display in msg
    assert 0.15 <= waited < 3
    assert s.get_flag("paused") is None  # reads still work while another process writes
    held.__exit__(None, None, None)
    holder.close()
    s.set_flag("paused", "1", actor="a", channel="cli")  # and the store recovers
    assert s.get_flag("paused") == "1"
    s.close()


def test_in_process_lock_timeout_is_a_store_busy_error(target, clock):
    s = Store(target, now=clock, busy_timeout=0.2)
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with s.write():
            entered.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    entered.wait(5)
    with pytest.raises(StoreBusyError, match="^database is locked: "):
        s.append_event("note", actor="a", channel="cli")
    release.set()
    t.join(5)
    assert s.append_event("note", actor="a", channel="cli") == 1
    s.close()


def test_a_new_database_never_reuses_an_old_databases_labels(make_target, clock):
    ta, tb = make_target(), make_target()
    a = Store(ta, now=clock)
    b = Store(tb, now=clock)
    try:
        pa, pb = new_proposal(a, clock), new_proposal(b, clock)
        assert pa.id == pb.id == 1 and pa.label != pb.label
        assert a.instance_id != b.instance_id
    finally:
        a.close()
        b.close()
    reopened = Store(ta, now=clock)
    try:
        assert reopened.instance_id == pa.label.split("-")[1]  # the tag is the database's, kept across restarts
    finally:
        reopened.close()