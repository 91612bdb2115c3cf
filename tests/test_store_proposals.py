"""The store on both engines: the proposal CAS, votes once under concurrency (threads and processes), expiry."""

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


# --- proposals and the compare-and-swap --------------------------------------------------------


def test_create_proposal_sets_label_status_and_event(store, clock):
    p = new_proposal(store, clock, required=2)
    assert p.status == "pending" and p.label == label_for(p.id, store.instance_id) == f"cc-{store.instance_id}-{p.id}"
    assert p.approvals_required == 2 and p.symbol == open_action().symbol and p.size == 0.1
    assert p.expires_at == clock() + timedelta(seconds=300)
    assert p.to_action() == open_action()
    ev = store.list_events(proposal_id=p.id)
    assert [e["kind"] for e in ev] == ["proposal_created"]
    assert ev[0]["data"]["approvals_required"] == 2 and ev[0]["decision_id"] == p.decision_id


def test_transition_wins_once_and_loses_on_wrong_status(store, clock):
    p = new_proposal(store, clock)
    clock.advance(10)
    assert store.add_vote(p.id, "alice", "slack", "approve")  # the quorum trigger wants the vote on record
    assert store.transition(p.id, "pending", "approved", actor="alice", channel="slack", reason="looks fine")
    assert not store.transition(p.id, "pending", "approved", actor="bob", channel="telegram")
    assert not store.transition(p.id, "pending", "rejected", actor="bob", channel="telegram")
    assert not store.transition(p.id, ("executing",), "executed", actor="agent", channel="executor")
    assert not store.transition(9999, "pending", "approved", actor="x", channel="cli")
    row = store.get_proposal(p.id)
    assert (row.status, row.decided_by, row.status_reason) == ("approved", "alice", "looks fine")
    assert row.decided_at == clock() and row.updated_at == clock()
    assert kinds(store, p.id)["proposal_approved"] == 1
    ev = store.list_events(proposal_id=p.id, kind="proposal_approved")[0]
    assert (ev["actor"], ev["channel"], ev["data"]) == ("alice", "slack", {"from": "pending", "to": "approved"})
    assert store.transition(p.id, ("approved",), "executing", actor="agent", channel="executor")
    assert store.get_proposal(p.id).decided_by == "alice"  # decided_by is who moved it out of pending


def test_illegal_transitions_and_unknown_statuses_are_refused(store, clock):
    p = new_proposal(store, clock)
    with pytest.raises(ValueError, match="illegal proposal transition pending -> executed"):
        store.transition(p.id, "pending", "executed", actor="x", channel="cli")
    with pytest.raises(ValueError, match="unknown proposal status"):
        store.transition(p.id, "pending", "done", actor="x", channel="cli")
    assert store.get_proposal(p.id).status == "pending"


def test_a_failed_write_leaves_nothing(store, clock):
    p = new_proposal(store, clock)
    store.add_vote(p.id, "alice", "cli", "approve")
    before = store.list_events()
    with pytest.raises(RuntimeError, match="boom"):
        with store.write():
            store.transition(p.id, "pending", "approved", actor="alice", channel="cli")
            raise RuntimeError("boom")
    assert store.get_proposal(p.id).status == "pending"
    assert store.list_events() == before


# --- votes -------------------------------------------------------------------------------------


def test_add_vote_once_per_person(store, clock):
    p = new_proposal(store, clock)
    assert store.add_vote(p.id, "alice", "telegram", "approve", person="alice")
    assert not store.add_vote(p.id, "U1", "slack", "reject", person="alice")  # same person, other channel: one vote
    assert store.add_vote(p.id, "bob", "slack", "reject", "too close to spot")  # no person given: slack:bob
    assert store.add_vote(p.id, "bob", "cli", "approve")  # console:bob is another identity than slack:bob
    assert not store.add_vote(p.id, "bob", "console", "approve")  # the CLI and the terminal share a namespace
    assert [(v.user, v.channel, v.vote, v.reason, v.person) for v in store.votes(p.id)] == [
        ("alice", "telegram", "approve", None, "alice"), ("bob", "slack", "reject", "too close to spot", "slack:bob"),
        ("bob", "cli", "approve", None, "console:bob")]
    assert store.approve_count(p.id) == 2
    assert kinds(store, p.id)["vote"] == 3
    with pytest.raises(ValueError, match="vote must be"):
        store.add_vote(p.id, "carol", "cli", "maybe")


def test_n_approvals_are_required(store, clock):
    p = new_proposal(store, clock, required=3)
    outs = [store.vote_and_maybe_approve(p.id, u, "telegram", "approve") for u in ("a", "b", "a", "c", "d")]
    assert [o.kind for o in outs] == ["recorded", "recorded", "already_voted", "approved", "not_pending"]
    assert [o.approvals for o in outs] == [1, 2, 2, 3, 3]
    assert outs[3].status == "approved" and outs[4].status == "approved"
    assert store.get_proposal(p.id).decided_by == "c"
    assert kinds(store, p.id)["proposal_approved"] == 1 and store.approve_count(p.id) == 3


def test_one_reject_vetoes(store, clock):
    p = new_proposal(store, clock, required=2)
    assert store.vote_and_maybe_approve(p.id, "a", "slack", "approve").kind == "recorded"
    out = store.vote_and_maybe_approve(p.id, "b", "telegram", "reject", "strike too low")
    assert (out.kind, out.status) == ("rejected", "rejected")
    assert store.vote_and_maybe_approve(p.id, "c", "slack", "approve").kind == "not_pending"
    row = store.get_proposal(p.id)
    assert (row.status, row.decided_by, row.status_reason) == ("rejected", "b", "strike too low")


def test_the_quorum_is_the_proposals_own_not_the_callers(store, clock):
    p = new_proposal(store, clock, required=3)
    with pytest.raises(ValueError, match="needs 3 approvals"):
        store.vote_and_maybe_approve(p.id, "a", "cli", "approve", "in a hurry", 1)
    with pytest.raises(ValueError, match="manual mode"):  # `auto` approves only what was made in auto mode
        store.vote_and_maybe_approve(p.id, "auto", "auto", "approve", "within limits")
    assert store.votes(p.id) == [] and store.get_proposal(p.id).status == "pending"


def test_vote_after_expiry_expires_and_unknown_is_reported(store, clock):
    p = new_proposal(store, clock, ttl=60)
    clock.advance(61)
    out = store.vote_and_maybe_approve(p.id, "a", "slack", "approve")
    assert (out.kind, out.status) == ("expired", "expired")
    assert store.votes(p.id) == []  # a vote on an expired proposal is not recorded
    assert store.vote_and_maybe_approve(p.id, "b", "slack", "approve").kind == "not_pending"
    assert store.vote_and_maybe_approve(4242, "a", "slack", "approve").kind == "unknown"


def _race(n: int, fn) -> list:
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_50_threads_on_one_store_give_exactly_one_approval(store, clock):
    p = new_proposal(store, clock, required=3)
    outs = _race(50, lambda i: store.vote_and_maybe_approve(p.id, f"u{i}", "telegram", "approve").kind)
    assert Counter(outs) == {"approved": 1, "recorded": 2, "not_pending": 47}
    assert kinds(store, p.id)["proposal_approved"] == 1
    assert store.approve_count(p.id) == 3
    assert store.verify_chain().ok


def test_50_threads_with_their_own_connections_give_exactly_one_approval(target, clock):
    s = Store(target, now=clock)
    p = new_proposal(s, clock, required=1)
    stores = [Store(target, now=clock) for _ in range(50)]
    outs = _race(50, lambda i: stores[i].vote_and_maybe_approve(p.id, f"u{i}", "slack", "approve").kind)
    for x in stores:
        x.close()
    assert Counter(outs) == {"approved": 1, "not_pending": 49}
    assert kinds(s, p.id)["proposal_approved"] == 1 and len(s.votes(p.id)) == 1
    assert s.verify_chain().ok
    s.close()


CHILD = r"""
import json, os, sys, time
from chatops.store import Store
path, pid, first, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
s = Store(path)
open(f"{go}.ready{first}", "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
print(json.dumps([s.vote_and_maybe_approve(pid, f"u{i}", "cli", "approve", None, 3).kind
                  for i in range(first, first + n)]))
"""


def test_50_votes_from_5_processes_give_exactly_one_approval(target, tmp_path):
    s = Store(target)  # real clock: the children use theirs
    did = s.record_decision(decision(final=open_action(), ts=datetime.now(timezone.utc)))
    p = s.create_proposal(did, open_action(), expires_at=datetime.now(timezone.utc) + timedelta(hours=1),
                          approvals_required=3)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, target, str(p.id), str(10 * k), "10", str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for k in range(5)]
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.ready{10 * k}").exists() for k in range(5)):  # all imported and open
        assert time.monotonic() < deadline and all(proc.poll() is None for proc in procs), "a child did not start"
        time.sleep(0.01)
    go.touch()
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outs += json.loads(out)
    assert len(outs) == 50
    assert Counter(outs) == {"approved": 1, "recorded": 2, "not_pending": 47}
    assert kinds(s, p.id)["proposal_approved"] == 1
    assert s.get_proposal(p.id).status == "approved" and s.approve_count(p.id) == 3
    assert s.verify_chain().ok
    s.close()


# --- expiry, flags, settings -------------------------------------------------------------------


def test_expiry_sweep(store, clock):
    short = new_proposal(store, clock, n=1, ttl=60)
    long = new_proposal(store, clock, n=2, ttl=600)
    approved = new_proposal(store, clock, n=3, ttl=60)
    assert store.vote_and_maybe_approve(approved.id, "a", "cli", "approve").kind == "approved"
    assert store.expire_due(clock() + timedelta(seconds=59)) == []
    assert store.expire_due(clock() + timedelta(seconds=120)) == [short.id]
    assert store.expire_due(clock() + timedelta(seconds=120)) == []  # each expires once
    assert [p.id for p in store.pending_proposals("BTC")] == [long.id]
    assert store.get_proposal(approved.id).status == "approved"  # only pending ones expire
    assert kinds(store)["proposal_expired"] == 1
    assert store.vote_and_maybe_approve(short.id, "b", "cli", "approve").kind == "not_pending"

