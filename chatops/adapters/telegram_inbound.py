"""Incoming Telegram updates: button presses, commands, text, the reject-reason dialogue."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

from telegram import (
    InputFile,
    Message,
    Update,
)
from telegram.error import (
    TelegramError,
)
from telegram.ext import ContextTypes

from chatops.redact import redact

from .base import Reply
from .telegram_render import (
    CALLBACK_RE,
    CHANNEL,
    PRE_COMMANDS,
    REASON_PROMPT,
    REASON_RE,
    _chat_arg,
    _e,
    card_chunks,
    chunk_lines,
    telegram_help,
    text_lines,
)

log = logging.getLogger(__name__)


@dataclass
class _PendingReason:
    proposal_id: int
    user: str
    chat_id: str
    timer: asyncio.Task | None = None



class TelegramInbound:
    # --- incoming ----------------------------------------------------------------------------------

    def _authorized(self, uid: str) -> bool:
        return bool(self.core and self.core.is_authorized(CHANNEL, uid))

    async def _answer(self, query: Any, text: str, alert: bool = False) -> None:
        try:
            await query.answer(redact(text)[:200], show_alert=alert)
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
        if reply.photo:
            await self._send_photo(chat, reply.photo, reply.photo_name)

    async def _send_photo(self, chat: str, png: bytes, name: str) -> None:
        """A chart as a photo (sendPhoto); one line logged if Telegram refuses it."""
        bot = self.app.bot
        try:
            await self._api(chat, lambda: bot.send_photo(chat_id=_chat_arg(chat), photo=InputFile(png, filename=name)))
            self.stats["photos"] = self.stats.get("photos", 0) + 1
        except Exception as exc:
            log.warning("telegram: could not send %s: %s", name, self._clean(f"{type(exc).__name__}: {exc}"))

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
        chat = str(message.chat.id) if message is not None else None
        # A press counts only on a card in the configured chat, or in the presser's own private chat
        # with the bot (a card forwarded elsewhere, or a crafted inline button, does not).
        if chat is None or (chat != self.chat_id and chat != uid):
            await self.core.record_unauthorized(CHANNEL, uid, f"button {data[:64]!r} pressed in chat {chat}")
            await self._answer(query, "This button only works in the bot's chat.", alert=True)
            return
        if kind == "a":
            vote = asyncio.ensure_future(self.core.approve(pid, uid, CHANNEL))
            done, _ = await asyncio.wait({vote}, timeout=self.options.press_answer_s)
            if not done:
                # The database is slow (locked): answer the press now; the vote lands when it can
                # (the card then shows it) or fails, and then a message in the chat says so.
                await self._answer(query, f"Recording your approval of #{pid}... (the database is busy)")
                reply = await vote
                if not reply.ok:
                    await self._send_text_job(chat, chunk_lines(text_lines(f"{query.from_user.first_name or uid}: "
                                                                           f"{reply.text}")), priority=1)
                return
            reply = vote.result()
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
            if self.strangers.first(chat):  # one "not authorized" per chat per hour: strangers cost little
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
            if self.strangers.first(chat):
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
