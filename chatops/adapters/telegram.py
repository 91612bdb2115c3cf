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
import html
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from telegram import (
    BotCommand,
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    ReplyParameters,
    Update,
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

from .base import HELP_TEXT, CoreAPI, Notice, Reply
from .delivery import DeliveryQueue, QueuedJob

log = logging.getLogger(__name__)

CHANNEL = "telegram"
MAX_MESSAGE = 4096  # Telegram's limit, in UTF-16 code units of the visible text
LINE_PIECE = 600  # an over-long line is cut into pieces this long (escaped, it stays well under the limit)
CALLBACK_RE = re.compile(r"^([arw]):(\d{1,12})$")
REASON_PROMPT = "Reason for rejecting #{pid}? (optional: reply, or send /skip)"
REASON_RE = re.compile(r"^Reason for rejecting #(\d{1,12})\?")
PRE_COMMANDS = frozenset({"status", "history", "pending", "help", "start"})

COMMANDS: tuple[tuple[str, str], ...] = (
    ("status", "Account, positions, last tick, pending proposals, pause state"),
    ("pending", "Proposals waiting for a vote"),
    ("why", "Why a proposal: /why [id]"),
    ("history", "The last decisions: /history [n]"),
    ("approve", "Approve a proposal: /approve <id>"),
    ("reject", "Reject a proposal: /reject <id> [reason]"),
    ("pause", "Kill switch: nothing is proposed or executed"),
    ("resume", "Lift the pause"),
    ("ask", "Ask the agent: /ask <question>"),
    ("whatif", "What if: /whatif spot=-5% iv=+10"),
    ("skip", "Reject without a reason after pressing Reject"),
    ("help", "Commands and buttons"),
)

NOTICE_LABELS = {"fill": "Fill", "failure": "Failure", "pause": "Kill switch", "llm_fallback": "LLM fallback",
                 "daily_summary": "Daily summary", "watchdog": "Watchdog", "info": "Info"}


@dataclass(frozen=True)
class TelegramOptions:
    """Limits and timings; the defaults are Telegram's limits, tests shorten them."""

    poll_timeout: float = 10.0  # getUpdates long-poll seconds
    min_interval: float = 1.0  # seconds between two messages to one chat
    group_per_minute: int = 20  # messages per `group_window` to a group chat (negative id)
    group_window: float = 60.0
    send_attempts: int = 5  # network failures of one request before it goes to the outbox
    backoff_base: float = 0.5  # seconds, doubled per network failure
    backoff_max: float = 30.0
    max_flood_waits: int = 5  # RetryAfter answers honoured for one request before the outbox
    outbox_interval: float = 30.0  # seconds between outbox sweeps (also the first retry delay)
    outbox_backoff_max: float = 3600.0
    reject_reason_timeout: float = 60.0
    concurrent_updates: int = 32  # a slow question never holds up an approval press
    stop_timeout: float = 5.0  # seconds to finish sending at stop; the rest goes to the outbox


# --- rendering: (html, plain) line pairs, so a chunk can fall back to plain text alone ----------------


def _e(text: Any) -> str:
    return html.escape(str(text))


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _clip(text: str, clip: int | None) -> str:
    if clip is None or len(text) <= clip:
        return text
    return text[: max(clip - 1, 0)] + "…"


def card_lines(card: Card, clip: int | None = None) -> list[tuple[str, str]]:
    """The card as (HTML, plain) line pairs; the plain lines joined are exactly `card.as_text()`
    (unless `clip` shortens the section texts)."""
    out = [(f"<b>{_e(card.tag)} {_e(card.title)}</b>", f"{card.tag} {card.title}")]
    width = max((len(k) for k, _ in card.fields), default=0)
    out += [(f"<b>{_e(k)}</b>: {_e(v)}", f"  {k.ljust(width)}  {v}") for k, v in card.fields]
    for heading, text in card.sections:
        indent = "    " if heading else "  "
        if heading:
            out.append((f"<b>{_e(heading)}:</b>", f"  {heading}:"))
        body = _clip(text, clip)
        out += [(_e(t), f"{indent}{t}") for t in body.splitlines() if t.strip()]
    if card.footer:
        out.append((f"<i>{_e(card.footer)}</i>", f"  {card.footer}"))
    return out


def text_lines(text: str) -> list[tuple[str, str]]:
    return [(_e(line), line) for line in text.splitlines()]


def _pieces(pair: tuple[str, str], limit: int) -> list[tuple[str, str, bool]]:
    """A line as (html, plain, continues_previous) pieces; a line over the limit is cut, plain."""
    h, p = pair
    if max(utf16_len(h), utf16_len(p)) <= limit:
        return [(h, p, False)]
    return [(_e(p[i:i + LINE_PIECE]), p[i:i + LINE_PIECE], i > 0) for i in range(0, len(p), LINE_PIECE)]


def chunk_lines(pairs: list[tuple[str, str]], *, pre: bool = False, limit: int = MAX_MESSAGE) -> list[tuple[str, str]]:
    """Join line pairs into messages that fit Telegram's limit in both forms (split on line
    boundaries; a line longer than the limit is cut). With `pre` the HTML is monospace."""
    budget = limit - (len("<pre></pre>") if pre else 0)
    chunks: list[tuple[str, str]] = []
    h_acc = p_acc = ""
    for pair in pairs:
        for h, p, cont in _pieces(pair, budget):
            sep = "" if cont or not (h_acc or p_acc) else "\n"
            if (h_acc or p_acc) and (utf16_len(h_acc + sep + h) > budget or utf16_len(p_acc + sep + p) > budget):
                chunks.append((h_acc, p_acc))
                h_acc, p_acc, sep = "", "", ""
            h_acc, p_acc = h_acc + sep + h, p_acc + sep + p
    if h_acc or p_acc:
        chunks.append((h_acc, p_acc))
    out = []
    for h_text, p_text in chunks:
        if not p_text.strip():
            continue
        out.append((f"<pre>{_e(p_text)}</pre>" if pre else h_text, p_text))
    return out


def card_chunks(card: Card) -> list[tuple[str, str]]:
    return chunk_lines(card_lines(card))


def card_single(card: Card) -> tuple[str, str]:
    """The card as one message (for edits): section texts are clipped until it fits."""
    for clip in (None, 1500, 400, 100):
        chunks = chunk_lines(card_lines(card, clip))
        if len(chunks) == 1:
            return chunks[0]
    return chunk_lines(card_lines(card, 100))[0]


def keyboard(proposal_id: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[
        InlineKeyboardButton("Approve", callback_data=f"a:{proposal_id}"),
        InlineKeyboardButton("Reject", callback_data=f"r:{proposal_id}"),
        InlineKeyboardButton("Why", callback_data=f"w:{proposal_id}"),
    ]])


def telegram_help() -> str:
    lines = ["Commands:"]
    for line in HELP_TEXT.splitlines()[1:]:
        lines.append(re.sub(r"^  (\w)", r"  /\1", line))
    lines += ["", "Under each proposal: Approve / Reject / Why. After Reject, reply to the prompt with a reason",
              "or send /skip. Plain text to me (in a private chat, or a reply/mention in a group) is a question."]
    return "\n".join(lines)


def _is_parse_error(text: str) -> bool:
    t = text.lower()
    return "parse entities" in t or "can't find end tag" in t or "unsupported start tag" in t or "entity" in t


def _retry_after_seconds(exc: RetryAfter) -> float:
    value = getattr(exc, "_retry_after", None)  # a timedelta; the public property warns on ints
    if value is not None and hasattr(value, "total_seconds"):
        return max(float(value.total_seconds()), 0.0)
    try:
        ra = exc.retry_after
        return float(ra.total_seconds()) if hasattr(ra, "total_seconds") else float(ra)
    except Exception:  # pragma: no cover - defensive
        return 1.0


# --- rate limits -------------------------------------------------------------------------------------


class ChatLimiter:
    """Per chat: at least `min_interval` between messages, and for group chats (negative ids) at
    most `per_window` messages in any sliding `window`. Written here rather than PTB's
    AIORateLimiter because that needs the aiolimiter extra and does not know our outbox."""

    def __init__(self, min_interval: float = 1.0, per_window: int = 20, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.min_interval = min_interval
        self.per_window = per_window
        self.window = window
        self.clock = clock
        self.sleep = sleep
        self._last: dict[str, float] = {}
        self._recent: dict[str, deque[float]] = {}
        self._blocked: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @staticmethod
    def is_group(chat_id: str) -> bool:
        return str(chat_id).startswith("-")

    def delay(self, chat_id: str, now: float | None = None) -> float:
        """Seconds to wait before the next message to `chat_id` may go."""
        now = self.clock() if now is None else now
        chat_id = str(chat_id)
        d = 0.0
        if chat_id in self._last:
            d = max(d, self._last[chat_id] + self.min_interval - now)
        d = max(d, self._blocked.get(chat_id, 0.0) - now)
        if self.is_group(chat_id):
            recent = self._recent.setdefault(chat_id, deque())
            while recent and recent[0] <= now - self.window:
                recent.popleft()
            if len(recent) >= self.per_window:
                d = max(d, recent[0] + self.window - now)
        return max(d, 0.0)

    def record(self, chat_id: str, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        chat_id = str(chat_id)
        self._last[chat_id] = now
        if self.is_group(chat_id):
            self._recent.setdefault(chat_id, deque()).append(now)

    def block(self, chat_id: str, seconds: float) -> None:
        """Telegram said RetryAfter: nothing goes to this chat for `seconds`."""
        self._blocked[str(chat_id)] = max(self._blocked.get(str(chat_id), 0.0), self.clock() + seconds)

    async def acquire(self, chat_id: str) -> None:
        chat_id = str(chat_id)
        lock = self._locks.setdefault(chat_id, asyncio.Lock())
        async with lock:
            while (d := self.delay(chat_id)) > 0:
                await self.sleep(d)
            self.record(chat_id)


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


@dataclass
class _PendingReason:
    proposal_id: int
    user: str
    chat_id: str
    timer: asyncio.Task | None = None


# --- the channel ---------------------------------------------------------------------------------------


class TelegramChannel:
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
        self._started = False
        self.stats = {"sent": 0, "edited": 0, "flood_waits": 0, "network_retries": 0, "plain_fallbacks": 0,
                      "outboxed": 0, "outbox_delivered": 0}
        self.delivery = DeliveryQueue(
            CHANNEL, core=lambda: self.core, deliver=self._deliver, give_up=(_GiveUp,), job_type=Job,
            outbox_interval=self.options.outbox_interval, outbox_backoff_max=self.options.outbox_backoff_max,
            clean=self._clean, stats=self.stats, log=log,
            wall_clock_retries=True, leftovers_due_now=True, keep_interrupted=True)

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
            await self._send_text_job(self.chat_id, card_chunks(card))
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
        await self._send_text_job(self.chat_id, chunk_lines(pairs))

    async def _send_text_job(self, chat: str | None, chunks: list[tuple[str, str]], *, reply_to: int | None = None,
                             force_reply: bool = False) -> None:
        if not chat or not chunks:
            return
        self.delivery.enqueue(Job("text", str(chat), chunks=chunks, reply_to=reply_to, force_reply=force_reply))

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

    # --- incoming ----------------------------------------------------------------------------------

    def _authorized(self, uid: str) -> bool:
        return bool(self.core and self.core.is_authorized(CHANNEL, uid))

    async def _answer(self, query: Any, text: str, alert: bool = False) -> None:
        try:
            await query.answer(text[:200], show_alert=alert)
        except TelegramError as exc:  # too old (stale press after a restart) or a network blip
            log.info("telegram: could not answer a button press: %s", self._clean(str(exc)))

    async def _reply(self, message: Any, chat: str, reply: Reply, *, pre: bool = False) -> None:
        """Answer `reply` in `chat`, as a reply to `message` (anything with a message_id) if given."""
        if reply.card is not None:
            chunks = card_chunks(reply.card)
        elif reply.text.strip():
            chunks = chunk_lines(text_lines(reply.text), pre=pre)
        else:
            return
        await self._send_text_job(chat, chunks, reply_to=message.message_id if message is not None else None)

    async def _on_callback(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        try:
            await self._handle_callback(update)
        except Exception as exc:  # a press is always answered, even when something broke
            log.exception("telegram: a button press failed")
            if update.callback_query is not None:
                await self._answer(update.callback_query, f"Error ({type(exc).__name__}): check /pending before "
                                                          "pressing again.", alert=True)

    async def _on_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        try:
            await self._handle_command(update)
        except Exception as exc:
            log.exception("telegram: a command failed")
            await self._reply_error(update, exc)

    async def _on_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        try:
            await self._handle_text(update, context)
        except Exception as exc:
            log.exception("telegram: a message failed")
            await self._reply_error(update, exc)

    async def _reply_error(self, update: Update, exc: Exception) -> None:
        message = update.effective_message
        if message is not None:
            text = f"error: {type(exc).__name__}: {self._clean(str(exc))[:300]}"
            await self._reply(message, str(message.chat.id), Reply(text, ok=False))

    async def _handle_callback(self, update: Update) -> None:
        query = update.callback_query
        user = update.effective_user
        if query is None or user is None or self.core is None:
            return
        uid = str(user.id)
        data = query.data or ""
        if not self._authorized(uid):
            await self.core.record_unauthorized(CHANNEL, uid, f"button {data[:64]!r}")
            await self._answer(query, "Not authorized: you are not on this bot's allowlist.", alert=True)
            return
        m = CALLBACK_RE.match(data)
        if m is None:
            await self._answer(query, "Unknown button: nothing was done.", alert=True)
            return
        kind, pid = m.group(1), int(m.group(2))
        # A Message, or an InaccessibleMessage when it is older than 48 h: both have chat and id.
        message = query.message
        chat = str(message.chat.id) if message is not None else (self.chat_id or uid)
        if kind == "a":
            reply = await self.core.approve(pid, uid, CHANNEL)
            await self._answer(query, self._refusal_text(pid, reply), alert=not reply.ok)
        elif kind == "r":
            await self._start_reject(query, message, chat, pid, uid)
        else:
            await self._answer(query, f"Explaining #{pid}...")
            reply = await self.core.why(str(pid), uid, CHANNEL)
            await self._reply(message, chat, reply)

    def _refusal_text(self, pid: int, reply: Reply) -> str:
        if reply.ok or reply.unauthorized:
            return reply.text
        card = self.core.proposal_card(pid) if self.core else None
        if card is not None and card.status == "expired":
            return f"#{pid} expired: it will not execute."
        return reply.text

    async def _start_reject(self, query: Any, message: Any, chat: str, pid: int, uid: str) -> None:
        card = self.core.proposal_card(pid)  # type: ignore[union-attr]
        if card is None:
            await self._answer(query, f"No proposal #{pid}.", alert=True)
            return
        if card.status != "pending":
            if card.status == "expired":
                await self._answer(query, f"#{pid} expired: it will not execute.", alert=True)
            else:
                await self._answer(query, f"#{pid} was already decided ({card.status}).", alert=True)
            return
        key = (chat, uid)
        if key in self._reasons and self._reasons[key].proposal_id != pid:
            await self._finish_reason(key, None)  # an earlier Reject without a reason yet: it stands
        entry = self._reasons.get(key) or _PendingReason(pid, uid, chat)
        if entry.timer is not None:
            entry.timer.cancel()
        entry.timer = asyncio.get_running_loop().create_task(self._reason_timeout(key, pid))
        self._reasons[key] = entry
        await self._answer(query, f"Rejecting #{pid}: reply to the prompt with a reason, or send /skip.")
        user = query.from_user
        mention_html = f'<a href="tg://user?id={int(user.id)}">{_e(user.first_name or uid)}</a>'
        mention_plain = f"@{user.username}" if user.username else (user.first_name or uid)
        prompt = REASON_PROMPT.format(pid=pid)
        chunks = [(f"{_e(prompt)}\n{mention_html}", f"{prompt}\n{mention_plain}")]
        await self._send_text_job(chat, chunks, reply_to=message.message_id if message else None, force_reply=True)

    async def _reason_timeout(self, key: tuple[str, str], pid: int) -> None:
        await asyncio.sleep(self.options.reject_reason_timeout)
        entry = self._reasons.get(key)
        if entry is not None and entry.proposal_id == pid:
            entry.timer = None  # this task is finishing the entry: do not cancel itself
            await self._finish_reason(key, None)

    async def _finish_reason(self, key: tuple[str, str], reason: str | None, *, message: Message | None = None,
                             notify_failure: bool = True) -> Reply | None:
        entry = self._reasons.pop(key, None)
        if entry is None or self.core is None:
            return None
        if entry.timer is not None:
            entry.timer.cancel()
        reply = await self.core.reject(entry.proposal_id, entry.user, CHANNEL, reason)
        if message is not None:
            await self._reply(message, entry.chat_id, reply)
        elif not reply.ok and notify_failure:
            card = self.core.proposal_card(entry.proposal_id)
            if card is None or card.status != "rejected":
                await self._send_text_job(entry.chat_id, chunk_lines(text_lines(
                    f"Reject of #{entry.proposal_id} by {entry.user} not recorded: {reply.text}")))
        return reply

    async def _handle_command(self, update: Update) -> None:
        message = update.effective_message
        user = update.effective_user
        if message is None or user is None or self.core is None or not message.text:
            return
        uid = str(user.id)
        chat = str(message.chat.id)
        parts = message.text.strip().split(maxsplit=1)
        word = parts[0].lstrip("/").split("@", 1)[0].lower()
        rest = parts[1].strip() if len(parts) > 1 else ""
        if not self._authorized(uid):
            await self.core.record_unauthorized(CHANNEL, uid, f"/{word}")
            await self._reply(message, chat, Reply("Not authorized: you are not on this bot's allowlist.", ok=False))
            return
        if word in ("help", "start"):
            await self._reply(message, chat, Reply(telegram_help()), pre=True)
            return
        if word == "skip":
            key = (chat, uid)
            if key not in self._reasons:
                await self._reply(message, chat, Reply("Nothing to skip: press Reject on a proposal first.", ok=False))
                return
            await self._finish_reason(key, None, message=message)
            return
        reply = await self.core.handle_text(f"{word} {rest}".strip(), uid, CHANNEL)
        await self._reply(message, chat, reply, pre=word in PRE_COMMANDS and reply.card is None)

    async def _handle_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        user = update.effective_user
        if message is None or user is None or self.core is None or message.text is None:
            return
        uid = str(user.id)
        chat = str(message.chat.id)
        bot = context.bot
        parent = message.reply_to_message
        to_bot = parent is not None and parent.from_user is not None and parent.from_user.id == bot.id
        prompt = REASON_RE.match(parent.text or "") if to_bot and parent is not None else None
        mention = re.compile(rf"@{re.escape(bot.username)}\b", re.IGNORECASE) if bot.username else None
        mentioned = bool(mention and mention.search(message.text))
        if prompt is None and message.chat.type != "private" and not to_bot and not mentioned:
            return  # group chatter not addressed to the bot
        if not self._authorized(uid):
            await self.core.record_unauthorized(CHANNEL, uid, "reject reason" if prompt else "question")
            await self._reply(message, chat, Reply("Not authorized: you are not on this bot's allowlist.", ok=False))
            return
        if prompt is not None:
            pid = int(prompt.group(1))
            reason = message.text.strip()[:500] or None
            key = (chat, uid)
            entry = self._reasons.get(key)
            if entry is not None and entry.proposal_id == pid:
                await self._finish_reason(key, reason, message=message)
            else:  # after a restart, or another approver answering the prompt: reject as this user
                reply = await self.core.reject(pid, uid, CHANNEL, reason)
                await self._reply(message, chat, reply)
            self._drop_reasons_for(pid)
            return
        question = mention.sub("", message.text).strip() if mention else message.text
        reply = await self.core.ask(question, uid, CHANNEL)
        await self._reply(message, chat, reply)

    def _drop_reasons_for(self, pid: int) -> None:
        """Once a reason has rejected `pid`, other pending Reject prompts for it are moot."""
        for key, entry in list(self._reasons.items()):
            if entry.proposal_id == pid:
                self._reasons.pop(key, None)
                if entry.timer is not None:
                    entry.timer.cancel()


def _chat_arg(chat: str) -> int | str:
    return int(chat) if chat.lstrip("-").isdigit() else chat
