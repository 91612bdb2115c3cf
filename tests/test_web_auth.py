"""Dashboard users and the ways in: scrypt hashes, WEB_USERS, the one-time start link, removed users,
`chatops web-user`, `chatops web` read-only from the database alone, and a busy port."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from agent.config import ConfigError
from chatops.web.auth import LoginLimiter, os_user
from chatops.web.server import bind
from chatops.web.users import UserStore, hash_password, verify_password
from tests.web_harness import csrf_in, login, web_bot


def test_password_hashes_are_salted_and_verified():
    a, b = hash_password("correct horse"), hash_password("correct horse")
    assert a != b and a.startswith("scrypt$16384$8$1$")  # a fresh salt each time
    assert verify_password("correct horse", a) and verify_password("correct horse", b)
    assert not verify_password("correct horsE", a)
    for broken in ("", "scrypt$1$2", "md5$x$y$z$a$b", a[:-4] + "AAAA"):
        assert not verify_password("correct horse", broken)


def test_users_file_inline_users_and_tokens(tmp_path):
    path = tmp_path / "users.json"
    store = UserStore(path, inline=f"carol:{hash_password('carol-password')}")
    assert store.names() == ["carol"]
    store.set_password("dave", "dave-password")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert "dave-password" not in path.read_text()
    assert store.names() == ["carol", "dave"]
    assert store.check_password("dave", "dave-password") and not store.check_password("dave", "nope")
    assert store.check_password("carol", "carol-password") and not store.check_password("erin", "x")
    token = store.new_token("dave")
    assert token not in path.read_text() and store.user_for_token(token) == "dave"
    assert store.user_for_token(token + "x") is None and store.user_for_token("dave") is None
    assert store.remove("dave") and store.user_for_token(token) is None and store.names() == ["carol"]
    with pytest.raises(ConfigError, match="bad web user name"):
        store.set_password("../etc", "password123")
    with pytest.raises(ConfigError, match="reserved name"):
        store.set_password("auto", "password123")
    with pytest.raises(ConfigError, match="WEB_USERS entries"):
        UserStore(tmp_path / "none.json", inline="frank:plaintext").names()
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        UserStore(path).names()


def test_login_limiter_window():
    now = [0.0]
    lim = LoginLimiter(limit=3, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        assert lim.retry_after("ip:x") == 0
        lim.failed("ip:x")
    assert lim.retry_after("ip:x") == pytest.approx(60)
    now[0] = 61
    assert lim.retry_after("ip:x") == 0


async def test_with_no_users_a_one_time_link_logs_in_as_the_os_user(tmp_path):
    async with web_bot(tmp_path, users=False) as web:
        (line,) = web.printed
        assert "no users configured" in line and "/login?token=" in line
        link = line.split("open ", 1)[1]
        token = link.split("token=", 1)[1]
        async with web.client() as c:
            form = await c.get("/login")
            assert "login link" in form.text and 'name="password"' not in form.text
            bad = await c.get("/login?token=" + "x" * len(token))
            assert bad.status_code == 401
            r = await c.get(link[len(web.url):])
            assert r.status_code == 303 and "token" not in r.headers["location"]
            me = (await c.get("/api/v1/me")).json()
            assert me["user"] == os_user() and me["can_act"] is False  # WEB_ALLOWED_USERS=alice only
        async with web.client(headers={"Authorization": f"Bearer {token}"}) as c:
            assert (await c.get("/api/v1/overview")).status_code == 200
        assert all(token not in str(e.get("reason")) for e in web.store.list_events(limit=1000))


async def test_a_removed_user_is_out_at_once(tmp_path):
    async with web_bot(tmp_path) as web:
        async with web.client() as c:
            await login(c, "victor")
            assert (await c.get("/api/v1/me")).status_code == 200
            time.sleep(0.01)  # a new mtime for the users file
            assert web.bot.web.auth.users.remove("victor")
            assert (await c.get("/api/v1/me")).status_code == 401
            assert (await c.get("/")).status_code == 303


def test_web_user_cli(tmp_path):
    env = {**os.environ, "WEB_USERS_FILE": str(tmp_path / "u.json"), "WEB_ALLOWED_USERS": "gina"}
    run = lambda *a, stdin=None: subprocess.run([sys.executable, "-m", "chatops", "web-user", *a], env=env,  # noqa: E731
                                                input=stdin, capture_output=True, text=True, timeout=60)
    added = run("add", "gina", "--password-stdin", stdin="gina-password\n")
    assert added.returncode == 0 and "Added web user gina" in added.stdout and "may act" in added.stdout
    short = run("add", "hal", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr and "Traceback" not in short.stderr
    token = run("token", "gina")
    assert token.returncode == 0 and token.stdout.startswith("cct_")
    assert run("list").stdout.split() == ["gina"]
    data = json.loads((tmp_path / "u.json").read_text())
    assert data["gina"]["password"].startswith("scrypt$") and "gina-password" not in json.dumps(data)
    assert run("token", "nobody").returncode == 2
    assert run("remove", "gina").returncode == 0 and run("list").stdout.startswith("No web users")
    hashed = run("hash", "--password-stdin", stdin="inline-password\n")
    assert verify_password("inline-password", hashed.stdout.strip())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_chatops_web_serves_the_pages_read_only_from_the_database(tmp_path):
    async with web_bot(tmp_path) as web:  # a bot leaves a proposal behind, then stops
        pid = await web.propose()
        db = web.bot.settings.database_path
    port = _free_port()
    env = {**os.environ, "DATABASE_PATH": db, "WEB_USERS_FILE": str(tmp_path / "web-users.json"),
           "WEB_ALLOWED_USERS": "alice", "WEB_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "chatops", "web"], env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), 60)
        assert "Web dashboard (read-only 2 users)" in line
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            assert (await c.get("/api/v1/overview")).status_code == 401
            await login(c, "alice")
            home = await c.get("/")
            assert home.status_code == 200 and "Read-only dashboard" in home.text and f"#{pid} Open covered call" in home.text
            assert f'id="approve-{pid}"' not in home.text
            o = (await c.get("/api/v1/overview")).json()
            assert o["served_by"].startswith("chatops web") and o["pending"] == [pid] and o["account"]["equity"] == 1.0
            for path in ("/proposals", f"/proposals/{pid}", "/decisions", "/pnl", "/audit", "/chat", "/settings"):
                assert (await c.get(path)).status_code == 200, path
            r = await c.post(f"/proposals/{pid}/approve", data={"csrf": csrf_in(home.text)})
            assert r.status_code == 403 and "read-only" in r.text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode == 0
    from chatops.store import Store

    with Store(db) as store:
        assert store.get_proposal(pid).status == "pending" and store.votes(pid) == []


async def test_a_busy_port_leaves_the_bot_running_without_a_dashboard(tmp_path, caplog):
    taken = bind("127.0.0.1", 0)
    try:
        from agent.clock import SimClock
        from agent.exchange import open_exchange
        from chatops.app import Bot
        from chatops.web.server import WebServer
        from tests.spine_helpers import make_settings

        settings = make_settings(tmp_path, web_port=taken.getsockname()[1])
        bot = Bot(settings, exchange=open_exchange(settings, clock=SimClock()), channels=[])
        bot.web = WebServer.for_bot(bot)
        await bot.start()
        try:
            assert bot.web is None
            assert "web dashboard not started" in caplog.text and "WEB_PORT" in caplog.text
            _, decision = await bot.tick()
            assert decision is not None
        finally:
            await bot.stop()
    finally:
        taken.close()


def test_exchange_kind_names_paper_testnet_and_mainnet():
    from agent.config import load_settings
    from chatops.web.views import exchange_kind

    key = {"deribit_client_id": "id", "deribit_client_secret": "secret"}
    assert exchange_kind(load_settings(env_file=None)) == "paper"
    assert exchange_kind(load_settings(env_file=None, exchange="deribit", **key)) == "testnet"
    assert exchange_kind(load_settings(env_file=None, exchange="deribit", deribit_base_url="https://www.deribit.com", allow_mainnet=True,
                                       **key)) == "mainnet"
    assert exchange_kind(load_settings(env_file=None, exchange="deribit", deribit_base_url="http://127.0.0.1:9",
                                       **key)) == "custom (127.0.0.1)"
