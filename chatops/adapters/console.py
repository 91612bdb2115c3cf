"""The terminal channel, the embedded default: cards on stdout, commands from stdin.

The local OS user is the identity (allowlist CONSOLE_ALLOWED_USERS, default the current user).
stdin is read on a daemon thread so that a blocking read never holds up the loop or shutdown; when
stdin is not a terminal (a pipe, /dev/null) it reads what comes and carries on after EOF.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import TextIO

from chatops.render import FINAL_STATUSES, Card, fill_line, plain

from chatops.identity import os_user
from chatops.redact import redact

from .base import CoreAPI, Notice, Reply

log = logging.getLogger(__name__)

BOLD, DIM, GREEN, RED, YELLOW, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[33m", "\033[0m"


class ConsoleChannel:
    name = "console"

    def __init__(self, *, stdin: TextIO | None = None, stdout: TextIO | None = None, user: str | None = None,
                 read_input: bool = True, on_quit=None) -> None:
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.user = user or os_user()  # the real uid's account, never LOGNAME/USER
        self.read_input = read_input
        self.color = bool(getattr(self.stdout, "isatty", lambda: False)())
        self.core: CoreAPI | None = None
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._seen_final: set[tuple[int, str]] = set()
        self.eof = asyncio.Event()
        self.on_quit = on_quit  # `quit` typed: the runner stops the bot

    # --- output -------------------------------------------------------------------------

    def _c(self, code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if self.color else text

    def _print(self, text: str) -> None:
        try:
            self.stdout.write(redact(text) + "\n")
            self.stdout.flush()
        except (OSError, ValueError):  # the terminal went away: the bot goes on, the log keeps the record
            pass

    def _render(self, card: Card, compact: bool = False) -> str:
        text = card.as_text(compact)
        first, _, rest = text.partition("\n")
        colour = {"executed": GREEN, "failed": RED, "blocked": RED, "rejected": YELLOW, "expired": DIM}.get(card.status or "", BOLD)
        return self._c(colour, first) + ("\n" + rest if rest else "")

    async def post_proposal(self, card: Card) -> None:
        self._print("")
        self._print(self._render(card))
        if card.actionable and card.proposal_id is not None:
            pid = card.proposal_id
            self._print(self._c(DIM, f"  -> approve {pid}  |  reject {pid} [reason]  |  why {pid}"))

    async def update_proposal(self, card: Card) -> None:
        # A terminal cannot edit what it printed: one line for each new status, and for a fill.
        key = (card.proposal_id or 0, card.status or "")
        if key in self._seen_final:
            return
        self._seen_final.add(key)
        if card.status in ("pending",):
            return
        text = fill_line(card) if card.status in FINAL_STATUSES else f"{card.tag} {card.title}: {dict(card.sections).get('Status', card.status)}"
        first, _, rest = text.partition("\n")
        colour = {"executed": GREEN, "failed": RED, "blocked": RED, "rejected": YELLOW, "expired": DIM}.get(card.status or "", BOLD)
        self._print(self._c(colour, first) + ("\n" + rest if rest else ""))

    async def notify(self, notice: Notice) -> None:
        if notice.kind in ("fill", "order"):
            return  # the proposal's own line above already says what was filled
        self._print(self._c(YELLOW, f"[{notice.kind}] ") + plain(notice.text))

    async def quiet(self, text: str) -> None:
        """A line only the terminal shows: a tick that did nothing, the start-up banner."""
        self._print(self._c(DIM, plain(text)))

    def show_reply(self, reply: Reply) -> None:
        if reply.text:
            text = plain(reply.text)
            self._print(self._c(RED, text) if not reply.ok else text)

    # --- input --------------------------------------------------------------------------

    async def start(self, core: CoreAPI) -> None:
        self.core = core
        if not self.read_input:
            return
        loop = asyncio.get_running_loop()

        def reader() -> None:
            try:
                for line in self.stdin:
                    loop.call_soon_threadsafe(self._queue.put_nowait, line)
            except (OSError, ValueError):  # stdin closed under us
                pass
            loop.call_soon_threadsafe(self._queue.put_nowait, None)

        threading.Thread(target=reader, name="console-stdin", daemon=True).start()
        self._task = loop.create_task(self._serve())
        self._print(self._c(DIM, f"Terminal channel ready: you are '{self.user}'. Type help for commands, quit to stop."))

    async def _serve(self) -> None:
        while True:
            line = await self._queue.get()
            if line is None:
                self.eof.set()
                log.info("stdin closed: the terminal channel keeps printing; `chatops approve ID` works from another shell")
                return
            if not line.strip():
                continue
            if line.strip().lower() in ("quit", "exit", "/quit"):
                self._print("Stopping: the work in flight finishes first.")
                if self.on_quit is not None:
                    self.on_quit()
                continue
            try:
                reply = await self.core.handle_text(line, self.user, self.name)  # type: ignore[union-attr]
            except Exception as exc:  # a bad command never kills the channel
                log.exception("command failed")
                reply = Reply(f"error: {exc}", ok=False)
            self.show_reply(reply)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
