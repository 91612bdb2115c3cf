"""Telegram's side of rendering and pacing: constants, options, HTML line pairs, chunks, keyboards, the per-chat limiter."""

from __future__ import annotations

import asyncio
import html
import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from telegram import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
)
from telegram.error import (
    RetryAfter,
)

from chatops.render import Card

from .base import HELP_TEXT

log = logging.getLogger(__name__)

CHANNEL = "telegram"
MAX_MESSAGE = 4096  # Telegram's limit, in UTF-16 code units of the visible text
LINE_PIECE = 600  # an over-long line is cut into pieces this long (escaped, it stays well under the limit)
# Whole-string match (\Z: `$` would also accept a trailing newline); ids fit SQLite with room to spare.
CALLBACK_RE = re.compile(r"\A([arw]):([1-9][0-9]{0,11})\Z")
REASON_PROMPT = "Reason for rejecting #{pid}? (optional: reply, or send /skip)"
REASON_RE = re.compile(r"^Reason for rejecting #(\d{1,12})\?")
PRE_COMMANDS = frozenset({"status", "history", "pending", "help", "start", "pnl"})

COMMANDS: tuple[tuple[str, str], ...] = (
    ("status", "Account, positions, last tick, pending proposals, pause state"),
    ("pending", "Proposals waiting for a vote"),
    ("why", "Why a proposal: /why [id]"),
    ("history", "The last decisions: /history [n]"),
    ("approve", "Approve a proposal: /approve <id>"),
    ("reject", "Reject a proposal: /reject <id> [reason]"),
    ("cancel", "Cancel a proposal's working order: /cancel <id>"),
    ("pause", "Kill switch: nothing is proposed or executed"),
    ("resume", "Lift the pause"),
    ("ask", "Ask the agent: /ask <question>"),
    ("whatif", "What if: /whatif spot=-5% iv=+10"),
    ("pnl", "P&L vs holding the coin, with a chart: /pnl [30d]"),
    ("chart", "Spot against the short call's strike: /chart [30d]"),
    ("skip", "Reject without a reason after pressing Reject"),
    ("help", "Commands and buttons"),
)

NOTICE_LABELS = {"fill": "Fill", "failure": "Failure", "pause": "Kill switch", "llm_fallback": "LLM fallback",
                 "daily_summary": "Daily summary", "watchdog": "Watchdog", "info": "Info", "expiry": "Expiry",
                 "deep_itm": "Deep in the money"}


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
    press_answer_s: float = 0.05  # a press is answered within this even while the vote waits for a locked database


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


def _chat_arg(chat: str) -> int | str:
    return int(chat) if chat.lstrip("-").isdigit() else chat
