"""Telegram channel on python-telegram-bot v22, inside the bot's own asyncio loop.

Inbound: long polling (deleteWebhook at start). Buttons carry only `a:<id>`, `r:<id>`, `w:<id>`;
everything else (who may vote, whether the proposal is still pending, expired, already decided)
is the core's and the database's business. Every entry point checks the acting user's numeric id.

Outbound: post/update/notify only put a job on a per-chat asyncio queue; one sender task per chat
delivers it within Telegram's limits (1 message/s per chat, 20/min in a group), honours
RetryAfter, splits long text, falls back to plain text when Telegram cannot parse our HTML,
retries network errors with bounded back-off, and when it gives up records the message in the
store's outbox, which is retried at start and every `outbox_interval` seconds. A message is
delivered at least once: a request that timed out after Telegram got it may be sent twice.

Reject with a reason: the Reject button sends a ForceReply prompt "Reason for rejecting #12?".
A reply to that prompt rejects with the reply as the reason (as the user who replied); /skip, or
no reply within `reject_reason_timeout` seconds, rejects without a reason as the user who pressed.
The prompt is matched by its text, so a reply still works after a restart; the timer does not
survive a restart (the proposal then simply stays pending until it expires or someone votes).
`/reject <id> <reason>` rejects at once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from telegram import (
    BotCommand,
    ForceReply,
    Message,
    ReplyParameters,
)
from telegram.constants import ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, ContextTypes, MessageHandler, filters

from agent.config import ConfigError, Settings
from chatops.render import Card

from .base import CoreAPI, Notice
from .delivery import PRIORITY_ALERT, PRIORITY_REPLY, DeliveryQueue, OncePer, QueuedJob

from .telegram_render import CALLBACK_RE, CHANNEL, COMMANDS, ChatLimiter, MAX_MESSAGE, NOTICE_LABELS, REASON_PROMPT, TelegramOptions, _chat_arg, _e, _is_parse_error, _retry_after_seconds, card_chunks, card_lines, card_single, chunk_lines, keyboard, text_lines  # noqa: F401

from .telegram_inbound import TelegramInbound, _PendingReason  # noqa: F401
log = logging.getLogger(__name__)

# --- outgoing jobs --------------------------------------------------------------------------------------


class _GiveUp(Exception):
    """Telegram did not take the message after the bounded retries: the outbox keeps it."""


@dataclass
class Job(QueuedJob):
    """op "proposal": post or edit the card of `proposal_id`; op "text": send `chunks` to the chat `dest`."""

    chunks: list[tuple[str, str]] = field(default_factory=list)  # (html, plain) per message
    reply_to: int | None = None
    force_reply: bool = False
    sent: int = 0  # chunks already delivered (a retry skips them)

    def payload(self) -> dict[str, Any]:
        return {"op": self.op, "chat_id": self.dest, "proposal_id": self.proposal_id,
                "chunks": [list(c) for c in self.chunks], "reply_to": self.reply_to,
                "force_reply": self.force_reply, "sent": self.sent}

    @classmethod
    def from_payload(cls, p: dict[str, Any], outbox_id: int, attempts: int) -> "Job":
        return cls(op=p.get("op", "text"), dest=str(p.get("chat_id")), proposal_id=p.get("proposal_id"),
                   chunks=[(c[0], c[1]) for c in p.get("chunks") or []], reply_to=p.get("reply_to"),
                   force_reply=bool(p.get("force_reply")), sent=int(p.get("sent") or 0), outbox_id=outbox_id,
                   attempts=attempts)


# --- the channel ---------------------------------------------------------------------------------------


class TelegramChannel(TelegramInbound):
    name = CHANNEL

    def __init__(self, settings: Settings, *, application: Application | None = None,
                 options: TelegramOptions | None = None) -> None:
        self.settings = settings
        self.options = options or TelegramOptions()
        self.chat_id = str(settings.telegram_chat_id) if settings.telegram_chat_id else None
        self._token = settings.secret("telegram_bot_token") or ""
        if application is None and not self._token:
            raise ConfigError("config error: TELEGRAM_BOT_TOKEN is empty: create a bot with @BotFather and set it")
        self.app = application if application is not None else self._build_application()
        self.core: CoreAPI | None = None
        self.limiter = ChatLimiter(self.options.min_interval, self.options.group_per_minute, self.options.group_window)
        self._last_edit: dict[tuple[str, str], tuple[str, bool]] = {}
        self._reasons: dict[tuple[str, str], _PendingReason] = {}
        self.strangers = OncePer(3600.0)  # chats told "not authorized" in the last hour
        self._started = False
        self.stats = {"sent": 0, "edited": 0, "flood_waits": 0, "network_retries": 0, "plain_fallbacks": 0,
                      "outboxed": 0, "outbox_delivered": 0}
        self.delivery = DeliveryQueue(
            CHANNEL, core=lambda: self.core, deliver=self._deliver, give_up=(_GiveUp,), job_type=Job,
            outbox_interval=self.options.outbox_interval, outbox_backoff_max=self.options.outbox_backoff_max,
            clean=self._clean, stats=self.stats, log=log,
            wall_clock_retries=True, leftovers_due_now=True, keep_interrupted=True,
            max_attempts=settings.outbox_max_attempts)

    def _build_application(self) -> Application:
        base = self.settings.telegram_api_base_url.rstrip("/")
        file_base = base[: -len("bot")] + "file/bot" if base.endswith("/bot") else base + "/file"
        return (Application.builder().token(self._token).base_url(base).base_file_url(file_base)
                .concurrent_updates(self.options.concurrent_updates).build())

    def _clean(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    # --- life cycle --------------------------------------------------------------------------------

    async def start(self, core: CoreAPI) -> None:
        self.core = core
        if not self.chat_id:
            log.warning("TELEGRAM_CHAT_ID is not set: proposals and notices have nowhere to go (commands still work)")
        app = self.app
        msgs = filters.UpdateType.MESSAGE  # edits of old messages are not commands again
        app.add_handler(CallbackQueryHandler(self._on_callback))
        app.add_handler(CommandHandler([c for c, _ in COMMANDS] + ["start"], self._on_command, filters=msgs))
        app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND & msgs, self._on_text))
        app.add_error_handler(self._on_error)
        await self._initialize(app)
        try:
            try:
                await app.bot.set_my_commands([BotCommand(c, d) for c, d in COMMANDS])
            except TelegramError as exc:  # cosmetic: the bot works without the menu
                log.warning("setMyCommands failed: %s", self._clean(str(exc)))
            await app.start()
            # start_polling deletes any webhook first (long polling is the default transport). Updates
            # queued while the bot was down are kept: each is judged against the current state.
            await app.updater.start_polling(timeout=self.options.poll_timeout, bootstrap_retries=3,
                                            drop_pending_updates=False, allowed_updates=["message", "callback_query"],
                                            error_callback=self._on_poll_error)
        except BaseException:
            if app.running:
                await app.stop()
            await app.shutdown()
            raise
        self._started = True
        self.delivery.start()
        log.info("telegram channel started as @%s (chat %s)", app.bot.username, self.chat_id)

    async def _initialize(self, app: Application, attempts: int = 3) -> None:
        """getMe (PTB's initialize), retried briefly; a bad token or an unreachable API is one line."""
        for attempt in range(1, attempts + 1):
            try:
                await app.initialize()
                return
            except InvalidToken:
                raise ConfigError("config error: TELEGRAM_BOT_TOKEN was rejected by Telegram: "
                                  "copy it again from @BotFather") from None
            except NetworkError as exc:
                if attempt == attempts:
                    raise ConfigError(f"telegram: cannot reach the Bot API at {self.settings.telegram_api_base_url} "
                                      f"({self._clean(str(exc))}): check TELEGRAM_API_BASE_URL and the network") from None
                await asyncio.sleep(self.options.backoff_base * 2 ** (attempt - 1))

    async def stop(self) -> None:
        if not self._started:
            return
        self.delivery.stopping = True
        app = self.app
        try:
            if app.updater is not None and app.updater.running:
                await app.updater.stop()
            if app.running:
                await app.stop()  # waits for handlers that are still running
        except Exception:
            log.exception("telegram: stopping the application")
        # A Reject pressed but not yet followed by a reason: the press meant "reject".
        for key in list(self._reasons):
            await self._finish_reason(key, None, notify_failure=False)
        await self.delivery.stop(self.options.stop_timeout)
        try:
            await app.shutdown()
        except Exception:
            log.exception("telegram: shutting the application down")
        self._started = False

    def _on_poll_error(self, exc: TelegramError) -> None:
        log.warning("telegram polling: %s", self._clean(str(exc)))

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("telegram handler failed: %s", self._clean(repr(context.error)), exc_info=context.error)

    # --- Channel: outgoing -----------------------------------------------------------------------------

    async def post_proposal(self, card: Card) -> None:
        if card.proposal_id is None:
            await self._send_text_job(self.chat_id, card_chunks(card), priority=PRIORITY_ALERT)
            return
        self.delivery.post_proposal(card.proposal_id, card, self.chat_id)

    async def update_proposal(self, card: Card) -> None:
        if card.proposal_id is None:
            return
        self.delivery.update_proposal(card.proposal_id, card, self.chat_id)

    async def notify(self, notice: Notice) -> None:
        if notice.card is not None:
            pairs = card_lines(notice.card)
        else:
            pairs = text_lines(notice.text) or [("", "")]
            label = NOTICE_LABELS.get(notice.kind, notice.kind)
            h, p = pairs[0]
            pairs[0] = (f"<b>[{_e(label)}]</b> {h}", f"[{label}] {p}")
        await self._send_text_job(self.chat_id, chunk_lines(pairs), priority=PRIORITY_ALERT)

    async def _send_text_job(self, chat: str | None, chunks: list[tuple[str, str]], *, reply_to: int | None = None,
                             force_reply: bool = False, priority: int = PRIORITY_REPLY) -> None:
        if not chat or not chunks:
            return
        self.delivery.enqueue(Job("text", str(chat), chunks=chunks, reply_to=reply_to, force_reply=force_reply,
                                  priority=priority))

    async def idle(self) -> None:
        """Wait until every queued message has been handled (tests, benchmarks)."""
        while self.delivery.busy:
            await asyncio.sleep(0.01)

    def retry_outbox(self) -> int:
        """Queue the due outbox items (oldest first); returns how many were queued."""
        return self.delivery.retry_outbox()

    # --- the sender ----------------------------------------------------------------------------------

    async def _api(self, chat: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """One Bot API request within the chat's limits; RetryAfter and network errors retried
        (bounded), BadRequest passed up, anything else or too many failures: _GiveUp."""
        net = floods = 0
        opts = self.options
        while True:
            await self.limiter.acquire(chat)
            try:
                return await call()
            except RetryAfter as exc:
                floods += 1
                wait = _retry_after_seconds(exc)
                self.stats["flood_waits"] += 1
                if floods > opts.max_flood_waits:
                    raise _GiveUp(f"flood control: retry after {wait:g}s, {floods} times") from None
                log.warning("telegram: flood control on chat %s, waiting %.1fs", chat, wait)
                self.limiter.block(chat, wait)
            except BadRequest:
                raise
            except NetworkError as exc:  # TimedOut included
                net += 1
                self.stats["network_retries"] += 1
                if net >= opts.send_attempts:
                    raise _GiveUp(f"network: {exc}") from None
                await asyncio.sleep(min(opts.backoff_max, opts.backoff_base * 2 ** (net - 1)))
            except ChatMigrated as exc:
                log.error("telegram: chat %s became supergroup %s: set TELEGRAM_CHAT_ID=%s", chat,
                          exc.new_chat_id, exc.new_chat_id)
                raise _GiveUp(f"chat migrated to {exc.new_chat_id}") from None
            except TelegramError as exc:  # Forbidden, InvalidToken, Conflict...
                raise _GiveUp(f"{type(exc).__name__}: {exc}") from None

    async def _deliver(self, job: Job) -> None:
        if job.op == "proposal":
            await self._sync_proposal(job)
        else:
            await self._send_chunks(job)

    async def _sync_proposal(self, job: Job) -> None:
        pid = int(job.proposal_id)  # type: ignore[arg-type]
        card = self.delivery.cards.get(pid) or (self.core.proposal_card(pid) if self.core else None)
        if card is None:
            return
        refs = self.core.message_refs(pid, CHANNEL) if self.core else []
        if not refs:
            await self._post_card(job.dest, card)
        else:
            for chat, mid in refs:
                await self._edit_card(str(chat), str(mid), card)
        if not card.actionable and self.delivery.cards.get(pid) is card:
            # Final: forget it (a later update re-renders from the store and costs one edit at most).
            self.delivery.cards.pop(pid, None)
            for chat, mid in self.core.message_refs(pid, CHANNEL) if self.core else []:
                self._last_edit.pop((str(chat), str(mid)), None)

    async def _post_card(self, chat: str, card: Card) -> None:
        markup = keyboard(card.proposal_id) if card.actionable and card.proposal_id is not None else None
        job = Job("text", chat, chunks=card_chunks(card))
        message = await self._send_chunks(job, markup=markup)
        if message is not None and card.proposal_id is not None and self.core is not None:
            self.core.save_message_ref(card.proposal_id, CHANNEL, str(chat), str(message.message_id))
            self._last_edit[(str(chat), str(message.message_id))] = (job.chunks[-1][0], card.actionable)

    async def _edit_card(self, chat: str, mid: str, card: Card) -> None:
        text_html, text_plain = card_single(card)
        sig = (text_html, card.actionable)
        if self._last_edit.get((chat, mid)) == sig:
            return  # already shows exactly this
        markup = keyboard(card.proposal_id) if card.actionable and card.proposal_id is not None else None
        bot = self.app.bot

        async def edit(text: str, mode: str | None) -> None:
            await self._api(chat, lambda: bot.edit_message_text(text, chat_id=_chat_arg(chat), message_id=int(mid),
                                                                parse_mode=mode, reply_markup=markup))

        try:
            await edit(text_html, ParseMode.HTML)
        except BadRequest as exc:
            msg = str(exc).lower()
            if "not modified" in msg:
                pass
            elif _is_parse_error(msg):
                self.stats["plain_fallbacks"] += 1
                try:
                    await edit(text_plain, None)
                except BadRequest as exc2:
                    if "not modified" not in str(exc2).lower():
                        raise _GiveUp(f"edit refused: {exc2}") from None
            elif "not found" in msg or "can't be edited" in msg or "message_id_invalid" in msg:
                # Deleted or too old to edit: post the card again (its ref is replaced).
                await self._post_card(chat, card)
                return
            else:
                raise _GiveUp(f"edit refused: {exc}") from None
        self.stats["edited"] += 1
        self._last_edit[(chat, mid)] = sig

    async def _send_chunks(self, job: Job, *, markup: Any = None) -> Message | None:
        bot = self.app.bot
        chat = job.dest
        last: Message | None = None
        for i in range(job.sent, len(job.chunks)):
            text_html, text_plain = job.chunks[i]
            is_last = i == len(job.chunks) - 1
            rm: Any = markup if is_last else None
            if job.force_reply and is_last:
                rm = ForceReply(selective=True, input_field_placeholder="reason (optional)")
            rp = ReplyParameters(message_id=job.reply_to, allow_sending_without_reply=True) \
                if job.reply_to is not None and i == job.sent else None

            async def send(text: str, mode: str | None) -> Message:
                return await self._api(chat, lambda: bot.send_message(chat_id=_chat_arg(chat), text=text, parse_mode=mode,
                                                                      reply_markup=rm, reply_parameters=rp))

            try:
                last = await send(text_html, ParseMode.HTML)
            except BadRequest as exc:
                if not _is_parse_error(str(exc)):
                    raise _GiveUp(f"send refused: {exc}") from None
                self.stats["plain_fallbacks"] += 1
                log.warning("telegram: HTML refused (%s), sending plain text", exc)
                try:
                    last = await send(text_plain, None)
                except BadRequest as exc2:
                    raise _GiveUp(f"send refused: {exc2}") from None
            job.sent = i + 1
            self.stats["sent"] += 1
        return last
