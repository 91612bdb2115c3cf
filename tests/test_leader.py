"""The leader lease on both engines: one leader, standbys that say who leads, takeover after the
lease lapses, and fencing: a deposed leader's writes are refused by the database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from chatops.leader import Leadership
from chatops.store import LeaseLostError, Store, lease_line


@pytest.fixture
def two(target):
    a, b = Store(target), Store(target)
    yield a, b
    a.close()
    b.close()


def test_exactly_one_leads_and_the_standby_says_who(two):
    a, b = two
    lines: list[str] = []
    la = Leadership(a, 5, holder="host-a:1", say=lines.append)
    lb = Leadership(b, 5, holder="host-b:2", say=lines.append)
    assert asyncio.run(la.wait_until_leader()) == 1
    st = b.acquire_lease(lb.holder, 5)
    assert not st.mine and st.holder == "host-a:1" and st.term == 1 and 0 < st.expires_in <= 5
    assert la.renew() and la.term == 1  # renewing keeps the term
    status = a.lease_status(5)
    assert (status["leader"], status["term"], status["standbys"]) == ("host-a:1", 1, ["host-b:2"])
    line = lease_line(status)
    assert line.startswith("Leader: host-a:1 (term 1") and "standby: host-b:2" in line and "\n" not in line
    assert [e["kind"] for e in a.list_events(kind="leader_elected")] == ["leader_elected"]


def test_standby_takes_over_after_the_lease_lapses_and_the_old_leader_is_fenced(two):
    a, b = two
    lines: list[str] = []
    la = Leadership(a, 1.0, holder="host-a:1", say=lines.append)
    lb = Leadership(b, 1.0, holder="host-b:2", say=lines.append)
    asyncio.run(la.wait_until_leader())
    a.set_flag("note", "written while leading", actor="agent", channel="bot")  # fenced, accepted
    t0 = time.monotonic()
    term_b = asyncio.run(asyncio.wait_for(lb.wait_until_leader(), 5))  # a stops renewing (frozen)
    took = time.monotonic() - t0
    assert term_b == 2 and took < 2 * 1.0 + 0.5
    assert any(x.startswith("standby: host-a:1 leads (term 1)") for x in lines)
    # The old leader's own clock already says stop:
    assert not la.acting()
    with pytest.raises(LeaseLostError, match="no longer valid"):
        a.set_flag("note", "late", actor="agent", channel="bot")
    # A frozen process whose clock check passed just before it froze: the database refuses.
    la._deadline = time.monotonic() + 60
    with pytest.raises(LeaseLostError, match="stale leader term"):
        a.set_flag("note", "late", actor="agent", channel="bot")
    assert a.get_flag("note") == "written while leading"
    assert not la.renew()  # it cannot renew a lease that passed on
    b.set_flag("note", "new leader", actor="agent", channel="bot")
    assert b.get_flag("note") == "new leader"
    assert a.verify_chain().ok


def test_a_clean_stop_hands_the_lease_over_at_once(two):
    a, b = two
    la = Leadership(a, 30, holder="host-a:1", say=lambda _: None)
    lb = Leadership(b, 30, holder="host-b:2", say=lambda _: None)
    asyncio.run(la.wait_until_leader())
    assert not b.acquire_lease(lb.holder, 30).mine
    la.release()
    assert asyncio.run(asyncio.wait_for(lb.wait_until_leader(), 5)) == 2


def test_a_dead_process_of_this_host_frees_its_lease_at_once(two):
    import socket

    a, b = two
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = f"{socket.gethostname()}:{int(dead.stdout)}"
    assert a.acquire_lease(holder, 60).mine  # a SIGKILLed bot of this host
    st = b.acquire_lease("host-b:2", 60)
    assert st.mine and st.term == 2
    (ev,) = [e for e in b.list_events(kind="leader_elected") if e["data"]["term"] == 2]
    assert ev["data"]["previous"] == holder


def test_writes_without_a_lease_are_not_fenced(two):
    """CLI commands (`chatops approve 12`) write without leading: only the bot's store is fenced."""
    a, b = two
    Leadership(a, 5, holder="host-a:1", say=lambda _: None)
    asyncio.run(Leadership(b, 5, holder="host-b:2", say=lambda _: None).wait_until_leader())
    a.set_flag("paused", "1", actor="alice", channel="cli")
    assert b.get_flag("paused") == "1"
