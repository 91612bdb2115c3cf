"""A real bot (paper exchange in process, simulated clock) serving the real dashboard with uvicorn on a
free loopback port, and helpers to log in over HTTP with httpx."""

from __future__ import annotations

import io
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import httpx

from agent.clock import SimClock
from agent.exchange import open_exchange
from chatops.adapters.console import ConsoleChannel
from chatops.app import Bot
from chatops.web.server import WebServer, bind
from chatops.web.users import UserStore
from tests.spine_helpers import make_settings

PASSWORDS = {"alice": "alice-password", "victor": "victor-password"}  # alice approves, victor only reads


def make_users(path: Path) -> None:
    users = UserStore(path)
    for name, pw in PASSWORDS.items():
        users.set_password(name, pw)


@dataclass
class Web:
    bot: Bot
    url: str
    printed: list[str] = field(default_factory=list)

    @property
    def store(self):
        return self.bot.store

    def client(self, **kw) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10, follow_redirects=False, **kw)

    async def propose(self) -> int:
        _, decision = await self.bot.tick()
        assert decision is not None
        row = self.store.latest_proposal()
        assert row is not None and row.status == "pending"
        return row.id


@asynccontextmanager
async def web_bot(tmp_path: Path, *, users: bool = True, **kw) -> AsyncIterator[Web]:
    users_file = tmp_path / "web-users.json"
    if users:
        make_users(users_file)
    settings = make_settings(tmp_path, web_users_file=str(users_file), web_allowed_users="alice", **kw)
    bot = Bot(settings, exchange=open_exchange(settings, clock=SimClock()),
              channels=[ConsoleChannel(stdout=io.StringIO(), user="alice", read_input=False)])
    printed: list[str] = []
    sock = bind("127.0.0.1", 0)
    bot.web = WebServer.for_bot(bot, sock=sock, announce=printed.append)
    await bot.start()
    host, port = sock.getsockname()[:2]
    try:
        yield Web(bot, f"http://{host}:{port}", printed)
    finally:
        await bot.stop()


CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_in(html: str) -> str:
    m = CSRF_RE.search(html)
    assert m, "no CSRF field in the page"
    return m.group(1)


async def login(client: httpx.AsyncClient, user: str, password: str | None = None) -> httpx.Response:
    form = await client.get("/login")
    assert form.status_code == 200
    return await client.post("/login", data={"username": user, "password": password or PASSWORDS[user],
                                             "csrf": csrf_in(form.text), "next": "/"})


async def session_csrf(client: httpx.AsyncClient) -> str:
    me = await client.get("/api/v1/me")
    assert me.status_code == 200, me.text
    return me.json()["csrf"]
