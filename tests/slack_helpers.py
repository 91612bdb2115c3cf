"""Shared pieces of the Slack channel's tests (tests/test_slack.py, tests/test_slack_commands.py): a
real Bolt AsyncApp serves our aiohttp endpoint (HTTP mode) or a Socket Mode WebSocket, and calls a fake
Slack Web API on 127.0.0.1; a real Bot (chatops.app.Bot) runs on the in-process paper exchange with a
manual clock.

HTTP mode: every request is a real HTTP POST to `/slack/events`, signed with the signing secret
the way Slack signs (v0 HMAC-SHA256 of `v0:<timestamp>:<body>`). Socket Mode: the fake opens a
WebSocket, says hello and pushes envelopes; Bolt's own socket-mode handler dispatches and acks.

Waits are condition polls with short timeouts (fake.wait_for), never fixed sleeps.
"""

from __future__ import annotations

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

from agent.clock import SimClock
from agent.config import load_settings
from agent.exchange import open_exchange
from chatops.adapters.slack import SlackChannel, SlackOptions
from chatops.app import Bot
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
