"""The Telegram channel end to end: the real PTB Application long-polls a fake Bot API on
127.0.0.1, a real Bot (chatops.app.Bot) runs on the in-process paper exchange with a manual clock.

Waits are condition polls with short timeouts (fake.wait_for), never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

import pytest

from agent.clock import SimClock
from agent.config import load_settings
from agent.exchange import open_exchange
from chatops.adapters.base import Notice
from chatops.adapters.telegram import (
    REASON_PROMPT,
    ChatLimiter,
    TelegramChannel,
    TelegramOptions,
    card_lines,
    chunk_lines,
    text_lines,
)
from chatops.app import Bot
from chatops.render import Card
from tests.spine_helpers import until_executed
from tests.fakes.telegram_server import FakeTelegram, StoredMessage, check_html, fake_telegram_server

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")  # PTB's own RetryAfter

CHAT = -1001
ALICE, BOB, STRANGER = 42, 43, 99

FAST = TelegramOptions(poll_timeout=2, min_interval=0.0, group_per_minute=10_000, send_attempts=3,
                       backoff_base=0.01, backoff_max=0.05, outbox_interval=0.3, reject_reason_timeout=30,
                       stop_timeout=2, press_answer_s=5.0)  # presses answered with the vote's result, even under load


@dataclass
class Harness:
    fake: FakeTelegram
    bot: Bot
    channel: TelegramChannel
    clock: SimClock

    @property
    def store(self):
        return self.bot.store

    async def tick_card(self) -> tuple[int, StoredMessage]:
        """One tick that proposes; returns the proposal id and its Telegram message."""
        _, decision = await self.bot.tick()
        assert decision is not None
        row = self.store.latest_proposal()
        assert row is not None and row.status == "pending"
        message = await self.fake.wait_for(lambda: self.card_message(row.id))
        return row.id, message

    def card_message(self, pid: int) -> StoredMessage | None:
        refs = self.bot.core.message_refs(pid, "telegram")
        return self.fake.message(refs[0][0], int(refs[0][1])) if refs else None

    async def press(self, user: int, data: str, message_id: int, chat_id: int = CHAT) -> dict:
        qid = self.fake.push_callback(user, data, message_id, chat_id)
        return await self.fake.wait_for(lambda: self.fake.answer(qid))

    async def say(self, user: int, text: str, chat_id: int | None = CHAT, chat_type: str = "supergroup",
                  reply_to: int | None = None, timeout: float = 5.0) -> StoredMessage:
        """Send a message as `user`; returns the bot's reply to it."""
        sent = self.fake.push_message(user, text, chat_id, reply_to_message_id=reply_to, chat_type=chat_type)
        return await self.fake.wait_for(lambda: next((m for m in self.fake.sent(sent.chat_id)
                                                      if m.reply_to_message_id == sent.message_id), None), timeout)

    def status(self, pid: int) -> str:
        return self.store.get_proposal(pid).status

    def paper_orders(self, label: str) -> list:
        return [o for o in self.bot.exchange.paper.orders.values() if o.label == label]


@asynccontextmanager
async def running(tmp_path, options: TelegramOptions = FAST, **overrides) -> AsyncIterator[Harness]:
    async with fake_telegram_server() as fake:
        settings = load_settings(
            env_file=None, database_path=str(tmp_path / "chatops.db"), paper_state_path=str(tmp_path / "paper.json"),
            telegram_bot_token="123456:TEST", telegram_chat_id=str(CHAT), telegram_allowed_user_ids="42,43",
            telegram_api_base_url=fake.base_url, console_enabled=False, **overrides)
        clock = SimClock()
        channel = TelegramChannel(settings, options=options)
        bot = Bot(settings, exchange=open_exchange(settings, clock=clock), channels=[channel])
        await bot.start()
        h = Harness(fake, bot, channel, clock)
        try:
            yield h
        finally:
            await h.bot.stop()


def buttons(m: StoredMessage) -> list[tuple[str, str]]:
    return [(b["text"], b["callback_data"]) for row in m.buttons for b in row]


# --- proposals and buttons ------------------------------------------------------------------------


async def test_proposal_card_keyboard_and_approve_executes(tmp_path):
    async with running(tmp_path) as h:
        assert h.fake.webhook_deleted >= 1
        assert {c["command"] for c in h.fake.commands} >= {"status", "pending", "why", "history", "approve", "reject",
                                                          "pause", "resume", "ask", "whatif", "help"}
        pid, card = await h.tick_card()
        assert card.chat_id == CHAT and card.parse_mode == "HTML"
        assert card.text.startswith(f"<b>[PAPER] #{pid} Open covered call</b>")
        assert buttons(card) == [("Approve", f"a:{pid}"), ("Reject", f"r:{pid}"), ("Why", f"w:{pid}")]

        answer = await h.press(ALICE, f"a:{pid}", card.message_id)
        assert "approved" in answer["text"] and not answer.get("show_alert")
        await until_executed(h.bot, pid)
        label = h.store.get_proposal(pid).label
        assert len(h.paper_orders(label)) == 1
        # The same message now shows the final state, without buttons.
        await h.fake.wait_for(lambda: "Executed" in card.visible and not card.buttons)
        assert "approved by 42 (telegram)" in card.visible and "order BTC-" in card.visible
        await h.fake.wait_for(lambda: any("[Fill]" in m.visible for m in h.fake.sent(CHAT)))


async def test_stranger_press_is_refused_and_recorded(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        answer = await h.press(STRANGER, f"a:{pid}", card.message_id)
        assert answer["show_alert"] is True and answer["text"].startswith("Not authorized")
        assert h.status(pid) == "pending" and not h.store.votes(pid)
        events = h.store.list_events(kind="unauthorized")
        assert events and events[-1]["actor"] == str(STRANGER) and events[-1]["channel"] == "telegram"
        assert buttons(card)  # untouched
        # Commands and questions from a stranger are refused too, in groups and in private.
        reply = await h.say(STRANGER, f"/approve {pid}")
        assert reply.visible.startswith("Not authorized")
        reply = await h.say(STRANGER, "what is my balance?", chat_id=STRANGER, chat_type="private")
        assert reply.visible.startswith("Not authorized")
        assert h.status(pid) == "pending"
        assert len(h.store.list_events(kind="unauthorized")) == 3


async def test_forged_callbacks_change_nothing(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        for data in ("x:1", "a:abc", "a:", "approve 1", f"a:{pid};r:{pid}", "a:" + "9" * 40):
            answer = await h.press(ALICE, data, card.message_id)
            assert answer["show_alert"] is True and "Unknown button" in answer["text"], data
        answer = await h.press(ALICE, "a:999", card.message_id)
        assert answer["show_alert"] is True and "No proposal #999" in answer["text"]
        answer = await h.press(ALICE, "r:999", card.message_id)
        assert answer["show_alert"] is True and "No proposal #999" in answer["text"]
        # Another proposal's id on this message (a message the fake never sent, too).
        answer = await h.press(ALICE, f"a:{pid + 1}", 777)
        assert answer["show_alert"] is True and f"No proposal #{pid + 1}" in answer["text"]
        assert h.status(pid) == "pending" and not h.store.votes(pid)
        assert not h.bot.exchange.paper.orders


async def test_double_press_executes_once(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        qids = [h.fake.push_callback(ALICE, f"a:{pid}", card.message_id, CHAT),
                h.fake.push_callback(BOB, f"a:{pid}", card.message_id, CHAT),
                h.fake.push_callback(ALICE, f"a:{pid}", card.message_id, CHAT)]
        answers = [await h.fake.wait_for(lambda q=q: h.fake.answer(q)) for q in qids]
        assert sum(1 for a in answers if not a.get("show_alert")) == 1
        assert all("already" in a["text"] for a in answers if a.get("show_alert"))
        await until_executed(h.bot, pid)
        await h.bot.core.drain()
        assert len(h.store.executions(pid)) == 1
        assert len(h.paper_orders(h.store.get_proposal(pid).label)) == 1


async def test_approval_after_expiry_says_expired(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        h.clock.advance(h.bot.settings.approval_ttl_sec + 1)
        answer = await h.press(ALICE, f"a:{pid}", card.message_id)
        assert answer["show_alert"] is True and "expired" in answer["text"]
        assert h.status(pid) == "expired"
        await h.fake.wait_for(lambda: "Expired" in card.visible and not card.buttons)
        # Once the sweep has marked it, a stale press is still told "expired", and Reject too.
        answer = await h.press(BOB, f"a:{pid}", card.message_id)
        assert answer["show_alert"] is True and "expired" in answer["text"]
        answer = await h.press(BOB, f"r:{pid}", card.message_id)
        assert answer["show_alert"] is True and "expired" in answer["text"]
        assert not h.bot.exchange.paper.orders and not h.store.executions(pid)


async def test_buttons_work_after_restart(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        fake = h.fake
        settings = h.bot.settings
        await h.bot.stop()
        # A new process: the same database and paper state, message refs from the store.
        channel = TelegramChannel(settings, options=FAST)
        h.bot = Bot(settings, exchange=open_exchange(settings, clock=h.clock), channels=[channel])
        h.channel = channel
        await h.bot.start()
        answer = await h.press(ALICE, f"a:{pid}", card.message_id)
        assert "approved" in answer["text"]
        await until_executed(h.bot, pid)
        await fake.wait_for(lambda: "Executed" in card.visible and not card.buttons)
        assert len([m for m in fake.sent(CHAT) if m.text.startswith("<b>[PAPER]")]) == 1  # edited, not reposted


# --- reject ----------------------------------------------------------------------------------------------


async def test_reject_with_reason_via_prompt_reply(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        answer = await h.press(ALICE, f"r:{pid}", card.message_id)
        assert "/skip" in answer["text"] and not answer.get("show_alert")
        prompt = await h.fake.wait_for(lambda: next((m for m in h.fake.sent(CHAT)
                                                     if m.visible.startswith(REASON_PROMPT.format(pid=pid))), None))
        assert prompt.reply_markup.get("force_reply") is True and prompt.reply_to_message_id == card.message_id
        assert h.status(pid) == "pending"  # nothing decided until the reason (or /skip, or the timeout)
        reply = await h.say(ALICE, "strike too close to spot", reply_to=prompt.message_id)
        assert "rejected" in reply.visible
        assert h.status(pid) == "rejected"
        assert [(v.user, v.vote, v.reason) for v in h.store.votes(pid)] == [("42", "reject", "strike too close to spot")]
        await h.fake.wait_for(lambda: "Rejected" in card.visible and not card.buttons)
        assert "strike too close to spot" in card.visible
        assert not h.bot.exchange.paper.orders


async def test_reject_via_command_with_reason(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        reply = await h.say(BOB, f"/reject {pid} vol is too low <today> & tomorrow")
        assert "rejected" in reply.visible
        assert [(v.user, v.reason) for v in h.store.votes(pid)] == [("43", "vol is too low <today> & tomorrow")]
        await h.fake.wait_for(lambda: "Rejected" in card.visible and not card.buttons)
        assert "vol is too low <today> & tomorrow" in card.visible  # escaped in HTML, shown as typed


async def test_reject_then_skip_and_reject_timeout(tmp_path):
    async with running(tmp_path, options=TelegramOptions(**{**FAST.__dict__, "reject_reason_timeout": 0.5})) as h:
        pid, card = await h.tick_card()
        await h.press(ALICE, f"r:{pid}", card.message_id)
        reply = await h.say(ALICE, "/skip")
        assert "rejected" in reply.visible
        assert [(v.user, v.reason) for v in h.store.votes(pid)] == [("42", None)]
        reply = await h.say(ALICE, "/skip")
        assert "Nothing to skip" in reply.visible

        # A new proposal; Reject pressed and no reply: rejected without a reason after the timeout.
        h.clock.advance(3600)
        await h.bot.sweep()
        pid2, card2 = await h.tick_card()
        assert pid2 != pid
        await h.press(BOB, f"r:{pid2}", card2.message_id)
        await h.fake.wait_for(lambda: h.status(pid2) == "rejected", timeout=3)
        assert [(v.user, v.reason) for v in h.store.votes(pid2)] == [("43", None)]


# --- commands and questions --------------------------------------------------------------------------------


async def test_status_why_pending_pause_resume(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        reply = await h.say(ALICE, "/status")
        assert reply.text.startswith("<pre>") and f"Pending proposals: #{pid}" in reply.visible
        reply = await h.say(ALICE, f"/why@fake_cc_bot {pid}")
        assert "Open" in reply.visible and "Risk" in reply.visible
        reply = await h.say(ALICE, "/pending")
        assert f"#{pid} Open covered call" in reply.visible and not reply.buttons
        reply = await h.say(ALICE, "/history 5")
        assert "OPEN_COVERED_CALL" in reply.visible or "open" in reply.visible.lower()
        reply = await h.say(ALICE, "/help")
        assert "/approve" in reply.visible and "/skip" in reply.visible

        # Why button: an answer in the chat, replying to the card.
        answer = await h.press(BOB, f"w:{pid}", card.message_id)
        assert not answer.get("show_alert")
        await h.fake.wait_for(lambda: any(m.reply_to_message_id == card.message_id and "Risk" in m.visible
                                          for m in h.fake.sent(CHAT)))

        reply = await h.say(ALICE, "/pause vol spike")
        assert "Paused" in reply.visible
        await h.fake.wait_for(lambda: any(m.visible.startswith("[Kill switch] Paused by 42") for m in h.fake.sent(CHAT)))
        await h.fake.wait_for(lambda: "Cancelled" in card.visible and not card.buttons)
        before = len(h.fake.sent(CHAT))
        _, decision = await h.bot.tick()  # paused: the tick records a decision but proposes nothing
        assert h.store.pending_proposals() == []
        assert h.store.latest_proposal().id == pid
        await h.channel.idle()
        assert not [m for m in h.fake.sent(CHAT)[before:] if m.buttons]
        reply = await h.say(ALICE, "/resume")
        assert "Resumed" in reply.visible


async def test_question_in_private_chat_is_answered_and_recorded(tmp_path):
    async with running(tmp_path) as h:
        reply = await h.say(ALICE, "why did you pick that strike?", chat_id=ALICE, chat_type="private")
        assert reply.chat_id == ALICE and reply.visible
        rows = list(h.store.iter_rows("questions"))
        assert rows[-1]["text"] == "why did you pick that strike?" and rows[-1]["user"] == "42"
        assert rows[-1]["channel"] == "telegram" and rows[-1]["kind"] == "ask"
        answers = list(h.store.iter_rows("answers", question_id=rows[-1]["id"]))
        assert answers and answers[0]["text"] == reply.visible
        # In the group: chatter is ignored, a mention is a question.
        before = len(list(h.store.iter_rows("questions")))
        h.fake.push_message(ALICE, "lunch anyone?", CHAT, chat_type="supergroup")
        reply = await h.say(BOB, "@fake_cc_bot what are you doing?")
        assert reply.visible
        rows = list(h.store.iter_rows("questions"))
        assert len(rows) == before + 1 and rows[-1]["text"] == "what are you doing?"


async def test_slow_question_does_not_hold_up_an_approval(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        release = asyncio.Event()
        real_ask = h.bot.core.ask

        async def slow_ask(question, user, channel):
            await release.wait()
            return await real_ask(question, user, channel)

        h.bot.core.ask = slow_ask  # an LLM that takes its time
        h.fake.push_message(ALICE, "a long question", ALICE, chat_type="private")
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        answer = await h.press(BOB, f"a:{pid}", card.message_id)
        assert "approved" in answer["text"] and time.monotonic() - t0 < 2.0
        await until_executed(h.bot, pid)
        release.set()
        await h.fake.wait_for(lambda: any(m.chat_id == ALICE for m in h.fake.sent()))


# --- delivery: limits, errors, outbox --------------------------------------------------------------------------


async def test_retry_after_is_honoured(tmp_path):
    async with running(tmp_path) as h:
        h.fake.fail("sendMessage", "429", retry_after=1)
        await h.channel.notify(Notice("info", "after a flood wait"))
        m = await h.fake.wait_for(lambda: next((x for x in h.fake.sent(CHAT) if "after a flood wait" in x.visible), None))
        calls = h.fake.calls_to("sendMessage")
        assert [c.status for c in calls[-2:]] == [429, 200]
        assert calls[-1].at - calls[-2].at >= 0.99
        assert m.visible == "[Info] after a flood wait"


async def test_parse_error_falls_back_to_plain_text(tmp_path):
    async with running(tmp_path) as h:
        h.fake.fail("sendMessage", "parse")
        pid, card = await h.tick_card()
        assert card.parse_mode is None
        assert card.text == h.bot.core.proposal_card(pid).as_text()  # the manual clock has not moved
        assert card.text.startswith(f"[PAPER] #{pid} Open covered call\n  Instrument")
        assert buttons(card)[0] == ("Approve", f"a:{pid}")


async def test_permanent_failure_goes_to_outbox_and_is_delivered_later(tmp_path):
    options = TelegramOptions(**{**FAST.__dict__, "outbox_interval": 0.5})
    async with running(tmp_path, options=options) as h:
        h.fake.fail("sendMessage", "drop", n=3)  # send_attempts=3: the sender gives up
        await h.channel.notify(Notice("failure", "#7 failed: insufficient funds"))
        item = await h.fake.wait_for(lambda: next(iter(h.store.iter_rows("outbox")), None))
        assert item["channel"] == "telegram" and item["attempts"] == 1 and item["delivered_at"] is None
        assert "network" in item["last_error"] and "123456:TEST" not in item["last_error"]
        m = await h.fake.wait_for(lambda: next((x for x in h.fake.sent(CHAT) if "insufficient funds" in x.visible), None),
                                  timeout=5)
        assert m.visible == "[Failure] #7 failed: insufficient funds"
        await h.fake.wait_for(lambda: next(iter(h.store.iter_rows("outbox")))["delivered_at"] is not None)
        assert [c.status for c in h.fake.calls_to("sendMessage")][-4:] == [0, 0, 0, 200]


async def test_undelivered_proposal_is_posted_from_the_outbox(tmp_path):
    options = TelegramOptions(**{**FAST.__dict__, "outbox_interval": 0.5})
    async with running(tmp_path, options=options) as h:
        h.fake.fail("sendMessage", "500", n=3)
        await h.bot.tick()
        pid = h.store.latest_proposal().id
        await h.fake.wait_for(lambda: next(iter(h.store.iter_rows("outbox")), None))
        card = await h.fake.wait_for(lambda: h.card_message(pid), timeout=5)
        assert buttons(card)[0] == ("Approve", f"a:{pid}")
        await h.fake.wait_for(lambda: next(iter(h.store.iter_rows("outbox")))["delivered_at"] is not None)


async def test_unsent_at_shutdown_is_sent_after_restart(tmp_path):
    async with running(tmp_path, options=TelegramOptions(**{**FAST.__dict__, "stop_timeout": 0.2})) as h:
        h.fake.fail("sendMessage", "429", retry_after=30)  # the sender is waiting out a flood limit...
        await h.channel.notify(Notice("info", "kept across a restart"))
        await h.fake.wait_for(lambda: h.fake.calls_to("sendMessage"))
        settings, fake = h.bot.settings, h.fake
        await h.bot.stop()  # ...when the bot stops
        channel = TelegramChannel(settings, options=FAST)
        h.bot = Bot(settings, exchange=open_exchange(settings, clock=h.clock), channels=[channel])
        h.channel = channel
        rows = list(h.bot.store.iter_rows("outbox"))
        assert len(rows) == 1 and rows[0]["delivered_at"] is None and "shutdown" in rows[0]["last_error"]
        await h.bot.start()
        m = await fake.wait_for(lambda: next((x for x in fake.sent(CHAT) if "kept across a restart" in x.visible), None))
        assert m.visible == "[Info] kept across a restart"
        await fake.wait_for(lambda: next(iter(h.bot.store.iter_rows("outbox")))["delivered_at"] is not None)


async def test_card_deleted_in_chat_is_posted_again(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        del h.fake.messages[(CHAT, card.message_id)]  # someone deleted the card
        await h.press(ALICE, f"a:{pid}", card.message_id)
        await until_executed(h.bot, pid)
        new = await h.fake.wait_for(lambda: (m := h.card_message(pid)) and m.message_id != card.message_id and
                                    "Executed" in m.visible and m)
        assert not new.buttons
        h.fake.fail("editMessageText", "400", description="Bad Request: message is not modified")
        await h.bot.core.refresh_proposal(pid)
        h.channel._last_edit.clear()  # force a real edit call
        await h.bot.core.refresh_proposal(pid)
        await h.channel.idle()
        assert not list(h.store.iter_rows("outbox"))  # "not modified" is fine, nothing to retry


async def test_long_text_is_split_and_html_escaped(tmp_path):
    async with running(tmp_path) as h:
        text = "\n".join(f"line {i} <tag> & \"quotes\" " + "x" * 80 for i in range(120))
        await h.channel.notify(Notice("daily_summary", text))
        expected = "[Daily summary] " + text

        def parts():
            return [m for m in h.fake.sent(CHAT) if "line " in m.visible]

        # Wait for the whole text (four parts), not for the first few: under load they arrive apart.
        await h.fake.wait_for(lambda: "\n".join(m.visible for m in parts()) == expected)
        assert len(parts()) >= 3
        assert all(m.parse_mode == "HTML" and len(m.visible) <= 4096 for m in parts())


async def test_messages_to_one_chat_are_spaced(tmp_path):
    options = TelegramOptions(**{**FAST.__dict__, "min_interval": 0.25})
    async with running(tmp_path, options=options) as h:
        for i in range(3):
            await h.channel.notify(Notice("info", f"spaced {i}"))
        await h.fake.wait_for(lambda: len([m for m in h.fake.sent(CHAT) if "spaced" in m.visible]) == 3)
        at = [c.at for c in h.fake.calls_to("sendMessage") if "spaced" in str(c.params.get("text"))]
        assert all(b - a >= 0.24 for a, b in zip(at, at[1:]))


# --- pure parts --------------------------------------------------------------------------------------------


def test_limiter_group_window_and_min_interval():
    now = [0.0]
    lim = ChatLimiter(min_interval=1.0, per_window=20, window=60.0, clock=lambda: now[0])
    for i in range(20):
        assert lim.delay("-1001") == 0.0
        lim.record("-1001")
        now[0] += 1.0
    assert lim.delay("-1001") == pytest.approx(40.0)  # the first of the 20 leaves the window at t=60
    assert lim.delay("42") == 0.0  # private chats: only the 1 s spacing
    lim.record("42")
    assert lim.delay("42") == pytest.approx(1.0)
    lim.block("42", 5.0)
    assert lim.delay("42") == pytest.approx(5.0)


def test_card_html_and_plain_lines_agree():
    card = Card(title="#3 Open <covered> call", tag="[PAPER]", fields=(("Strike", "100,000"), ("Note", "a & b")),
                sections=(("Reasoning", "line one\n\nline <two>"), ("", "free text")), footer="label cc-3",
                proposal_id=3, status="pending", actionable=True)
    pairs = card_lines(card)
    assert "\n".join(p for _, p in pairs) == card.as_text()
    html_text = "\n".join(h for h, _ in pairs)
    assert check_html(html_text) is None
    assert "&lt;covered&gt;" in html_text and "a &amp; b" in html_text
    chunks = chunk_lines(text_lines("y" * 10_000 + "\n<end>"))
    assert len(chunks) == 3 and all(len(h) <= 4096 and len(p) <= 4096 for h, p in chunks)
    assert "".join(p for _, p in chunks) == "y" * 10_000 + "\n<end>"  # a cut line goes on without a newline
    assert chunks[-1][0].endswith("\n&lt;end&gt;")
    pre = chunk_lines(text_lines("a<b\n" * 2000), pre=True)
    assert all(h.startswith("<pre>") and check_html(h) is None and len(h) <= 4096 for h, _ in pre)
