"""Incoming Slack requests: buttons, the reject modal, slash commands, with the allowlist."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from slack_sdk.errors import SlackApiError, SlackClientError

from chatops.redact import redact, redact_value

from .base import Reply
from .slack_render import (
    ACTION_APPROVE,
    ACTION_REJECT,
    ACTION_WHY,
    CHANNEL,
    COMMANDS,
    MAX_REASON,
    NEEDS_TEXT,
    NETWORK_ERRORS,
    NOT_AUTHORIZED,
    PRE_COMMANDS,
    REASON_BLOCK,
    REASON_INPUT,
    REJECT_VIEW,
    _pid,
    esc,
    reject_modal,
    reply_message,
    slack_help,
    text_blocks,
)

log = logging.getLogger(__name__)

class SlackInbound:
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
        if self.command:
            app.command(f"/{self.command}")(self._on_command)
        if self.legacy:
            for word, _, _ in COMMANDS:
                app.command(f"/{self.prefix}{word}")(self._on_command)
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
            if self.strangers.first(str(channel)):  # one "not authorized" per conversation per hour
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
        command = str(body.get("command", "")).strip().lower()
        text = str(body.get("text") or "").strip()
        if self.command and command == f"/{self.command}":
            word, _, text = text.partition(" ")  # /cc why 3 -> why, 3
            word, text = (word.lower() or "help"), text.strip()
            if word in ("help", "?"):
                text = "help"
        else:
            word = self._word(command)
        public = False
        words = text.split()
        if words and words[-1].lower() == "public":
            public = True
            text = " ".join(words[:-1])

        async def answer(reply: Reply, pre: bool = False) -> None:
            msg_text, blocks = reply_message(reply, pre=pre)
            kind = "in_channel" if public and reply.ok and not reply.private else "ephemeral"
            await self._respond(respond, channel, user, msg_text, blocks, kind)
            if reply.photo and channel:
                await self._upload(channel, reply.photo, reply.photo_name)

        if not self._authorized(user):
            await self._refuse(user, f"{self.command_name(word)} {text}")
            if self.strangers.first(str(channel)):
                await answer(Reply(NOT_AUTHORIZED, ok=False, unauthorized=True, private=True))
            return
        if text.lower() == "help":
            await answer(Reply(slack_help(self.command_name), private=True), pre=True)
            return
        if word in NEEDS_TEXT and not text:
            usage = next(h for w, _, h in COMMANDS if w == word).replace("[public]", "").strip()
            await answer(Reply(f"usage: {self.command_name(word)} {usage}", ok=False, private=True))
            return
        line = f"{word} {text}".strip()
        reply = await self.core.handle_text(line, user, CHANNEL)  # type: ignore[union-attr, arg-type]
        await answer(reply, pre=word in PRE_COMMANDS and reply.card is None)

    async def _upload(self, channel: str, png: bytes, name: str) -> None:
        """A chart into the conversation (files can't be ephemeral): files_upload_v2, one line logged on failure."""
        try:
            await self._api(channel, "files_upload_v2", channel=channel, file=png, filename=name,
                            title=name.rsplit(".", 1)[0])
            self.stats["uploaded"] += 1
        except Exception as exc:
            log.warning("slack: could not upload %s: %s", name, self._clean(f"{type(exc).__name__}: {exc}"))

    async def _respond(self, respond: Any, channel: str | None, user: str | None, text: str,
                       blocks: list[dict[str, Any]], kind: str) -> None:
        """Answer a slash command through its response_url (works in any conversation), else directly."""
        text, blocks = redact(text), redact_value(blocks)
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
            if not self.strangers.first(str(channel)):
                return
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
            reply = Reply(slack_help(self.command_name))
        else:
            reply = await self.core.ask(question, user, CHANNEL)
        if reply.unauthorized and not is_dm:
            await self._ephemeral(channel, user, esc(reply.text))
            return
        text, blocks = reply_message(reply, pre=is_help)
        self._send(channel, text, blocks, thread_ts=thread_ts)
