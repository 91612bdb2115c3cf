"""The Channel protocol every adapter implements, and the core's inbound interface.

An adapter only parses and formats: it turns a button press or a typed command into a call on
`CoreAPI` (which checks who may do what and records everything), and turns a `Card` into its
channel's message format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from chatops.render import Card


@dataclass(frozen=True)
class Reply:
    """The core's answer to a command: text, optionally a card, and whether it was refused."""

    text: str
    card: Card | None = None
    ok: bool = True
    unauthorized: bool = False
    private: bool = False  # answer only to the asker (Slack ephemeral, Telegram alert)
    proposal_id: int | None = None
    photo: bytes | None = None  # a PNG chart sent after the text (Telegram sendPhoto, Slack files_upload_v2)
    photo_name: str = "chart.png"


@dataclass(frozen=True)
class Notice:
    kind: str  # fill | failure | pause | llm_fallback | daily_summary | watchdog | info
    text: str
    card: Card | None = None
    extra: dict = field(default_factory=dict)


class CoreAPI(Protocol):
    """What adapters may ask of the core. Every call names the acting user and channel."""

    def is_authorized(self, channel: str, user: str) -> bool: ...
    async def record_unauthorized(self, channel: str, user: str, what: str) -> None: ...
    async def approve(self, proposal_id: int, user: str, channel: str) -> Reply: ...
    async def reject(self, proposal_id: int, user: str, channel: str, reason: str | None = None) -> Reply: ...
    async def why(self, ref: str | None, user: str, channel: str) -> Reply: ...
    async def status(self, user: str, channel: str) -> Reply: ...
    async def pending(self, user: str, channel: str) -> Reply: ...
    async def history(self, n: int, user: str, channel: str) -> Reply: ...
    async def pause(self, user: str, channel: str, reason: str | None = None) -> Reply: ...
    async def resume(self, user: str, channel: str) -> Reply: ...
    async def ask(self, question: str, user: str, channel: str) -> Reply: ...
    async def whatif(self, overrides: str, user: str, channel: str) -> Reply: ...
    async def pnl(self, since: str | None, user: str, channel: str) -> Reply: ...
    async def chart(self, since: str | None, user: str, channel: str) -> Reply: ...
    async def handle_text(self, line: str, user: str, channel: str) -> Reply: ...
    def proposal_card(self, proposal_id: int) -> Card | None: ...
    def save_message_ref(self, proposal_id: int, channel: str, chat_id: str, message_id: str) -> None: ...
    def message_refs(self, proposal_id: int, channel: str) -> list[tuple[str, str]]: ...


@runtime_checkable
class Channel(Protocol):
    """A chat surface. Sending never blocks the decision loop: adapters queue and retry."""

    name: str

    async def start(self, core: CoreAPI) -> None: ...
    async def stop(self) -> None: ...
    async def post_proposal(self, card: Card) -> None: ...
    async def update_proposal(self, card: Card) -> None: ...
    async def notify(self, notice: Notice) -> None: ...


HELP_TEXT = """Commands:
  status                 account, positions, last tick, pending proposals, pause state
  pending                proposals waiting for a vote
  approve <id>           approve a proposal
  reject <id> [reason]   reject a proposal (the reason is optional)
  why [id]               the reasoning, numbers and risk check behind a proposal (default: latest)
  history [n]            the last n decisions (default 10)
  cancel <id>            cancel proposal <id>'s working order on the exchange
  pause [reason]         kill switch: no new proposals, nothing executes
  resume                 lift the pause
  ask <question>         ask the agent (free text works too)
  whatif <k=v ...>       what the agent would do on a modified state, e.g. whatif equity=0  whatif spot=90000 iv=+10
  pnl [since]            premium, fees, settlements, P&L in coin and USD vs holding the coin, with a chart (e.g. pnl 30d)
  chart [since]          spot against the short call's strike over time
  help                   this text"""
