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
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from agent.config import ConfigError, Settings
from chatops.redact import redact, redact_value
from chatops.render import Card

from .base import CoreAPI, Notice
from .delivery import PRIORITY_ALERT, PRIORITY_REPLY, DeliveryQueue, OncePer, QueuedJob

from .slack_render import ACTION_APPROVE, ACTION_REJECT, ACTION_WHY, AUTH_ERRORS, BLOCK_ERRORS, CHANNEL, COMMANDS, NETWORK_ERRORS, NOT_AUTHORIZED, REJECT_VIEW, REPOST_ERRORS, SlackOptions, _section, action_block, card_blocks, esc, fallback_text, notice_message, text_blocks  # noqa: F401

from .slack_inbound import SlackInbound
log = logging.getLogger(__name__)

# Slack refuses timestamps older than 5 minutes; inside that window a signature is remembered (with
# a minute of slack for clock skew), so one request can be replayed at most zero times.
REPLAY_WINDOW = 6 * 60.0

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


class SlackChannel(SlackInbound):
    name = CHANNEL

    def __init__(self, settings: Settings, *, app: AsyncApp | None = None, options: SlackOptions | None = None) -> None:
        self.settings = settings
        self.options = options or SlackOptions()
        self.channel_id = settings.slack_channel_id or None
        self.prefix = settings.slack_command_prefix or ""
        # One namespaced command (/cc status, /cc why 3), as Slack recommends; the old per-command
        # form (/status, or /cc-status with a prefix) only when asked for, or when there is none.
        self.command = (settings.slack_command or "").strip().lstrip("/").lower()
        self.legacy = settings.slack_legacy_commands or not self.command
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
        self.strangers = OncePer(3600.0)  # conversations told "not authorized" in the last hour
        self._seen_signatures: OrderedDict[str, float] = OrderedDict()  # HTTP mode: replays refused
        self._socket: Any = None
        self._socket_task: asyncio.Task | None = None
        self._runner: Any = None
        self._registered = False
        self._started = False
        self.stats = {"posted": 0, "updated": 0, "ephemeral": 0, "responded": 0, "network_retries": 0,
                      "outboxed": 0, "outbox_delivered": 0, "text_fallbacks": 0, "reposts": 0, "uploaded": 0}
        self.delivery = DeliveryQueue(
            CHANNEL, core=lambda: self.core, deliver=self._deliver, give_up=(_GiveUp,), job_type=Job,
            outbox_interval=self.options.outbox_interval, outbox_backoff_max=self.options.outbox_backoff_max,
            clean=self._clean, stats=self.stats, log=log,
            wall_clock_retries=False, leftovers_due_now=False, keep_interrupted=True,
            max_attempts=settings.outbox_max_attempts)

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
        return f"/{self.command} {word}" if self.command else f"/{self.prefix}{word}"

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

        verifier = SignatureVerifier(self._signing_secret)

        async def handle(request: web.Request) -> web.Response:
            # Bolt checks the signature and the timestamp first (401 otherwise), then dispatches. A
            # validly signed request seen before inside the 5-minute window is a replay: refused.
            body = await request.text()
            sig = request.headers.get("X-Slack-Signature", "")
            ts = request.headers.get("X-Slack-Request-Timestamp", "")
            if sig and verifier.is_valid(body=body, timestamp=ts, signature=sig) and self._replayed(sig):
                if self.core is not None:
                    await self.core.record_unauthorized(CHANNEL, "unknown", "a replayed signed request")
                return web.Response(status=401, text="replayed request")
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

    def _replayed(self, signature: str, now: float | None = None) -> bool:
        """True if `signature` was seen in the last REPLAY_WINDOW seconds; remembers it otherwise."""
        now = time.time() if now is None else now
        seen = self._seen_signatures
        while seen and next(iter(seen.values())) < now - REPLAY_WINDOW:
            seen.popitem(last=False)
        if signature in seen:
            return True
        seen[signature] = now
        return False

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
        self._send(self.channel_id, text, blocks, priority=PRIORITY_ALERT)

    def _send(self, channel: str | None, text: str, blocks: list[dict[str, Any]], *,
              thread_ts: str | None = None, priority: int = PRIORITY_REPLY) -> None:
        if channel:
            self.delivery.enqueue(Job("message", str(channel), text=text, blocks=blocks, thread_ts=thread_ts,
                                      priority=priority))

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
        text, blocks = redact(text), redact_value(blocks)  # sent at once, not through the (redacting) queue
        try:
            await self.client.chat_postEphemeral(channel=channel, user=user, text=text or " ", blocks=blocks or None)
            self.stats["ephemeral"] += 1
        except SlackApiError as exc:
            log.warning("slack: ephemeral answer to %s in %s failed: %s", user, channel, self._error(exc))
        except (*NETWORK_ERRORS, SlackClientError) as exc:
            log.warning("slack: ephemeral answer to %s failed: %s", user, self._clean(f"{type(exc).__name__}: {exc}"))
