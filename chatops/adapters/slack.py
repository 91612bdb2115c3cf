"""Slack channel on slack-bolt's AsyncApp, inside the bot's own asyncio loop.

Inbound: Socket Mode by default (SLACK_APP_TOKEN, an outgoing WebSocket: no public address);
HTTP mode when SLACK_SIGNING_SECRET is set and no app token is: an aiohttp server on
SLACK_HTTP_PORT serves `/slack/events` (events, slash commands and interactivity), and Bolt checks
the signature and the timestamp (older than 5 minutes: refused) of every request. Buttons carry
only the proposal id; everything else (who may vote, whether it is still pending) is the core's
and the database's business. Every action, command, view submission and question checks the
acting user against SLACK_ALLOWED_USER_IDS; a stranger gets an ephemeral "Not authorized", the
attempt is recorded and nothing changes.

Every handler acknowledges first (Slack wants an answer within 3 seconds) and does its work in a
task afterwards, so a slow question never holds up an approval.

Outbound: post/update/notify only put a job on a per-channel queue; one sender task per channel
paces messages (about 1 per second per channel), the Web API client honours 429 Retry-After
(AsyncRateLimitErrorRetryHandler), network errors are retried with bounded back-off, and a message
that still could not be delivered is recorded in the store's outbox, retried at start and every
`outbox_interval` seconds. A proposal's message is edited in place with chat.update (by the
channel and ts stored with the proposal, not response_url, which expires) to its final state,
buttons removed. Ephemeral answers (chat.postEphemeral, response_url) are best effort: they go out
at once, and a failure is logged, not queued, because a late private answer helps nobody.

Reject opens a modal (views.open at once: the trigger_id lives 3 seconds) with an optional reason;
its submission rejects with that reason (the view's private_metadata carries the proposal id, and
the submitting user is checked again).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from agent.config import ConfigError, Settings
from chatops.render import Card

from .base import HELP_TEXT, CoreAPI, Notice, Reply
from .delivery import DeliveryQueue, QueuedJob

log = logging.getLogger(__name__)

CHANNEL = "slack"

# Slack's limits (Block Kit reference).
MAX_SECTION = 3000  # characters of a section's text
MAX_FIELD = 2000  # characters of one section field
MAX_FIELDS = 10  # fields per section
MAX_HEADER = 150  # characters of a header's plain text
MAX_BLOCKS = 50  # blocks per message
MAX_CONTEXT = 10  # elements of a context block
FALLBACK_TEXT = 3000  # the `text` of a message with blocks: notifications show its start only

ACTION_APPROVE = "cc_approve"
ACTION_REJECT = "cc_reject"
ACTION_WHY = "cc_why"
ACTIONS_BLOCK = "cc_actions"
REJECT_VIEW = "cc_reject_modal"
REASON_BLOCK = "reason"
REASON_INPUT = "reason_input"
MAX_REASON = 500

NOT_AUTHORIZED = "Not authorized: you are not on this app's allowlist."

# Slash commands (without SLACK_COMMAND_PREFIX): name, description, usage hint (also in slack-manifest.yaml).
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("status", "Account, positions, last tick, pending proposals, pause state", "[public]"),
    ("pending", "Proposals waiting for a vote", "[public]"),
    ("why", "The reasoning, numbers and risk check behind a proposal", "[id] [public]"),
    ("history", "The last decisions", "[n] [public]"),
    ("approve", "Approve a proposal", "<id>"),
    ("reject", "Reject a proposal", "<id> [reason]"),
    ("pause", "Kill switch: nothing is proposed or executed", "[reason]"),
    ("resume", "Lift the pause", ""),
    ("ask", "Ask the agent a question", "<question> [public]"),
    ("whatif", "What the agent would do on a modified state", "spot=-5% iv=+10 [public]"),
)
PRE_COMMANDS = frozenset({"status", "history", "pending"})  # tables: answered in a monospace block
NEEDS_TEXT = frozenset({"ask", "whatif"})

NOTICE_LABELS = {"fill": "Fill", "failure": "Failure", "pause": "Kill switch", "llm_fallback": "LLM fallback",
                 "daily_summary": "Daily summary", "watchdog": "Watchdog", "info": "Info"}

# chat.update errors after which the card is posted again instead.
REPOST_ERRORS = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
BLOCK_ERRORS = frozenset({"invalid_blocks", "invalid_blocks_format", "msg_too_long", "too_many_blocks"})
AUTH_ERRORS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
                         "not_allowed_token_type"})
NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


@dataclass(frozen=True)
class SlackOptions:
    """Limits and timings; the defaults suit Slack, tests shorten them."""

    min_interval: float = 1.0  # seconds between two messages to one channel (Slack: about 1/s)
    rate_limit_retries: int = 3  # 429 answers honoured (Retry-After) for one request before the outbox
    send_attempts: int = 3  # network failures of one request before it goes to the outbox
    backoff_base: float = 0.5  # seconds, doubled per network failure
    backoff_max: float = 30.0
    outbox_interval: float = 30.0  # seconds between outbox sweeps (also the first retry delay)
    outbox_backoff_max: float = 3600.0
    stop_timeout: float = 5.0  # seconds to finish handlers and sending at stop; the rest goes to the outbox
    http_host: str = "0.0.0.0"  # HTTP mode: where to listen (put an HTTPS reverse proxy in front)
    http_path: str = "/slack/events"
    ping_interval: float = 10.0  # Socket Mode ping/pong, seconds
    api_timeout: int = 30  # seconds per Web API request


# --- rendering -------------------------------------------------------------------------------------------


def esc(text: Any) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """At most `limit` characters: cut at a line break when one is near, ending with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 0)]
    nl = cut.rfind("\n")
    if nl >= limit * 0.6:
        cut = cut[:nl]
    return cut + "…"


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def _plain(text: str, limit: int = MAX_HEADER) -> dict[str, Any]:
    return {"type": "plain_text", "text": clip(text, limit) or " ", "emoji": True}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(clip(text, MAX_SECTION) or " ")}


def fallback_text(card: Card) -> str:
    """The message's `text`: the card as plain text (escaped, clipped) for notifications and old clients."""
    return clip(esc(card.as_text()), FALLBACK_TEXT)


def _field(card: Card, name: str) -> str | None:
    return next((v for k, v in card.fields if k == name), None)


def _what(card: Card) -> str:
    return " ".join(x for x in (_field(card, "Instrument"), _field(card, "Size")) if x and x != "-")


def card_blocks(card: Card, *, actions: bool = True) -> list[dict[str, Any]]:
    """The card as Block Kit blocks: header, fields, sections, a context line (tag, source, label)
    and, while the card is actionable, Approve / Reject / Why."""
    blocks: list[dict[str, Any]] = [{"type": "header", "text": _plain(f"{card.tag} {card.title}")}]
    fields = [(k, v) for k, v in card.fields if k != "Source"]  # the source goes in the context line
    for i in range(0, len(fields), MAX_FIELDS):
        blocks.append({"type": "section", "fields": [
            _mrkdwn(clip(f"*{esc(k)}*\n{esc(v)}", MAX_FIELD)) for k, v in fields[i:i + MAX_FIELDS]]})
    for heading, text in card.sections:
        body = esc(text.strip()) or "-"
        blocks.append(_section(f"*{esc(heading)}*\n{body}" if heading else body))
    context = [_mrkdwn(f"*{esc(card.tag)}*")]
    source = _field(card, "Source")
    if source:
        context.append(_mrkdwn(f"source: {esc(source)}"))
    if card.footer:
        context.append(_mrkdwn(clip(esc(card.footer), MAX_FIELD)))
    blocks.append({"type": "context", "elements": context[:MAX_CONTEXT]})
    if actions and card.actionable and card.proposal_id is not None:
        blocks.append(action_block(card))
    if len(blocks) > MAX_BLOCKS:  # keep the header, the context line and the buttons
        tail = 2 if blocks[-1].get("type") == "actions" else 1
        blocks = blocks[: MAX_BLOCKS - tail] + blocks[-tail:]
    return blocks


def action_block(card: Card) -> dict[str, Any]:
    pid = int(card.proposal_id)  # type: ignore[arg-type]
    what = _what(card)
    confirm_text = f"{card.tag} {card.title}{': ' + what if what else ''}. It executes after a fresh risk check."
    return {"type": "actions", "block_id": ACTIONS_BLOCK, "elements": [
        {"type": "button", "action_id": ACTION_APPROVE, "text": _plain("Approve", 75), "style": "primary",
         "value": str(pid),
         "confirm": {"title": _plain(f"Approve #{pid}?", 100), "text": _mrkdwn(clip(esc(confirm_text), 300)),
                     "confirm": _plain("Approve", 30), "deny": _plain("Cancel", 30), "style": "primary"}},
        {"type": "button", "action_id": ACTION_REJECT, "text": _plain("Reject", 75), "style": "danger",
         "value": str(pid)},
        {"type": "button", "action_id": ACTION_WHY, "text": _plain("Why", 75), "value": str(pid)},
    ]}


def text_blocks(text: str, *, pre: bool = False) -> list[dict[str, Any]]:
    """Plain text as section blocks (escaped; monospace with `pre`), split at line breaks to fit."""
    budget = MAX_SECTION - (8 if pre else 0)
    chunks: list[str] = []
    acc = ""
    for line in esc(text).splitlines() or [""]:
        while len(line) > budget:  # a single over-long line is cut
            if acc:
                chunks.append(acc)
                acc = ""
            chunks.append(line[:budget])
            line = line[budget:]
        if acc and len(acc) + 1 + len(line) > budget:
            chunks.append(acc)
            acc = line
        else:
            acc = f"{acc}\n{line}" if acc else line
    if acc or not chunks:
        chunks.append(acc)
    blocks = [_section(f"```{c}```" if pre else c) for c in chunks]
    if len(blocks) > MAX_BLOCKS:
        blocks = blocks[: MAX_BLOCKS - 1] + [_section("… (cut: longer than one Slack message)")]
    return blocks


def reply_message(reply: Reply, *, pre: bool = False) -> tuple[str, list[dict[str, Any]]]:
    """A core reply as (fallback text, blocks)."""
    if reply.card is not None:
        return fallback_text(reply.card), card_blocks(reply.card)
    return clip(esc(reply.text), FALLBACK_TEXT), text_blocks(reply.text, pre=pre)


def notice_message(notice: Notice) -> tuple[str, list[dict[str, Any]]]:
    if notice.card is not None:
        return fallback_text(notice.card), card_blocks(notice.card, actions=False)
    label = NOTICE_LABELS.get(notice.kind, notice.kind)
    blocks = text_blocks(notice.text)
    blocks[0] = _section(f"*[{esc(label)}]* {blocks[0]['text']['text']}")
    return clip(f"[{esc(label)}] {esc(notice.text)}", FALLBACK_TEXT), blocks


def reject_modal(pid: int, card: Card | None, channel: str | None) -> dict[str, Any]:
    summary = f"*{esc(card.tag)} {esc(card.title)}*" if card else f"*Proposal #{pid}*"
    if card is not None and _what(card):
        summary += f"\n{esc(_what(card))}"
    return {
        "type": "modal",
        "callback_id": REJECT_VIEW,
        "private_metadata": json.dumps({"proposal_id": pid, "channel": channel}),
        "title": _plain(f"Reject #{pid}", 24),
        "submit": _plain("Reject", 24),
        "close": _plain("Cancel", 24),
        "blocks": [
            _section(summary),
            {"type": "input", "block_id": REASON_BLOCK, "optional": True,
             "label": _plain("Reason (optional)", 2000),
             "element": {"type": "plain_text_input", "action_id": REASON_INPUT, "multiline": True,
                         "max_length": MAX_REASON, "placeholder": _plain("e.g. strike too close to spot", 150)}},
        ],
    }


def slack_help(prefix: str = "") -> str:
    lines = ["Slash commands (end with `public` to answer in the channel rather than only to you):"]
    lines += [f"  /{prefix}{name} {hint.replace('[public]', '').strip()}".rstrip() + f"  - {desc}"
              for name, desc, hint in COMMANDS]
    lines += ["", "Under each proposal: Approve (asks to confirm), Reject (optional reason), Why.",
              "Mention the app, or write to it directly, to ask a question.", "", HELP_TEXT]
    return "\n".join(lines)


def _pid(value: Any) -> int | None:
    text = str(value or "").strip()
    return int(text) if re.fullmatch(r"\d{1,12}", text) else None


# --- outgoing jobs ---------------------------------------------------------------------------------------


class _GiveUp(Exception):
    """Slack did not take the message after the bounded retries: the outbox keeps it."""


@dataclass
class Job(QueuedJob):
    """op "proposal": post or update the card of `proposal_id`; op "message": post `text` and `blocks`
    to the channel `dest`."""

    text: str = ""
    blocks: list[dict[str, Any]] = field(default_factory=list)
    thread_ts: str | None = None

    def payload(self) -> dict[str, Any]:
        return {"op": self.op, "channel": self.dest, "proposal_id": self.proposal_id, "text": self.text,
                "blocks": self.blocks, "thread_ts": self.thread_ts}

    @classmethod
    def from_payload(cls, p: dict[str, Any], outbox_id: int, attempts: int) -> "Job":
        return cls(op=p.get("op", "message"), dest=str(p.get("channel")), proposal_id=p.get("proposal_id"),
                   text=p.get("text") or "", blocks=list(p.get("blocks") or []), thread_ts=p.get("thread_ts"),
                   outbox_id=outbox_id, attempts=attempts)


class ChannelPacer:
    """At least `min_interval` seconds between two messages to one Slack channel."""

    def __init__(self, min_interval: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.min_interval = min_interval
        self.clock = clock
        self.sleep = sleep
        self._last: dict[str, float] = {}

    def delay(self, channel: str) -> float:
        last = self._last.get(channel)
        return 0.0 if last is None else max(last + self.min_interval - self.clock(), 0.0)

    async def acquire(self, channel: str) -> None:
        while (d := self.delay(channel)) > 0:
            await self.sleep(d)
        self._last[channel] = self.clock()


# --- the channel -----------------------------------------------------------------------------------------


class SlackChannel:
    name = CHANNEL

    def __init__(self, settings: Settings, *, app: AsyncApp | None = None, options: SlackOptions | None = None) -> None:
        self.settings = settings
        self.options = options or SlackOptions()
        self.channel_id = settings.slack_channel_id or None
        self.prefix = settings.slack_command_prefix or ""
        self._token = settings.secret("slack_bot_token") or ""
        self._app_token = settings.secret("slack_app_token") or ""
        self._signing_secret = settings.secret("slack_signing_secret") or ""
        if self._app_token:
            if not self._app_token.startswith("xapp-"):
                raise ConfigError("config error: SLACK_APP_TOKEN=*** is not allowed: an app-level token starts with "
                                  "xapp- (Basic Information -> App-Level Tokens, scope connections:write)")
            self.mode = "socket"
        elif self._signing_secret:
            self.mode = "http"
        else:
            raise ConfigError("config error: Slack needs SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET "
                              "(HTTP mode): see docs/slack.md")
        if app is None and not self._token:
            raise ConfigError("config error: SLACK_BOT_TOKEN is empty: install the Slack app and copy its xoxb- token")
        base = settings.slack_api_base_url
        self.api_base_url = (base if base.endswith("/") else base + "/") if base else None
        self.app = app if app is not None else self._build_app()
        self.core: CoreAPI | None = None
        self.pacer = ChannelPacer(self.options.min_interval)
        self.bot_user_id: str | None = None
        self.http_port: int | None = None
        self._tasks: set[asyncio.Task] = set()
        self._last_sig: dict[tuple[str, str], str] = {}
        self._seen_events: OrderedDict[str, None] = OrderedDict()
        self._socket: Any = None
        self._socket_task: asyncio.Task | None = None
        self._runner: Any = None
        self._registered = False
        self._started = False
        self.stats = {"posted": 0, "updated": 0, "ephemeral": 0, "responded": 0, "network_retries": 0,
                      "outboxed": 0, "outbox_delivered": 0, "text_fallbacks": 0, "reposts": 0}
        self.delivery = DeliveryQueue(
            CHANNEL, core=lambda: self.core, deliver=self._deliver, give_up=(_GiveUp,), job_type=Job,
            outbox_interval=self.options.outbox_interval, outbox_backoff_max=self.options.outbox_backoff_max,
            clean=self._clean, stats=self.stats, log=log,
            wall_clock_retries=False, leftovers_due_now=False, keep_interrupted=True)

    @property
    def client(self) -> AsyncWebClient:
        return self.app.client

    def _build_app(self) -> AsyncApp:
        kwargs: dict[str, Any] = {"base_url": self.api_base_url} if self.api_base_url else {}
        client = AsyncWebClient(
            token=self._token, timeout=self.options.api_timeout,
            retry_handlers=[AsyncConnectionErrorRetryHandler(),
                            AsyncRateLimitErrorRetryHandler(max_retry_count=self.options.rate_limit_retries)],
            **kwargs)
        # Request verification stays on: in HTTP mode every request needs a valid, fresh signature.
        return AsyncApp(client=client, signing_secret=self._signing_secret, name="chatops-slack",
                        process_before_response=False, request_verification_enabled=True)

    def _clean(self, text: str) -> str:
        for secret in (self._token, self._app_token, self._signing_secret):
            if secret:
                text = text.replace(secret, "***")
        return text

    def command_name(self, word: str) -> str:
        return f"/{self.prefix}{word}"

    # --- life cycle --------------------------------------------------------------------------------------

    async def start(self, core: CoreAPI) -> None:
        self.core = core
        self.delivery.stopping = False  # this channel may have been stopped before
        if not self.channel_id:
            log.warning("SLACK_CHANNEL_ID is not set: proposals and notices have nowhere to go (commands still work)")
        await self._check_token()
        self._register()
        if self.mode == "socket":
            await self._start_socket_mode()
        else:
            await self._start_http()
        self._started = True
        self.delivery.start()
        log.info("slack channel started (%s, channel %s)", "Socket Mode" if self.mode == "socket" else
                 f"HTTP on port {self.http_port}{self.options.http_path}", self.channel_id)

    async def _check_token(self) -> None:
        try:
            auth = await self.client.auth_test()
            self.bot_user_id = auth.get("user_id")
        except SlackApiError as exc:
            error = self._error(exc)
            if error in AUTH_ERRORS:
                raise ConfigError(f"config error: SLACK_BOT_TOKEN was rejected by Slack ({error}): reinstall the app "
                                  f"and copy its Bot User OAuth Token (xoxb-)") from None
            log.warning("slack: auth.test failed (%s): starting anyway", error)
        except (*NETWORK_ERRORS, SlackClientError) as exc:
            # Slack unreachable: start anyway; messages wait in the outbox until it answers.
            log.warning("slack: auth.test failed (%s): starting anyway", self._clean(f"{type(exc).__name__}: {exc}"))

    async def _start_socket_mode(self) -> None:
        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

        self._socket = AsyncSocketModeHandler(self.app, app_token=self._app_token,
                                              ping_interval=self.options.ping_interval)
        try:
            opened = await self.client.apps_connections_open(app_token=self._app_token)
            self._socket.client.wss_uri = opened["url"]
        except SlackApiError as exc:
            error = self._error(exc)
            await self._socket.close_async()
            self._socket = None
            if error in AUTH_ERRORS:
                raise ConfigError(f"config error: SLACK_APP_TOKEN was rejected by Slack ({error}): create an app-level "
                                  f"token with the connections:write scope (xapp-)") from None
            raise ConfigError(f"config error: Slack refused Socket Mode ({error}): turn Socket Mode on in the app's "
                              f"settings (the manifest does)") from None
        except (*NETWORK_ERRORS, SlackClientError) as exc:
            log.warning("slack: apps.connections.open failed (%s): connecting in the background",
                        self._clean(f"{type(exc).__name__}: {exc}"))
        # connect() retries until it is connected: never hold up the bot's start on it.
        self._socket_task = asyncio.get_running_loop().create_task(self._socket.connect_async(),
                                                                   name="slack-socket-connect")

    async def _start_http(self) -> None:
        from aiohttp import web

        from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request

        opts = self.options
        port = self.settings.slack_http_port

        async def handle(request: web.Request) -> web.Response:
            # Bolt checks the signature and the timestamp first (401 otherwise), then dispatches.
            return await to_aiohttp_response(await self.app.async_dispatch(await to_bolt_request(request)))

        web_app = web.Application(client_max_size=1024 * 1024)
        web_app.router.add_post(opts.http_path, handle)
        runner = web.AppRunner(web_app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, opts.http_host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"config error: SLACK_HTTP_PORT={port} is not allowed: cannot listen there "
                              f"({exc.strerror or exc})") from None
        self._runner = runner
        addresses = runner.addresses
        self.http_port = int(addresses[0][1]) if addresses else port

    @property
    def socket_connected(self) -> bool:
        client = getattr(self._socket, "client", None)
        session = getattr(client, "current_session", None)
        return session is not None and not session.closed

    async def stop(self) -> None:
        if not self._started:
            return
        self.delivery.stopping = True
        # No new input first.
        if self._socket is not None:
            if self._socket_task is not None:
                self._socket_task.cancel()
                await asyncio.gather(self._socket_task, return_exceptions=True)
            try:
                await self._socket.close_async()
            except Exception:
                log.exception("slack: closing the Socket Mode connection")
            self._socket = None
        if self._runner is not None:
            try:
                await self._runner.cleanup()
            except Exception:
                log.exception("slack: stopping the HTTP server")
            self._runner = None
        # Handlers still at work (a question, an approval) may finish within the timeout.
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=self.options.stop_timeout)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.delivery.stop(self.options.stop_timeout)
        self._started = False

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._guarded(coro, name), name=f"slack-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guarded(self, coro: Awaitable[Any], name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:  # one failed handler never takes anything else down
            log.exception("slack: handling %s failed", name)

    async def idle(self) -> None:
        """Wait until handlers are done and every queued message has been handled (tests, benchmarks)."""
        while self._tasks or self.delivery.busy:
            await asyncio.sleep(0.01)

    def retry_outbox(self) -> int:
        """Queue the due outbox items (oldest first); returns how many were queued."""
        return self.delivery.retry_outbox()

    # --- Channel: outgoing -------------------------------------------------------------------------------

    async def post_proposal(self, card: Card) -> None:
        if card.proposal_id is None:
            self._send(self.channel_id, fallback_text(card), card_blocks(card, actions=False))
            return
        self.delivery.post_proposal(card.proposal_id, card, self.channel_id)

    async def update_proposal(self, card: Card) -> None:
        if card.proposal_id is None:
            return
        self.delivery.update_proposal(card.proposal_id, card, self.channel_id)

    async def notify(self, notice: Notice) -> None:
        text, blocks = notice_message(notice)
        self._send(self.channel_id, text, blocks)

    def _send(self, channel: str | None, text: str, blocks: list[dict[str, Any]], *,
              thread_ts: str | None = None) -> None:
        if channel:
            self.delivery.enqueue(Job("message", str(channel), text=text, blocks=blocks, thread_ts=thread_ts))

    # --- the sender --------------------------------------------------------------------------------------

    async def _api(self, pace_key: str, method: str, /, **kwargs: Any) -> Any:
        """One paced Web API call. 429s are honoured inside the client (Retry-After), network errors
        are retried here (bounded), SlackApiError is passed up, anything else: _GiveUp."""
        net = 0
        opts = self.options
        call = getattr(self.client, method)
        while True:
            await self.pacer.acquire(pace_key)
            try:
                return await call(**kwargs)
            except SlackApiError:
                raise
            except NETWORK_ERRORS as exc:
                net += 1
                self.stats["network_retries"] += 1
                if net >= opts.send_attempts:
                    raise _GiveUp(f"network: {type(exc).__name__}: {exc}") from None
                await asyncio.sleep(min(opts.backoff_max, opts.backoff_base * 2 ** (net - 1)))
            except SlackClientError as exc:
                raise _GiveUp(f"{type(exc).__name__}: {exc}") from None

    @staticmethod
    def _error(exc: SlackApiError) -> str:
        try:
            return str(exc.response.get("error") or exc.response.status_code)
        except Exception:  # pragma: no cover - defensive
            return str(exc)

    def _give_up(self, what: str, channel: str, exc: SlackApiError) -> _GiveUp:
        error = self._error(exc)
        if error in ("not_in_channel", "channel_not_found", "is_archived"):
            log.error("slack: %s in %s failed (%s): invite the app to the channel (/invite @app) and check "
                      "SLACK_CHANNEL_ID", what, channel, error)
        elif error in AUTH_ERRORS:
            log.error("slack: %s failed (%s): check SLACK_BOT_TOKEN", what, error)
        return _GiveUp(f"{what} refused: {error}")

    async def _deliver(self, job: Job) -> None:
        if job.op == "proposal" and job.proposal_id is not None:
            await self._sync_proposal(job.dest, int(job.proposal_id))
        else:
            await self._post(job.dest, job.text, job.blocks, thread_ts=job.thread_ts)

    async def _post(self, channel: str, text: str, blocks: list[dict[str, Any]], *,
                    thread_ts: str | None = None) -> Any:
        kwargs: dict[str, Any] = {"channel": channel, "text": text or " ", "unfurl_links": False,
                                  "unfurl_media": False}
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
        try:
            resp = await self._api(channel, "chat_postMessage", blocks=blocks or None, **kwargs)
        except SlackApiError as exc:
            if not (blocks and self._error(exc) in BLOCK_ERRORS):
                raise self._give_up("chat.postMessage", channel, exc) from None
            # Slack refused our blocks (a limit we did not foresee): the plain text still informs.
            self.stats["text_fallbacks"] += 1
            log.warning("slack: blocks refused (%s), sending plain text", self._error(exc))
            try:
                resp = await self._api(channel, "chat_postMessage", **kwargs)
            except SlackApiError as exc2:
                raise self._give_up("chat.postMessage", channel, exc2) from None
        self.stats["posted"] += 1
        return resp

    def _card_for(self, pid: int) -> Card | None:
        card = None
        if self.core is not None:
            try:
                card = self.core.proposal_card(pid)  # the newest state, also after an outbox delay
            except Exception:
                log.exception("slack: reading proposal #%d", pid)
        return card or self.delivery.cards.get(pid)

    async def _sync_proposal(self, channel: str, pid: int) -> None:
        """Bring Slack in line with the proposal: post its card once, afterwards edit that message."""
        card = self._card_for(pid)
        if card is None:
            return
        refs = self.core.message_refs(pid, CHANNEL) if self.core else []
        if not refs:
            await self._post_card(channel, card)
            return
        for ref_channel, ts in refs:
            await self._update_card(str(ref_channel), str(ts), card)

    async def _post_card(self, channel: str, card: Card) -> None:
        blocks = card_blocks(card)
        resp = await self._post(channel, fallback_text(card), blocks)
        ts, where = resp.get("ts"), resp.get("channel") or channel
        if ts and card.proposal_id is not None and self.core is not None:
            self.core.save_message_ref(card.proposal_id, CHANNEL, str(where), str(ts))
            self._last_sig[(str(where), str(ts))] = json.dumps(blocks, sort_keys=True)

    async def _update_card(self, channel: str, ts: str, card: Card) -> None:
        blocks = card_blocks(card)
        sig = json.dumps(blocks, sort_keys=True)
        if self._last_sig.get((channel, ts)) == sig:
            return  # already shows exactly this
        text = fallback_text(card)
        try:
            await self._api(channel, "chat_update", channel=channel, ts=ts, text=text, blocks=blocks)
        except SlackApiError as exc:
            error = self._error(exc)
            if error in REPOST_ERRORS:
                # Deleted, or too old to edit: post the card again (its ref is replaced).
                self.stats["reposts"] += 1
                await self._post_card(channel, card)
                return
            if error not in BLOCK_ERRORS:
                raise self._give_up("chat.update", channel, exc) from None
            self.stats["text_fallbacks"] += 1
            keep = [action_block(card)] if card.actionable and card.proposal_id is not None else []
            try:
                await self._api(channel, "chat_update", channel=channel, ts=ts, text=text,
                                blocks=[_section(text)] + keep)
            except SlackApiError as exc2:
                raise self._give_up("chat.update", channel, exc2) from None
        self.stats["updated"] += 1
        self._last_sig[(channel, ts)] = sig

    async def _ephemeral(self, channel: str | None, user: str | None, text: str,
                         blocks: list[dict[str, Any]] | None = None) -> None:
        """A private answer to `user` in `channel` (best effort: a failure is logged, not queued)."""
        channel = channel or self.channel_id
        if not channel or not user:
            return
        try:
            await self.client.chat_postEphemeral(channel=channel, user=user, text=text or " ", blocks=blocks or None)
            self.stats["ephemeral"] += 1
        except SlackApiError as exc:
            log.warning("slack: ephemeral answer to %s in %s failed: %s", user, channel, self._error(exc))
        except (*NETWORK_ERRORS, SlackClientError) as exc:
            log.warning("slack: ephemeral answer to %s failed: %s", user, self._clean(f"{type(exc).__name__}: {exc}"))

    # --- incoming ----------------------------------------------------------------------------------------

    def _authorized(self, user: str | None) -> bool:
        return bool(user and self.core and self.core.is_authorized(CHANNEL, str(user)))

    async def _refuse(self, user: str | None, what: str) -> None:
        if self.core is not None:
            await self.core.record_unauthorized(CHANNEL, str(user or "unknown"), what)

    def _register(self) -> None:
        if self._registered:
            return
        app = self.app
        app.action(ACTION_APPROVE)(self._on_approve)
        app.action(ACTION_REJECT)(self._on_reject)
        app.action(ACTION_WHY)(self._on_why)
        app.view(REJECT_VIEW)(self._on_reject_submit)
        for word, _, _ in COMMANDS:
            app.command(self.command_name(word))(self._on_command)
        app.event("app_mention")(self._on_mention)
        app.event("message")(self._on_message)
        app.error(self._on_error)
        self._registered = True

    async def _on_error(self, error: Exception) -> None:
        log.error("slack: a handler failed: %s", self._clean(repr(error)))

    # Buttons ---------------------------------------------------------------------------------------------

    @staticmethod
    def _action_parts(body: dict) -> tuple[str | None, str | None, int | None, str]:
        user = (body.get("user") or {}).get("id")
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
        action = (body.get("actions") or [{}])[0]
        return user, channel, _pid(action.get("value")), str(action.get("action_id", "?"))[:64]

    async def _button_ok(self, user: str | None, channel: str | None, pid: int | None, what: str) -> bool:
        """The acting user is on the allowlist and the button names a proposal; else say so and record it."""
        if self.core is None:
            return False
        if not self._authorized(user):
            await self._refuse(user, f"{what} {pid if pid is not None else '?'}")
            await self._ephemeral(channel, user, NOT_AUTHORIZED)
            return False
        if pid is None:
            await self._ephemeral(channel, user, "Unknown button: nothing was done.")
            return False
        return True

    async def _on_approve(self, ack: Any, body: dict) -> None:
        await ack()
        self._spawn(self._approve(*self._action_parts(body)), "approve")

    async def _approve(self, user: str | None, channel: str | None, pid: int | None, what: str) -> None:
        if not await self._button_ok(user, channel, pid, f"button {what}"):
            return
        reply = await self.core.approve(pid, user, CHANNEL)  # type: ignore[union-attr, arg-type]
        await self._ephemeral(channel, user, esc(reply.text))
        if not reply.ok:
            self._resync(pid)  # type: ignore[arg-type]

    def _resync(self, pid: int) -> None:
        """After a refused vote the message may be stale (an update lost in a restart): refresh it."""
        card = self._card_for(pid)
        if card is None or card.actionable:
            return
        self.delivery.update_proposal(pid, card, None)  # only where it was posted

    async def _on_reject(self, ack: Any, body: dict) -> None:
        await ack()
        # views.open has to follow the press within 3 seconds: at once, not through the queue.
        await self._guarded(self._open_reject(*self._action_parts(body), body.get("trigger_id")), "reject")

    async def _open_reject(self, user: str | None, channel: str | None, pid: int | None, what: str,
                           trigger_id: str | None) -> None:
        if not await self._button_ok(user, channel, pid, f"button {what}"):
            return
        card = self.core.proposal_card(pid)  # type: ignore[union-attr, arg-type]
        if card is None:
            await self._ephemeral(channel, user, f"No proposal #{pid}.")
            return
        if card.status != "pending":
            await self._ephemeral(channel, user, f"#{pid} was already decided ({card.status}).")
            self._resync(pid)  # type: ignore[arg-type]
            return
        try:
            await self.client.views_open(trigger_id=trigger_id,  # type: ignore[arg-type]
                                         view=reject_modal(pid, card, channel))  # type: ignore[arg-type]
        except (SlackApiError, SlackClientError, *NETWORK_ERRORS) as exc:
            error = self._error(exc) if isinstance(exc, SlackApiError) else type(exc).__name__
            log.warning("slack: views.open for #%s failed: %s", pid, error)
            await self._ephemeral(channel, user, f"Could not open the reject dialog ({esc(error)}): use "
                                                 f"`{self.command_name('reject')} {pid} [reason]` instead.")

    async def _on_why(self, ack: Any, body: dict) -> None:
        await ack()
        self._spawn(self._why(*self._action_parts(body)), "why")

    async def _why(self, user: str | None, channel: str | None, pid: int | None, what: str) -> None:
        if not await self._button_ok(user, channel, pid, f"button {what}"):
            return
        reply = await self.core.why(str(pid), user, CHANNEL)  # type: ignore[union-attr, arg-type]
        text, blocks = reply_message(reply)
        await self._ephemeral(channel, user, text, blocks)

    # The reject modal ------------------------------------------------------------------------------------

    async def _on_reject_submit(self, ack: Any, body: dict, view: dict) -> None:
        await ack()  # closes the modal
        self._spawn(self._reject_submitted(body, view), "reject reason")

    async def _reject_submitted(self, body: dict, view: dict) -> None:
        user = (body.get("user") or {}).get("id")
        try:
            meta = json.loads(view.get("private_metadata") or "{}")
        except ValueError:
            meta = {}
        pid = _pid(meta.get("proposal_id")) if isinstance(meta, dict) else None
        channel = (meta.get("channel") if isinstance(meta, dict) else None) or self.channel_id
        # The modal was opened for an allowed user, but a submission is its own request: check again.
        if not await self._button_ok(user, channel, pid, "reject dialog"):
            return
        values = (view.get("state") or {}).get("values") or {}
        reason = ((values.get(REASON_BLOCK) or {}).get(REASON_INPUT) or {}).get("value")
        reason = str(reason or "").strip()[:MAX_REASON] or None
        reply = await self.core.reject(pid, user, CHANNEL, reason)  # type: ignore[union-attr, arg-type]
        await self._ephemeral(channel, user, esc(reply.text))
        if not reply.ok:
            self._resync(pid)  # type: ignore[arg-type]

    # Slash commands --------------------------------------------------------------------------------------

    def _word(self, command: str) -> str:
        name = command.lstrip("/").lower()
        if self.prefix and name.startswith(self.prefix.lower()):
            name = name[len(self.prefix):]
        return name

    async def _on_command(self, ack: Any, body: dict, respond: Any) -> None:
        await ack()
        self._spawn(self._command(body, respond), f"command {str(body.get('command', '?'))[:40]}")

    async def _command(self, body: dict, respond: Any) -> None:
        user = body.get("user_id")
        channel = body.get("channel_id")
        word = self._word(str(body.get("command", "")))
        text = str(body.get("text") or "").strip()
        public = False
        words = text.split()
        if words and words[-1].lower() == "public":
            public = True
            text = " ".join(words[:-1])

        async def answer(reply: Reply, pre: bool = False) -> None:
            msg_text, blocks = reply_message(reply, pre=pre)
            kind = "in_channel" if public and reply.ok and not reply.private else "ephemeral"
            await self._respond(respond, channel, user, msg_text, blocks, kind)

        if not self._authorized(user):
            await self._refuse(user, f"{self.command_name(word)} {text}")
            await answer(Reply(NOT_AUTHORIZED, ok=False, unauthorized=True, private=True))
            return
        if text.lower() == "help":
            await answer(Reply(slack_help(self.prefix), private=True), pre=True)
            return
        if word in NEEDS_TEXT and not text:
            usage = next(h for w, _, h in COMMANDS if w == word).replace("[public]", "").strip()
            await answer(Reply(f"usage: {self.command_name(word)} {usage}", ok=False, private=True))
            return
        line = f"{word} {text}".strip()
        reply = await self.core.handle_text(line, user, CHANNEL)  # type: ignore[union-attr, arg-type]
        await answer(reply, pre=word in PRE_COMMANDS and reply.card is None)

    async def _respond(self, respond: Any, channel: str | None, user: str | None, text: str,
                       blocks: list[dict[str, Any]], kind: str) -> None:
        """Answer a slash command through its response_url (works in any conversation), else directly."""
        if respond is not None and getattr(respond, "response_url", None):
            try:
                resp = await respond(text=text or " ", blocks=blocks, response_type=kind)
                if getattr(resp, "status_code", 200) < 400:
                    self.stats["responded"] += 1
                    return
                log.warning("slack: response_url answered %s", getattr(resp, "status_code", "?"))
            except Exception as exc:
                log.warning("slack: response_url answer failed: %s", self._clean(f"{type(exc).__name__}: {exc}"))
        if kind == "in_channel":
            self._send(channel, text, blocks)
        else:
            await self._ephemeral(channel, user, text, blocks)

    # Questions: mentions and direct messages -------------------------------------------------------------

    def _question_text(self, text: str) -> str:
        if self.bot_user_id:
            text = re.sub(rf"<@{re.escape(self.bot_user_id)}(\|[^>]*)?>", " ", text)
        return " ".join(text.split())

    def _first_delivery(self, body: dict) -> bool:
        """Slack delivers an event again when it thinks the first delivery was not acknowledged in
        time: answer each event id once."""
        event_id = str(body.get("event_id") or "")
        if not event_id:
            return True
        if event_id in self._seen_events:
            return False
        self._seen_events[event_id] = None
        while len(self._seen_events) > 1000:
            self._seen_events.popitem(last=False)
        return True

    async def _on_mention(self, event: dict, body: dict) -> None:
        # Bolt acknowledges events before a listener runs; the answer is worked out in a task.
        if self._first_delivery(body):
            self._spawn(self._question(event, in_thread=True), "mention")

    async def _on_message(self, event: dict, body: dict) -> None:
        if event.get("channel_type") != "im" or event.get("subtype") or event.get("bot_id"):
            return  # only people writing to the app directly; edits, joins and bots are not questions
        if self._first_delivery(body):
            self._spawn(self._question(event, in_thread=bool(event.get("thread_ts"))), "direct message")

    async def _question(self, event: dict, *, in_thread: bool) -> None:
        if self.core is None:
            return
        user, channel = event.get("user"), event.get("channel")
        if not user or not channel:
            return
        thread_ts = (event.get("thread_ts") or event.get("ts")) if in_thread else None
        is_dm = event.get("channel_type") == "im"
        if not self._authorized(user):
            await self._refuse(user, "question")
            if is_dm:
                self._send(channel, NOT_AUTHORIZED, text_blocks(NOT_AUTHORIZED), thread_ts=thread_ts)
            else:
                await self._ephemeral(channel, user, NOT_AUTHORIZED)
            return
        question = self._question_text(str(event.get("text") or ""))
        is_help = question.lower() in ("help", "?")
        if not question:
            reply = Reply("Ask me something, e.g. why this strike? (`help` lists the commands)")
        elif is_help:
            reply = Reply(slack_help(self.prefix))
        else:
            reply = await self.core.ask(question, user, CHANNEL)
        if reply.unauthorized and not is_dm:
            await self._ephemeral(channel, user, esc(reply.text))
            return
        text, blocks = reply_message(reply, pre=is_help)
        self._send(channel, text, blocks, thread_ts=thread_ts)
