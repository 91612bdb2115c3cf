"""The Slack channel end to end: a real Bolt AsyncApp serves our aiohttp endpoint (HTTP mode) or
a Socket Mode WebSocket, and calls a fake Slack Web API on 127.0.0.1; a real Bot (chatops.app.Bot)
runs on the in-process paper exchange with a manual clock.

HTTP mode: every request is a real HTTP POST to `/slack/events`, signed with the signing secret
the way Slack signs (v0 HMAC-SHA256 of `v0:<timestamp>:<body>`). Socket Mode: the fake opens a
WebSocket, says hello and pushes envelopes; Bolt's own socket-mode handler dispatches and acks.

Waits are condition polls with short timeouts (fake.wait_for), never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import socket
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator
from urllib.parse import urlencode

import aiohttp
import pytest

from agent.clock import SimClock
from agent.config import ConfigError, load_settings
from agent.exchange import open_exchange
from chatops.adapters.base import Notice
from chatops.adapters.slack import (
    ACTION_APPROVE,
    ACTION_REJECT,
    ACTION_WHY,
    REJECT_VIEW,
    ChannelPacer,
    SlackChannel,
    SlackOptions,
    card_blocks,
    esc,
    fallback_text,
    text_blocks,
)
from chatops.app import Bot
from chatops.render import Card
from tests.spine_helpers import until_executed
from tests.fakes.slack_server import BOT_USER_ID, FakeSlack, StoredMessage, fake_slack_server

CHANNEL_ID = "C123"
ALICE, BOB, STRANGER = "U1", "U2", "U9"
SECRET = "test-secret"

FAST = SlackOptions(min_interval=0.0, rate_limit_retries=3, send_attempts=2, backoff_base=0.01, backoff_max=0.05,
                    outbox_interval=0.3, stop_timeout=2, http_host="127.0.0.1", ping_interval=2)

_ids = itertools.count(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sign(body: str, timestamp: int | None = None, secret: str = SECRET) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


@dataclass
class Harness:
    fake: FakeSlack
    bot: Bot
    channel: SlackChannel
    clock: SimClock
    http: aiohttp.ClientSession | None = None

    @property
    def store(self):
        return self.bot.store

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.channel.http_port}/slack/events"

    def status(self, pid: int) -> str:
        return self.store.get_proposal(pid).status

    def paper_orders(self, label: str) -> list:
        return [o for o in self.bot.exchange.paper.orders.values() if o.label == label]

    def card_message(self, pid: int) -> StoredMessage | None:
        refs = self.bot.core.message_refs(pid, "slack")
        return self.fake.message(refs[0][0], refs[0][1]) if refs else None

    async def tick_card(self) -> tuple[int, StoredMessage]:
        """One tick that proposes; returns the proposal id and its Slack message."""
        _, decision = await self.bot.tick()
        assert decision is not None
        row = self.store.latest_proposal()
        assert row is not None and row.status == "pending"
        message = await self.fake.wait_for(lambda: self.card_message(row.id))
        return row.id, message

    # --- HTTP mode: signed requests ---------------------------------------------------------------

    async def post(self, body: str, content_type: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        assert self.http is not None
        hdrs = {"Content-Type": content_type, **(headers if headers is not None else sign(body))}
        async with self.http.post(self.url, data=body.encode(), headers=hdrs) as resp:
            return resp.status, await resp.text()

    async def interact(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, str]:
        body = urlencode({"payload": json.dumps(payload)})
        return await self.post(body, "application/x-www-form-urlencoded", headers)

    async def press(self, user: str, action_id: str, pid: int | str, message: StoredMessage | None = None,
                    trigger_id: str | None = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
        return await self.interact(block_actions(user, action_id, pid, message, trigger_id), headers)

    async def command(self, user: str, name: str, text: str = "", channel: str = CHANNEL_ID) -> str:
        """Run a slash command; returns the response_url it was given (answers arrive there)."""
        response_url = self.fake.response_url()
        body = urlencode(command_form(user, name, text, channel, response_url))
        status, _ = await self.post(body, "application/x-www-form-urlencoded")
        assert status == 200
        return response_url

    async def answer(self, response_url: str, timeout: float = 5.0):
        return (await self.fake.wait_for(lambda: self.fake.responses_to(response_url), timeout))[0]

    async def event(self, event: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, str]:
        return await self.post(json.dumps(event_callback(event)), "application/json", headers)


def block_actions(user: str, action_id: str, pid: int | str, message: StoredMessage | None = None,
                  trigger_id: str | None = None) -> dict[str, Any]:
    ts = message.ts if message else "1700000000.000001"
    return {
        "type": "block_actions", "api_app_id": "A1", "token": "legacy",
        "user": {"id": user, "username": user.lower(), "team_id": "T1"}, "team": {"id": "T1", "domain": "fake"},
        "container": {"type": "message", "message_ts": ts, "channel_id": CHANNEL_ID, "is_ephemeral": False},
        "trigger_id": trigger_id or f"trigger-{next(_ids)}", "channel": {"id": CHANNEL_ID, "name": "trading"},
        "message": {"type": "message", "ts": ts, "text": message.text if message else ""},
        "actions": [{"type": "button", "action_id": action_id, "block_id": "cc_actions", "value": str(pid),
                     "action_ts": f"{time.time():.6f}"}],
    }


def view_submission(user: str, view: dict[str, Any], reason: str | None) -> dict[str, Any]:
    return {
        "type": "view_submission", "api_app_id": "A1", "token": "legacy", "trigger_id": f"trigger-{next(_ids)}",
        "user": {"id": user, "username": user.lower(), "team_id": "T1"}, "team": {"id": "T1", "domain": "fake"},
        "view": {**view, "id": "V1", "team_id": "T1", "state": {"values": {
            "reason": {"reason_input": {"type": "plain_text_input", "value": reason}}}}},
    }


def command_form(user: str, name: str, text: str, channel: str, response_url: str) -> dict[str, str]:
    return {"token": "legacy", "team_id": "T1", "team_domain": "fake", "channel_id": channel,
            "channel_name": "trading", "user_id": user, "user_name": user.lower(), "command": name, "text": text,
            "api_app_id": "A1", "is_enterprise_install": "false", "response_url": response_url,
            "trigger_id": f"trigger-{next(_ids)}"}


def event_callback(event: dict[str, Any]) -> dict[str, Any]:
    return {"token": "legacy", "team_id": "T1", "api_app_id": "A1", "event": event, "type": "event_callback",
            "event_id": f"Ev{next(_ids)}", "event_time": int(time.time()),
            "authorizations": [{"team_id": "T1", "user_id": BOT_USER_ID, "is_bot": True}]}


@asynccontextmanager
async def running(tmp_path, options: SlackOptions = FAST, socket_mode: bool = False,
                  **overrides) -> AsyncIterator[Harness]:
    async with fake_slack_server() as fake:
        # Socket Mode needs no signing secret (nothing reaches us over HTTP): leave it out there.
        extra: dict[str, Any] = {"slack_app_token": fake.app_token, "slack_signing_secret": None} if socket_mode else {}
        values: dict[str, Any] = dict(
            env_file=None, database_path=str(tmp_path / "chatops.db"), paper_state_path=str(tmp_path / "paper.json"),
            slack_bot_token=fake.bot_token, slack_signing_secret=SECRET, slack_channel_id=CHANNEL_ID,
            slack_allowed_user_ids=f"{ALICE},{BOB}", slack_api_base_url=fake.base_url,
            slack_http_port=free_port(), console_enabled=False)
        settings = load_settings(**{**values, **extra, **overrides})
        clock = SimClock()
        channel = SlackChannel(settings, options=options)
        bot = Bot(settings, exchange=open_exchange(settings, clock=clock), channels=[channel])
        await bot.start()
        h = Harness(fake, bot, channel, clock)
        async with aiohttp.ClientSession() as http:
            h.http = http
            try:
                yield h
            finally:
                await h.bot.stop()


def buttons(m: StoredMessage) -> list[tuple[str, str, str]]:
    return [(b["text"]["text"], b["action_id"], b["value"]) for b in m.buttons]


def block_types(m: StoredMessage) -> list[str]:
    return [b["type"] for b in m.blocks]


# --- proposals and buttons ------------------------------------------------------------------------


async def test_proposal_blocks_and_approve_executes_and_updates_in_place(tmp_path):
    async with running(tmp_path) as h:
        assert h.channel.mode == "http" and h.channel.bot_user_id == BOT_USER_ID
        pid, card = await h.tick_card()
        assert card.channel == CHANNEL_ID
        assert block_types(card) == ["header", "section", "section", "section", "section", "context", "actions"]
        assert card.blocks[0]["text"]["text"] == f"[PAPER] #{pid} Open covered call"
        fields = "\n".join(f["text"] for f in card.blocks[1]["fields"])
        assert "*Instrument*\nBTC-" in fields and "*Size*" in fields
        context = " ".join(e["text"] for e in card.blocks[-2]["elements"])
        label = h.store.get_proposal(pid).label
        assert "[PAPER]" in context and "source: rule" in context and f"label {label}" in context
        assert buttons(card) == [("Approve", ACTION_APPROVE, str(pid)), ("Reject", ACTION_REJECT, str(pid)),
                                 ("Why", ACTION_WHY, str(pid))]
        approve, reject, _ = card.buttons
        assert approve["style"] == "primary" and reject["style"] == "danger"
        assert approve["confirm"]["confirm"]["text"] == "Approve" and "BTC-" in approve["confirm"]["text"]["text"]
        assert card.text.startswith(f"[PAPER] #{pid} Open covered call")  # the fallback text
        assert h.bot.core.message_refs(pid, "slack") == [(CHANNEL_ID, card.ts)]

        status, _ = await h.press(ALICE, ACTION_APPROVE, pid, card)
        assert status == 200
        await until_executed(h.bot, pid)
        assert len(h.paper_orders(label)) == 1
        # The same message (chat.update by channel + ts, no response_url) now shows the final state, no buttons.
        await h.fake.wait_for(lambda: "Executed" in card.visible and not card.buttons)
        assert "approved by U1 (slack)" in card.visible and "order BTC-" in card.visible
        updates = h.fake.calls_to("chat.update")
        assert updates and all(c.params["channel"] == CHANNEL_ID and c.params["ts"] == card.ts for c in updates)
        assert "actions" not in block_types(card)
        assert not h.fake.responses
        await h.fake.wait_for(lambda: h.fake.ephemerals_for(ALICE))
        assert "approved" in h.fake.ephemerals_for(ALICE)[0]["text"].lower()
        await h.fake.wait_for(lambda: any("[Fill]" in m.visible for m in h.fake.posted(CHANNEL_ID)))


async def test_stranger_is_refused_everywhere_and_recorded(tmp_path):
    async with running(tmp_path) as h:
        h.channel.strangers.seconds = 0  # tell every time (by default once per conversation per hour)
        pid, card = await h.tick_card()
        for action in (ACTION_APPROVE, ACTION_REJECT, ACTION_WHY):
            status, _ = await h.press(STRANGER, action, pid, card)
            assert status == 200
        await h.fake.wait_for(lambda: len(h.fake.ephemerals_for(STRANGER)) == 3)
        assert all(e["text"].startswith("Not authorized") for e in h.fake.ephemerals_for(STRANGER))
        url = await h.command(STRANGER, "/cc", f"approve {pid}")
        assert (await h.answer(url)).text.startswith("Not authorized")
        assert (await h.answer(url)).response_type == "ephemeral"
        await h.event({"type": "app_mention", "user": STRANGER, "text": f"<@{BOT_USER_ID}> balance?",
                       "ts": "1700000100.000100", "channel": CHANNEL_ID, "event_ts": "1700000100.000100"})
        await h.fake.wait_for(lambda: len(h.fake.ephemerals_for(STRANGER)) == 4)
        await h.channel.idle()
        assert h.status(pid) == "pending" and not h.store.votes(pid)
        assert not h.fake.views and not h.fake.calls_to("chat.update")
        assert buttons(card)  # untouched
        events = h.store.list_events(kind="unauthorized")
        assert len(events) == 5 and {e["actor"] for e in events} == {STRANGER}
        assert {e["channel"] for e in events} == {"slack"}


async def test_forged_signature_and_stale_timestamp_are_refused(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        body = urlencode({"payload": json.dumps(block_actions(ALICE, ACTION_APPROVE, pid, card))})
        ctype = "application/x-www-form-urlencoded"
        forged, _ = await h.post(body, ctype, sign(body, secret="not-the-secret"))
        stale, _ = await h.post(body, ctype, sign(body, timestamp=int(time.time()) - 6 * 60))
        unsigned, _ = await h.post(body, ctype, {})
        tampered, _ = await h.post(body.replace("U1", "U2"), ctype, sign(body))  # signature of another body
        assert {forged, stale, unsigned, tampered} <= {401, 403}
        await h.channel.idle()
        assert h.status(pid) == "pending" and not h.store.votes(pid)
        assert not h.fake.ephemerals and not h.fake.calls_to("chat.update")
        # Slack's URL check (HTTP mode set-up) is answered, when signed.
        status, text = await h.post(json.dumps({"type": "url_verification", "challenge": "abc", "token": "t"}),
                                    "application/json")
        assert status == 200 and "abc" in text


async def test_double_press_executes_once(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        results = await asyncio.gather(h.press(ALICE, ACTION_APPROVE, pid, card),
                                       h.press(BOB, ACTION_APPROVE, pid, card),
                                       h.press(ALICE, ACTION_APPROVE, pid, card))
        assert [s for s, _ in results] == [200, 200, 200]
        await until_executed(h.bot, pid)
        await h.fake.wait_for(lambda: len(h.fake.ephemerals) == 3)
        await h.bot.core.drain()
        assert len(h.paper_orders(h.store.get_proposal(pid).label)) == 1
        texts = [e["text"].lower() for e in h.fake.ephemerals]
        assert sum("approved" in t and "already" not in t for t in texts) == 1
        await h.fake.wait_for(lambda: "Executed" in card.visible and not card.buttons)


async def test_reject_with_reason_through_the_modal(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        status, _ = await h.press(BOB, ACTION_REJECT, pid, card, trigger_id="trig-42")
        assert status == 200
        opened = await h.fake.wait_for(lambda: h.fake.views)
        assert opened[0]["trigger_id"] == "trig-42"
        view = opened[0]["view"]
        assert view["callback_id"] == REJECT_VIEW and json.loads(view["private_metadata"])["proposal_id"] == pid
        assert h.status(pid) == "pending"  # nothing happens until the modal is submitted
        # A stranger cannot submit it either (a submission is checked on its own).
        status, _ = await h.interact(view_submission(STRANGER, view, "nope"))
        assert status == 200
        await h.fake.wait_for(lambda: h.fake.ephemerals_for(STRANGER))
        assert h.status(pid) == "pending"

        status, text = await h.interact(view_submission(BOB, view, "strike too close <to> spot & co"))
        assert status == 200 and text in ("", "{}")  # an empty ack closes the modal
        await h.fake.wait_for(lambda: h.status(pid) == "rejected")
        assert h.store.votes(pid)[0].reason == "strike too close <to> spot & co"
        await h.fake.wait_for(lambda: "Rejected" in card.visible and not card.buttons)
        assert "rejected by U2 (slack): strike too close <to> spot & co" in card.visible
        raw = "\n".join(b.get("text", {}).get("text", "") for b in card.blocks)
        assert "&lt;to&gt; spot &amp; co" in raw  # escaped in mrkdwn
        assert not h.paper_orders(h.store.get_proposal(pid).label)
        # Reject on a decided proposal: no modal, an ephemeral says so.
        await h.press(ALICE, ACTION_REJECT, pid, card)
        await h.fake.wait_for(lambda: any("already decided" in e["text"] for e in h.fake.ephemerals_for(ALICE)))
        assert len(h.fake.views) == 1


async def test_why_button_is_answered_ephemerally(tmp_path):
    async with running(tmp_path) as h:
        pid, card = await h.tick_card()
        await h.press(ALICE, ACTION_WHY, pid, card)
        answer = (await h.fake.wait_for(lambda: h.fake.ephemerals_for(ALICE)))[0]
        assert answer["channel"] == CHANNEL_ID and f"#{pid}" in answer["visible"]
        assert h.status(pid) == "pending"


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


# --- Socket Mode ----------------------------------------------------------------------------------


async def test_socket_mode_approve_and_command(tmp_path):
    async with running(tmp_path, socket_mode=True) as h:
        assert h.channel.mode == "socket" and h.channel.http_port is None
        await h.fake.wait_for(lambda: h.fake.sockets and h.channel.socket_connected)
        pid, card = await h.tick_card()
        eid = await h.fake.push_envelope("interactive", block_actions(STRANGER, ACTION_APPROVE, pid, card))
        await h.fake.wait_for(lambda: h.fake.acks.get(eid))
        await h.fake.wait_for(lambda: h.fake.ephemerals_for(STRANGER))
        assert h.status(pid) == "pending"
        eid = await h.fake.push_envelope("interactive", block_actions(ALICE, ACTION_APPROVE, pid, card))
        await h.fake.wait_for(lambda: h.fake.acks.get(eid))
        await until_executed(h.bot, pid)
        await h.fake.wait_for(lambda: "Executed" in card.visible and not card.buttons)
        url = h.fake.response_url()
        eid = await h.fake.push_envelope("slash_commands", command_form(BOB, "/cc", "status", CHANNEL_ID, url),
                                         accepts_response_payload=True)
        await h.fake.wait_for(lambda: h.fake.acks.get(eid))
        assert "Pending proposals: none" in (await h.answer(url)).visible
        # Slack refreshes Socket Mode connections now and then: the client reconnects and goes on.
        await h.fake.push_message({"type": "disconnect", "reason": "refresh_requested"})
        await h.fake.wait_for(lambda: h.fake.socket_connections == 2 and h.fake.sockets)
        url = h.fake.response_url()
        eid = await h.fake.push_envelope("slash_commands", command_form(ALICE, "/cc", "why", CHANNEL_ID, url))
        await h.fake.wait_for(lambda: h.fake.acks.get(eid))
        assert f"#{pid}" in (await h.answer(url)).visible


# --- configuration and rendering ---------------------------------------------------------------------


def test_mode_and_token_checks(tmp_path):
    base = dict(env_file=None, database_path=str(tmp_path / "db"), slack_bot_token="xoxb-x", slack_channel_id="C1")
    with pytest.raises(ConfigError, match="SLACK_APP_TOKEN .* or SLACK_SIGNING_SECRET"):
        SlackChannel(load_settings(**base))
    with pytest.raises(ConfigError, match="xapp-"):
        SlackChannel(load_settings(**base, slack_app_token="xoxb-wrong"))
    ch = SlackChannel(load_settings(**base, slack_app_token="xapp-1", slack_signing_secret="s"))
    assert ch.mode == "socket"
    ch = SlackChannel(load_settings(**base, slack_signing_secret="s", slack_api_base_url="http://127.0.0.1:1/api"))
    assert ch.mode == "http" and ch.client.base_url == "http://127.0.0.1:1/api/"
    assert any(type(r).__name__ == "AsyncRateLimitErrorRetryHandler" for r in ch.client.retry_handlers)


async def test_bad_bot_token_stops_start(tmp_path):
    async with fake_slack_server(bot_token="xoxb-other") as fake:
        settings = load_settings(env_file=None, database_path=str(tmp_path / "db"), slack_bot_token="xoxb-test",
                                 slack_signing_secret=SECRET, slack_channel_id=CHANNEL_ID, slack_allowed_user_ids=ALICE,
                                 slack_api_base_url=fake.base_url, slack_http_port=free_port())
        with pytest.raises(ConfigError, match="SLACK_BOT_TOKEN was rejected"):
            await SlackChannel(settings, options=FAST).start(core=None)  # type: ignore[arg-type]


def test_card_rendering_escapes_and_clips():
    card = Card(title="#7 Open covered call", tag="[LIVE]", fields=(("Instrument", "BTC-<x>&y"), ("Source", "llm")),
                sections=(("Reasoning", "a < b & c > d\n" + "x" * 5000),), footer="label cc-7", proposal_id=7,
                status="pending", actionable=True)
    blocks = card_blocks(card)
    assert blocks[1]["fields"][0]["text"] == "*Instrument*\nBTC-&lt;x&gt;&amp;y"
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks if b["type"] == "section" and "text" in b)
    assert blocks[2]["text"]["text"].startswith("*Reasoning*\na &lt; b &amp; c &gt; d")
    assert [e["text"] for e in blocks[-2]["elements"]] == ["*[LIVE]*", "source: llm", "label cc-7"]
    assert [b["value"] for b in blocks[-1]["elements"]] == ["7", "7", "7"]
    assert "actions" not in [b["type"] for b in card_blocks(Card(**{**card.__dict__, "actionable": False}))]
    text = fallback_text(card)
    assert len(text) <= 3000 and text.endswith("…") and "&lt;x&gt;" in text
    assert esc("<@U1> & <!channel>") == "&lt;@U1&gt; &amp; &lt;!channel&gt;"  # no pings smuggled in
    long = text_blocks("line\n" * 2000, pre=True)
    assert len(long) > 1 and all(b["text"]["text"].startswith("```") for b in long)


async def test_channel_pacer_spaces_messages():
    now = [0.0]
    slept: list[float] = []

    async def sleep(d: float) -> None:
        slept.append(d)
        now[0] += d

    pacer = ChannelPacer(1.0, clock=lambda: now[0], sleep=sleep)
    await pacer.acquire("C1")
    await pacer.acquire("C2")  # another channel: no wait
    await pacer.acquire("C1")
    assert slept == [1.0]


def test_manifest_matches_the_commands_we_register():
    import re
    from pathlib import Path

    from chatops.adapters.slack import COMMANDS

    text = (Path(__file__).resolve().parent.parent / "slack-manifest.yaml").read_text()
    from agent.config import Settings

    listed = re.findall(r"- command: (/\S+)\n\s+description: \"([^\"]*)\"\n", text)
    # One namespaced command, the default SLACK_COMMAND; its description names every word it takes.
    assert [c for c, _ in listed] == [f"/{Settings.model_fields['slack_command'].default}"]
    assert all(name in listed[0][1] for name, _, _ in COMMANDS)
    assert re.search(r"socket_mode_enabled: true", text) and re.search(r"interactivity:\n\s+is_enabled: true", text)
    for needed in ("chat:write", "commands", "app_mentions:read", "im:history", "im:write", "- app_mention",
                   "- message.im"):
        assert needed in text
