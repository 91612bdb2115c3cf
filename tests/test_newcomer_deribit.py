"""Deribit set-up: production only with ALLOW_MAINNET, checked against the `testnet` flag of the
exchange's own responses; the tag says what an approval does; exchange errors in plain words."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from agent.config import ConfigError, load_settings
from agent.deribit.errors import DeribitError, TransportError, error_for
from agent.exchange import open_exchange
from chatops.adapters.console import ConsoleChannel
from chatops.app import Bot


def _deribit(tmp_path, **kw):
    base = dict(exchange="deribit", deribit_client_id="k", deribit_client_secret="s",
                database_path=str(tmp_path / "db"), console_allowed_users="alice")
    return load_settings(env_file=None, **{**base, **kw})


def test_production_url_needs_allow_mainnet(tmp_path):
    with pytest.raises(ConfigError) as err:
        _deribit(tmp_path, deribit_base_url="https://www.deribit.com")
    assert "ALLOW_MAINNET=true" in str(err.value) and "\n" not in str(err.value)
    s = _deribit(tmp_path, deribit_base_url="https://www.deribit.com", allow_mainnet=True)
    assert s.trading_tag == "[MAINNET DRY-RUN]"
    assert _deribit(tmp_path, deribit_base_url="https://www.deribit.com", allow_mainnet=True,
                    dry_run=False).trading_tag == "[MAINNET]"
    assert _deribit(tmp_path).trading_tag == "[TESTNET DRY-RUN]"
    assert _deribit(tmp_path, dry_run=False).trading_tag == "[TESTNET]"
    assert load_settings(env_file=None).trading_tag == "[PAPER]"


def test_production_refused_at_start_up_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DERIBIT", "EXCHANGE"))}
    env.update(EXCHANGE="deribit", DERIBIT_BASE_URL="https://www.deribit.com", DERIBIT_CLIENT_ID="k",
               DERIBIT_CLIENT_SECRET="s", DATABASE_PATH=str(tmp_path / "db"))
    p = subprocess.run([sys.executable, "-m", "chatops", "run", "--ticks", "1"], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "ALLOW_MAINNET=true" in p.stderr


@asynccontextmanager
async def deribit_answering(testnet: bool):
    """A server that answers like Deribit production (or testnet): only the envelope matters here."""
    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"jsonrpc": "2.0", "id": 1, "testnet": testnet, "usIn": 1, "usOut": 2, "usDiff": 1,
                                  "result": {"index_price": 95000.0, "estimated_delivery_price": 95000.0}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_server_that_answers_as_mainnet_is_refused_without_allow_mainnet(tmp_path):
    async with deribit_answering(testnet=False) as url:
        s = _deribit(tmp_path, deribit_base_url=url)  # the URL does not look like production...
        assert s.trading_tag == "[TESTNET DRY-RUN]"
        bot = Bot(s, exchange=open_exchange(s), channels=[ConsoleChannel(stdout=io.StringIO(), user="alice",
                                                                          read_input=False)])
        with pytest.raises(ConfigError) as err:  # ...but the exchange says it is production
            await bot.start()
        assert "answers as Deribit production" in str(err.value) and "ALLOW_MAINNET=true" in str(err.value)
        await bot.exchange.aclose()
        bot.store.close()

        s = _deribit(tmp_path, deribit_base_url=url, allow_mainnet=True)
        bot = Bot(s, exchange=open_exchange(s), channels=[ConsoleChannel(stdout=io.StringIO(), user="alice",
                                                                          read_input=False)])
        await bot.start()
        try:
            assert bot.core.tag == "[MAINNET DRY-RUN]" and bot.live_status()["tag"] == "[MAINNET DRY-RUN]"
        finally:
            await bot.stop()


async def test_the_tag_follows_the_testnet_flag(tmp_path):
    async with deribit_answering(testnet=True) as url:
        s = _deribit(tmp_path, deribit_base_url=url, dry_run=False)
        bot = Bot(s, exchange=open_exchange(s), channels=[ConsoleChannel(stdout=io.StringIO(), user="alice",
                                                                          read_input=False)])
        await bot.start()
        try:
            assert bot.exchange.client.testnet is True and bot.core.tag == "[TESTNET]"
        finally:
            await bot.stop()


def test_exchange_errors_read_as_a_person_would_say_them():
    e = TransportError(None, "connection error: ConnectError", None, "public/get_index_price")
    assert str(e).startswith("the exchange cannot be reached (connection error: ConnectError, public/get_index_price)")
    assert "None" not in str(e)
    e = error_for(10009, "not_enough_funds", None, "private/sell")
    assert str(e) == "the exchange refused the request (private/sell): not enough funds (Deribit error 10009)"
    assert "None" not in str(DeribitError(None, "unexpected HTTP 404 without a JSON-RPC result"))


def test_an_unreachable_exchange_is_one_plain_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DERIBIT", "EXCHANGE", "PAPER"))}
    env.update(PAPER_EXCHANGE_URL="http://127.0.0.1:9", DATABASE_PATH=str(tmp_path / "db"))
    p = subprocess.run([sys.executable, "-m", "chatops", "tick"], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("exchange error: the exchange cannot be reached") and "None" not in last
