"""The Slack channel end to end: slash commands, questions (mentions, DMs), notices, and delivery
(rate limits, the outbox, a deleted card, a restart). Cards and buttons, Socket Mode and
configuration: tests/test_slack.py. The harness: tests/slack_helpers.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlencode

from agent.clock import SimClock
from agent.config import load_settings
from agent.exchange import open_exchange
from chatops.adapters.base import Notice
from chatops.adapters.slack import ACTION_APPROVE, SlackChannel
from chatops.app import Bot
from tests.spine_helpers import until_executed
from tests.fakes.slack_server import BOT_USER_ID, fake_slack_server
from tests.slack_helpers import (
    CHANNEL_ID, ALICE, BOB, SECRET, FAST, free_port, sign, command_form, event_callback, running, buttons)


# --- slash commands, questions, notices -------------------------------------------------------------


async def test_status_and_why_commands_are_ephemeral_unless_public(tmp_path):
    # One namespaced command by default: /cc status, /cc why 3, ...
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        answer = await h.answer(await h.command(ALICE, "/cc", "status"))
        assert answer.response_type == "ephemeral"
        assert f"Pending proposals: #{pid}" in answer.visible and "```" in answer.body["blocks"][0]["text"]["text"]
        answer = await h.answer(await h.command(ALICE, "/cc", f"why {pid}"))
        assert answer.response_type == "ephemeral" and f"#{pid}" in answer.visible
        answer = await h.answer(await h.command(BOB, "/cc", "status public"))
        assert answer.response_type == "in_channel"
        answer = await h.answer(await h.command(ALICE, "/cc", "approve nonsense"))
        assert "usage: approve &lt;id&gt;" in answer.text and answer.response_type == "ephemeral"
        answer = await h.answer(await h.command(ALICE, "/cc", "approve 99999999999999999999"))
        assert "is not a proposal number" in answer.text and not answer.text.count("\n")
        answer = await h.answer(await h.command(ALICE, "/cc"))
        assert "/cc status" in answer.visible and "/cc why [id]" in answer.visible
        answer = await h.answer(await h.command(ALICE, "/cc", f"reject {pid} not today"))
        assert h.status(pid) == "rejected" and h.store.votes(pid)[0].reason == "not today"
        await h.fake.wait_for(lambda: not card.buttons)
        # The old per-command form is not ours unless asked for.
        body = urlencode(command_form(ALICE, "/status", "", CHANNEL_ID, h.fake.response_url()))
        status, _ = await h.post(body, "application/x-www-form-urlencoded")
        assert status == 404


async def test_pause_notifies_the_channel_and_legacy_commands_with_a_prefix(tmp_path):
    async with running(tmp_path, slack_command_prefix="cc-", slack_legacy_commands=True) as h:
        pid, card = await h.tick_card()
        answer = await h.answer(await h.command(ALICE, "/cc-pause", "maintenance"))
        assert answer.text == "Paused."
        assert h.status(pid) == "cancelled"
        notice = await h.fake.wait_for(lambda: next((m for m in h.fake.posted(CHANNEL_ID)
                                                      if "[Kill switch]" in m.visible), None))
        assert "Paused by U1 (slack): maintenance" in notice.visible
        await h.fake.wait_for(lambda: "Cancelled" in card.visible and not card.buttons)
        answer = await h.answer(await h.command(ALICE, "/cc-resume"))
        assert answer.text == "Resumed."
        # Without the prefix the command is not ours: Bolt does not route it (and nothing changes).
        body = urlencode(command_form(ALICE, "/pause", "", CHANNEL_ID, h.fake.response_url()))
        status, _ = await h.post(body, "application/x-www-form-urlencoded")
        assert status == 404 and h.store.get_flag("paused", "0") == "0"


async def test_mention_is_answered_in_its_thread_and_dm_in_the_dm(tmp_path):
    async with running(tmp_path) as h:
        await h.event({"type": "app_mention", "user": ALICE, "text": f"<@{BOT_USER_ID}> why this strike?",
                       "ts": "1700000200.000100", "channel": CHANNEL_ID, "event_ts": "1700000200.000100"})
        reply = await h.fake.wait_for(lambda: next((m for m in h.fake.posted(CHANNEL_ID)
                                                     if m.thread_ts == "1700000200.000100"), None))
        assert "LLM" in reply.visible  # no LLM configured: the agent says what works without one
        questions = list(h.store.iter_rows("questions"))
        assert questions and questions[-1]["text"] == "why this strike?" and questions[-1]["user"] == ALICE
        # Asked inside a thread: answered in that thread (its parent ts); a re-delivery is answered once.
        mention = event_callback({"type": "app_mention", "user": BOB, "text": f"<@{BOT_USER_ID}> and the delta?",
                                  "ts": "1700000250.000100", "thread_ts": "1700000200.000100", "channel": CHANNEL_ID,
                                  "event_ts": "1700000250.000100"})
        for i in range(2):  # Slack signs each delivery afresh (the very same signature again is a replay)
            body = json.dumps(mention)
            status, _ = await h.post(body, "application/json",
                                     {**sign(body, timestamp=int(time.time()) - i), "X-Slack-Retry-Num": "1"})
            assert status == 200
        await h.fake.wait_for(lambda: len([m for m in h.fake.posted(CHANNEL_ID)
                                           if m.thread_ts == "1700000200.000100"]) == 2)
        await h.channel.idle()
        assert len([m for m in h.fake.posted(CHANNEL_ID) if m.thread_ts == "1700000200.000100"]) == 2
        # A direct message is a question too, answered in the DM.
        await h.event({"type": "message", "channel_type": "im", "user": BOB, "text": "what is my margin?",
                       "ts": "1700000300.000100", "channel": "D77", "event_ts": "1700000300.000100"})
        dm = await h.fake.wait_for(lambda: h.fake.posted("D77"))
        assert dm[0].thread_ts is None and "LLM" in dm[0].visible
        # The app's own messages and edits are not questions.
        await h.event({"type": "message", "channel_type": "im", "user": BOT_USER_ID, "bot_id": "BBOT",
                       "text": "echo", "ts": "1700000400.000100", "channel": "D77"})
        await h.event({"type": "message", "subtype": "message_changed", "channel_type": "im", "channel": "D77",
                       "ts": "1700000500.000100", "message": {"user": BOB, "text": "edited"}})
        await h.channel.idle()
        assert len(h.fake.posted("D77")) == 1


async def test_slow_question_does_not_hold_up_an_approval(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        release = asyncio.Event()
        real_ask = h.bot.core.ask

        async def slow_ask(question: str, user: str, channel: str):
            await release.wait()  # an LLM taking its time
            return await real_ask(question, user, channel)

        h.bot.core.ask = slow_ask  # type: ignore[method-assign]
        started = time.monotonic()
        status, _ = await h.event({"type": "app_mention", "user": BOB, "text": f"<@{BOT_USER_ID}> thoughts?",
                                   "ts": "1700000600.000100", "channel": CHANNEL_ID})
        assert status == 200 and time.monotonic() - started < 2  # acknowledged at once
        await h.press(ALICE, ACTION_APPROVE, pid, card)
        await until_executed(h.bot, pid)
        assert not any(m.thread_ts == "1700000600.000100" for m in h.fake.posted(CHANNEL_ID))
        release.set()
        await h.fake.wait_for(lambda: any(m.thread_ts == "1700000600.000100" for m in h.fake.posted(CHANNEL_ID)))


# --- delivery: rate limits, outbox ----------------------------------------------------------------


async def test_rate_limited_post_is_retried_after_retry_after(tmp_path):
    async with running(tmp_path) as h:
        h.fake.rate_limit("chat.postMessage", times=1, retry_after=1)
        pid, card = await h.tick_card()
        first, second = h.fake.calls_to("chat.postMessage")[:2]
        assert first.status == 429 and second.status == 200
        assert second.at - first.at >= 1.0
        assert not list(h.store.iter_rows("outbox"))


async def test_undelivered_proposal_goes_to_the_outbox_and_is_delivered_later(tmp_path):
    async with running(tmp_path) as h:
        h.fake.fail("chat.postMessage", "channel_not_found", times=1)
        await h.bot.tick()
        pid = h.store.latest_proposal().id
        item = await h.fake.wait_for(lambda: next(iter(h.store.iter_rows("outbox")), None))
        assert item["channel"] == "slack" and "channel_not_found" in item["last_error"]
        assert json.loads(item["payload_json"])["proposal_id"] == pid
        h.clock.advance(1)  # the store runs on the exchange's clock: the retry is due now
        card = await h.fake.wait_for(lambda: h.card_message(pid))
        await h.fake.wait_for(lambda: next(iter(h.store.iter_rows("outbox")))["delivered_at"] is not None)
        assert buttons(card)[0] == ("Approve", ACTION_APPROVE, str(pid))


async def test_deleted_card_is_posted_again_on_its_next_edit(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        del h.fake.messages[(card.channel, card.ts)]  # someone deleted the message in Slack
        await h.press(ALICE, ACTION_APPROVE, pid, card)
        await until_executed(h.bot, pid)
        fresh = await h.fake.wait_for(lambda: (m := h.card_message(pid)) and m.ts != card.ts and "Executed" in m.visible
                                      and m)
        assert not fresh.buttons and h.channel.stats["reposts"] >= 1
        await h.channel.idle()
        assert not list(h.store.iter_rows("outbox"))


async def test_unsent_at_shutdown_is_sent_after_restart(tmp_path):
    async with fake_slack_server() as fake:
        settings = load_settings(
            env_file=None, database_path=str(tmp_path / "chatops.db"), paper_state_path=str(tmp_path / "paper.json"),
            slack_bot_token=fake.bot_token, slack_signing_secret=SECRET, slack_channel_id=CHANNEL_ID,
            slack_allowed_user_ids=ALICE, slack_api_base_url=fake.base_url, slack_http_port=free_port(),
            console_enabled=False)
        channel = SlackChannel(settings, options=FAST)
        bot = Bot(settings, exchange=open_exchange(settings, clock=SimClock()), channels=[channel])
        await bot.start()
        fake.fail("chat.postMessage", "service_unavailable", times=100)
        await channel.notify(Notice("info", "kept for later"))
        await fake.wait_for(lambda: list(bot.store.iter_rows("outbox")))
        await bot.stop()
        fake.clear_failures()
        channel = SlackChannel(settings, options=FAST)
        clock = SimClock()
        clock.advance(5)  # later than the retry time the first run gave the message
        bot = Bot(settings, exchange=open_exchange(settings, clock=clock), channels=[channel])
        await bot.start()
        try:
            await fake.wait_for(lambda: any("kept for later" in m.visible for m in fake.posted(CHANNEL_ID)))
            await fake.wait_for(lambda: next(iter(bot.store.iter_rows("outbox")))["delivered_at"] is not None)
        finally:
            await bot.stop()
