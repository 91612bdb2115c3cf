"""The dashboard's HTTP server: uvicorn serving the FastAPI app in the caller's event loop.

Under `chatops run` it is a task of the bot's loop (started and stopped by `Bot.start/stop`), so
votes from the web go through the same core as Telegram and Slack, with no thread and no second
process. `chatops web` serves the same pages read-only from the database alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from typing import TYPE_CHECKING

import uvicorn

from agent.clock import WallClock
from agent.config import Settings

from .. import redact
from .auth import Auth
from .site import create_app
from .users import UserStore
from .views import Context

if TYPE_CHECKING:
    from ..app import Bot
    from ..store import Store

log = logging.getLogger(__name__)
logging.getLogger("uvicorn").setLevel(logging.WARNING)  # our own lines say what matters


class _BotOwnedSignals(uvicorn.Server):
    """The bot's runner (or `serve_forever`) owns SIGINT/SIGTERM, for a clean stop of everything:
    uvicorn must not take them."""

    def capture_signals(self):  # type: ignore[override]
        return contextlib.nullcontext()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


class WebServer:
    def __init__(self, ctx: Context, *, host: str = "127.0.0.1", port: int = 8080, sock: socket.socket | None = None,
                 announce=None) -> None:
        self.ctx = ctx
        self.host, self.port, self.sock = host, port, sock
        redact.configure(ctx.settings)  # every page and answer passes the redactor, knowing this process's secrets
        self.auth = Auth(UserStore.from_settings(ctx.settings), max_age_s=ctx.settings.web_session_hours * 3600)
        self.stopping = asyncio.Event()
        self.app = create_app(ctx, self.auth, self.stopping)
        self.announce = announce or (lambda text: print(text, file=sys.stderr, flush=True))
        self.server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None

    @classmethod
    def for_bot(cls, bot: "Bot", *, sock: socket.socket | None = None, **kw) -> "WebServer":
        ctx = Context(store=bot.store, settings=bot.settings, core=bot.core, bot=bot)
        return cls(ctx, host=bot.settings.web_host, port=bot.settings.web_port, sock=sock, **kw)

    @classmethod
    def read_only(cls, store: "Store", settings: Settings, **kw) -> "WebServer":
        from ..approvals import ApprovalService
        from ..core import Core

        core = Core(store, ApprovalService(store, settings), settings, clock=WallClock())
        ctx = Context(store=store, settings=settings, core=core, read_only=True)
        return cls(ctx, host=settings.web_host, port=settings.web_port or 8080, **kw)

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2] if self.sock else (self.host, self.port)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    async def start(self) -> bool:
        """Bind and serve; False (logged, the bot runs on) when the address cannot be had."""
        if self.sock is None:
            try:
                self.sock = bind(self.host, self.port)
            except OSError as exc:
                log.error("web dashboard not started: cannot listen on %s:%d (%s); set WEB_PORT to a free port, "
                          "or WEB_PORT=0 to turn it off", self.host, self.port, exc.strerror or exc)
                return False
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=3, proxy_headers=True, server_header=False)
        self.server = _BotOwnedSignals(config)
        self._task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[self.sock]))
        for _ in range(200):
            if self.server.started or self._task.done():
                break
            await asyncio.sleep(0.025)
        if not self.server.started:
            await self.stop()
            log.error("web dashboard did not start on %s", self.url)
            return False
        self._announce()
        return True

    def _announce(self) -> None:
        mode = "read-only " if self.ctx.read_only else ""
        if self.auth.start_token:
            # As Jupyter does: no users configured, so one random token, shown once, here only.
            self.announce(f"Web dashboard ({mode}no users configured): open {self.url}/login?token={self.auth.start_token}")
        else:
            self.announce(f"Web dashboard ({mode}{len(self.auth.users.names())} users): {self.url}/")

    async def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.should_exit = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=10)
            except (asyncio.TimeoutError, asyncio.CancelledError, SystemExit):
                self._task.cancel()
            except Exception:
                log.exception("web server stopped with an error")
        self._task = None

    async def serve_forever(self) -> None:
        """`chatops web`: serve until Ctrl-C or SIGTERM, then stop cleanly."""
        if not await self.start():
            raise SystemExit(1)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal)
        assert self._task is not None
        try:
            await self._task
        finally:
            self.stopping.set()

    def _on_signal(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.should_exit = True
