"""Slack's side of rendering: constants, options, Block Kit blocks of cards, replies and notices, the reject modal."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import aiohttp

from chatops.render import Card

from .base import HELP_TEXT, Notice, Reply

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
    ("cancel", "Cancel a proposal's working order on the exchange", "<id>"),
    ("pause", "Kill switch: nothing is proposed or executed", "[reason]"),
    ("resume", "Lift the pause", ""),
    ("ask", "Ask the agent a question", "<question> [public]"),
    ("whatif", "What the agent would do on a modified state", "spot=-5% iv=+10 [public]"),
    ("pnl", "Premium, fees, settlements and P&L vs holding the coin, with a chart", "[30d] [public]"),
    ("chart", "Spot against the short call's strike over time", "[30d] [public]"),
)
PRE_COMMANDS = frozenset({"status", "history", "pending", "pnl"})  # tables: answered in a monospace block
NEEDS_TEXT = frozenset({"ask", "whatif"})

NOTICE_LABELS = {"fill": "Fill", "failure": "Failure", "pause": "Kill switch", "llm_fallback": "LLM fallback",
                 "daily_summary": "Daily summary", "watchdog": "Watchdog", "info": "Info", "expiry": "Expiry",
                 "deep_itm": "Deep in the money"}

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


def slack_help(command_name=lambda word: f"/cc {word}") -> str:
    """The commands as this app answers them; `command_name("status")` is "/cc status" (or "/status")."""
    lines = ["Slash commands (end with `public` to answer in the channel rather than only to you):"]
    lines += [f"  {command_name(name)} {hint.replace('[public]', '').strip()}".rstrip() + f"  - {desc}"
              for name, desc, hint in COMMANDS]
    lines += ["", "Under each proposal: Approve (asks to confirm), Reject (optional reason), Why.",
              "Mention the app, or write to it directly, to ask a question.", "", HELP_TEXT]
    return "\n".join(lines)


def _pid(value: Any) -> int | None:
    text = str(value or "").strip()
    return int(text) if re.fullmatch(r"\d{1,12}", text) else None
