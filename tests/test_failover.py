"""Two bots on one PostgreSQL database, real processes: the leader is SIGKILLed right after it
sent the order of an approved proposal; the standby takes over, reconciles by label, and exactly
one order exists at the paper exchange (served over HTTP, shared by both); the chat (a fake
Telegram Bot API shared by both) shows one card per proposal."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time

from agent.deribit.client import DeribitClient
from chatops.render import ACTION_TITLES
from chatops.store import Store
from tests.fakes.telegram_server import fake_telegram_server
from tests.pg import PASSWORD

LEASE = 5.0


def _card_of(fake, pid: int):
    """The message holding proposal `pid`'s Approve button."""
    return next((m for m in fake.messages.values() if m.from_bot
                 and any(b.get("callback_data") == f"a:{pid}" for row in m.buttons for b in row)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _line(stream: asyncio.StreamReader, needle: str, seen: list[str], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = await asyncio.wait_for(stream.readline(), max(0.1, deadline - time.monotonic()))
        if not raw:
            break
        line = raw.decode(errors="replace")
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} not seen in:\n{''.join(seen[-30:])}")


async def test_sigkill_of_the_leader_the_standby_takes_over_one_order_one_card(pg_cluster, tmp_path):
    url = pg_cluster.new_database()
    port = _free_port()
    paper_url = f"http://127.0.0.1:{port}"
    base = {**os.environ, "DATABASE_URL": url, "PAPER_EXCHANGE_URL": paper_url, "APPROVAL_MODE": "manual",
            "CONSOLE_ENABLED": "false", "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1", "LEADER_LEASE_SEC": str(LEASE),
            # The order works from the mid toward the bid: reprice every second so it fills within seconds.
            "ORDER_REPRICE_SEC": "1", "ORDER_TIMEOUT_SEC": "30"}
    paper = subprocess.Popen([sys.executable, "-m", "chatops", "paper-exchange", "--port", str(port),
                              "--state", str(tmp_path / "paper.json")], env=base, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs: list[asyncio.subprocess.Process] = []
    try:
        while "listening" not in (ln := paper.stdout.readline()):
            assert ln, "the paper exchange did not start"
        async with fake_telegram_server() as fake:
            env = {**base, "TELEGRAM_BOT_TOKEN": fake.token, "TELEGRAM_CHAT_ID": "-1001",
                   "TELEGRAM_ALLOWED_USER_IDS": "42", "TELEGRAM_API_BASE_URL": fake.base_url}
            run = [sys.executable, "-m", "chatops", "run", "--interval", "600"]
            a_seen: list[str] = []
            # A leads and posts proposal #1's card; it will die right after sending the order.
            a = await asyncio.create_subprocess_exec(*run, env={**env, "CHATOPS_TEST_CRASH_POINT": "after_send"},
                                                     cwd=tmp_path, stdin=subprocess.DEVNULL,
                                                     stderr=asyncio.subprocess.PIPE)
            procs.append(a)
            await _line(a.stderr, "leader: ", a_seen)
            try:
                card = await fake.wait_for(lambda: _card_of(fake, 1), timeout=60)
            except AssertionError:
                a.kill()
                out = (await a.stderr.read()).decode(errors="replace")
                raise AssertionError(f"no card for #1; chat: {[(m.text[:80], m.buttons) for m in fake.messages.values()]}; "
                                     f"leader's log: {out[-3000:]}") from None
            b_seen: list[str] = []
            b = await asyncio.create_subprocess_exec(*run, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                                                     stderr=asyncio.subprocess.PIPE)
            procs.append(b)
            line = await _line(b.stderr, "standby: ", b_seen)
            assert f":{a.pid} leads (term " in line
            # Approve in the chat: the leader claims it, sends the order, and is SIGKILLed.
            fake.push_callback(42, "a:1", card.message_id, -1001)
            assert await asyncio.wait_for(a.wait(), 60) == -signal.SIGKILL, "".join(a_seen[-20:])
            killed = time.monotonic()
            await _line(b.stderr, f":{b.pid} leads this database (term ", b_seen)
            took = time.monotonic() - killed
            # B settles #1 by its label (found, working or filled: never sent again), then follows it to its fill.
            await _line(b.stderr, "reconciled proposal #1: ", b_seen)
            watch = Store(url)
            try:  # B has started its channels (its bot_started event) and its runner: a SIGTERM is a clean stop
                await fake.wait_for(lambda: len(watch.list_events(kind="bot_started")) == 2, timeout=30)
                await fake.wait_for(lambda: watch.get_proposal(1).status == "executed", timeout=60)
            finally:
                watch.close()
            await asyncio.sleep(1.0)
            b.send_signal(signal.SIGTERM)
            rest = (await asyncio.wait_for(b.stderr.read(), 60)).decode(errors="replace")
            assert await asyncio.wait_for(b.wait(), 30) == 0, rest[-2000:]
            messages = list(fake.messages.values())
        assert took < 2 * LEASE, took

        store = Store(url)
        try:
            p1 = store.get_proposal(1)
            assert p1.status == "executed"
            (ex,) = store.executions(1)
            assert [o["reused"] for o in ex["orders"]] == [1]  # found by label, nothing resent
            labels = [p.label for p in store.list_proposals(limit=100)]
            proposals = [p.id for p in store.list_proposals(limit=100)]
            elected = [(e["actor"], e["data"]["term"]) for e in store.list_events(kind="leader_elected")]
            assert elected[0][0].endswith(f":{a.pid}") and elected[-1][0].endswith(f":{b.pid}")
            assert [t for _, t in elected] == list(range(1, len(elected) + 1))  # one term after the other
            assert store.verify_chain().ok
        finally:
            store.close()
        async with DeribitClient(paper_url, "probe", "probe") as c:
            for label in labels:
                assert len(await c.get_order_state_by_label("BTC", label)) <= 1
            assert len(await c.get_order_state_by_label("BTC", p1.label)) == 1  # exactly one order
        titles = "|".join(re.escape(t) for t in ACTION_TITLES.values())
        for pid in proposals:
            cards = [m for m in messages if m.from_bot
                     and re.search(rf"#{pid} ({titles})", (m.history[0] if m.history else m.text))]
            assert len(cards) <= 1, [m.text for m in cards]  # never a second card for the same proposal
        assert any(re.search(rf"#1 ({titles})", m.history[0] if m.history else m.text) for m in messages)
        assert PASSWORD not in "".join(a_seen + b_seen) + rest  # the DATABASE_URL password never reaches a log
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        paper.terminate()
        paper.wait(timeout=10)
