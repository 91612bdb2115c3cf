"""A locked database delays the write, not the buttons (issue 11): another process holds
BEGIN EXCLUSIVE on the bot's file; a press is answered at once, then the vote lands or fails with a
clear message in the chat. (The latency figures are bench/lock_latency.py's.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.clock import SimClock
from agent.config import load_settings
from agent.exchange import open_exchange
from chatops.adapters.telegram import TelegramChannel
from chatops.app import Bot
from chatops.store import Store
from tests.fakes.telegram_server import fake_telegram_server
from dataclasses import replace

from tests.test_telegram import ALICE, CHAT, FAST

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

HOLDER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
con.execute("BEGIN EXCLUSIVE")
con.execute("INSERT INTO flags (key, value, updated_at) VALUES ('held', '1', 'x') ON CONFLICT(key) DO UPDATE SET value = '1'")
print("locked", flush=True)
sys.stdin.readline()  # held until the test says so
con.execute("COMMIT")
"""


def hold(db: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, db], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.write("go\n")
    proc.stdin.flush()
    proc.wait(timeout=30)


async def bot_with_telegram(tmp_path, tg, busy_timeout: float):
    settings = load_settings(env_file=None, database_path=str(tmp_path / "chatops.db"),
                             paper_state_path=str(tmp_path / "paper.json"), telegram_bot_token="123456:TEST",
                             telegram_chat_id=str(CHAT), telegram_allowed_user_ids=str(ALICE),
                             telegram_api_base_url=tg.base_url, console_enabled=False)
    clock = SimClock()
    exchange = open_exchange(settings, clock=clock)
    from agent.clock import to_datetime

    store = Store(settings.database_path, now=lambda: to_datetime(clock.now_ms()), busy_timeout=busy_timeout)
    bot = Bot(settings, exchange=exchange, store=store, channels=[TelegramChannel(settings, options=replace(FAST, press_answer_s=0.05))])
    await bot.start()
    return bot


async def test_a_press_is_answered_while_the_database_is_locked_and_the_vote_lands_after(tmp_path):
    async with fake_telegram_server() as tg:
        bot = await bot_with_telegram(tmp_path, tg, busy_timeout=30)
        try:
            await bot.tick()
            (p,) = bot.store.pending_proposals()
            refs = await tg.wait_for(lambda: bot.core.message_refs(p.id, "telegram"))
            holder = hold(bot.settings.database_path)
            try:
                qid = tg.push_callback(ALICE, f"a:{p.id}", int(refs[0][1]), CHAT)
                answer = await tg.wait_for(lambda: tg.answer(qid))
                assert "Recording your approval" in answer["text"]  # answered before the vote could land
                status = await bot.core.status(str(ALICE), "telegram")  # reads go on meanwhile
                assert f"#{p.id}" in status.text
                assert bot.store.get_proposal(p.id).status == "pending"
            finally:
                release(holder)
            # The vote landed once the lock went: approved, then claimed for execution.
            await tg.wait_for(lambda: bot.store.get_proposal(p.id).status in ("executing", "executed"), timeout=15)
            assert [v.person for v in bot.store.votes(p.id)] == [f"telegram:{ALICE}"]
        finally:
            await bot.stop()


async def test_a_vote_that_cannot_wait_longer_fails_with_a_clear_message(tmp_path):
    async with fake_telegram_server() as tg:
        bot = await bot_with_telegram(tmp_path, tg, busy_timeout=1)
        try:
            await bot.tick()
            (p,) = bot.store.pending_proposals()
            refs = await tg.wait_for(lambda: bot.core.message_refs(p.id, "telegram"))
            holder = hold(bot.settings.database_path)
            try:
                qid = tg.push_callback(ALICE, f"a:{p.id}", int(refs[0][1]), CHAT)
                assert "Recording your approval" in (await tg.wait_for(lambda: tg.answer(qid)))["text"]
                said = await tg.wait_for(lambda: next((m for m in tg.sent(CHAT) if "NOT recorded" in m.visible), None),
                                         timeout=15)
                assert f"approve of #{p.id} was NOT recorded: the database is busy" in said.visible
                assert "Traceback" not in said.visible and said.visible.count("\n") == 0
            finally:
                release(holder)
            assert bot.store.get_proposal(p.id).status == "pending" and bot.store.votes(p.id) == []
        finally:
            await bot.stop()
