"""UNDERLYING as a comma list, per-coin overrides (NAME_ETH), their one-line errors, and the CLI's
per-coin views (status, audit --underlying, pause --underlying)."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent.config import ConfigError, load_settings
from chatops.cli import main
from tests.spine_helpers import make_bot


def test_one_name_keeps_todays_settings():
    s = load_settings(env_file=None)
    assert (s.underlying, s.underlyings) == ("BTC", ("BTC",))
    view = s.for_underlying("BTC")
    assert view.redacted() == s.redacted()  # nothing changes for a single BTC
    eth = load_settings(env_file=None, underlying="eth")
    assert (eth.underlying, eth.underlyings) == ("ETH", ("ETH",))


def test_a_comma_list_and_each_coins_view():
    s = load_settings(env_file=None, underlying="btc, eth", max_expiry_exposure_eth=3, default_order_size_btc=0.2)
    assert (s.underlying, s.underlyings) == ("BTC", ("BTC", "ETH"))
    btc, eth = s.for_underlying("BTC"), s.for_underlying("eth")
    assert (btc.underlying, btc.default_order_size, btc.max_expiry_exposure) == ("BTC", 0.2, 0.5)
    # ETH: its own override, else its coin default (it trades whole coins), else the plain value.
    assert (eth.underlying, eth.default_order_size, eth.max_expiry_exposure, eth.max_options_delta_abs) == ("ETH", 1.0, 3.0, 10.0)
    assert eth.effective_auto_max_size == 1.0 and eth.min_premium == s.min_premium
    assert eth.index_name == "eth_usd" and eth.underlyings == ("BTC", "ETH")
    with pytest.raises(ValueError, match="ETH is not traded here"):
        load_settings(env_file=None).for_underlying("ETH")


def test_a_plain_value_set_applies_to_every_coin(monkeypatch):
    monkeypatch.setenv("UNDERLYING", "BTC,ETH")
    monkeypatch.setenv("MAX_NET_DELTA_ABS", "4")
    monkeypatch.setenv("DEFAULT_ORDER_SIZE_ETH", "2")
    s = load_settings(env_file=None)
    assert s.for_underlying("ETH").max_net_delta_abs == 4 and s.for_underlying("BTC").max_net_delta_abs == 4
    assert s.for_underlying("ETH").default_order_size == 2 and s.for_underlying("BTC").default_order_size == 0.1


@pytest.mark.parametrize("env,needle", [
    ({"UNDERLYING": "BTC,DOGE"}, "UNDERLYING='DOGE' is not allowed"),
    ({"UNDERLYING": "BTC,btc"}, "names a coin twice"),
    ({"UNDERLYING": "BTC,ETH", "DEFAULT_ORDER_SIZE_ETH": "0.5"}, "DEFAULT_ORDER_SIZE_ETH=0.5 is below the ETH minimum trade of 1 ETH"),
    ({"UNDERLYING": "BTC,ETH", "DEFAULT_ORDER_SIZE": "0.3"}, "DEFAULT_ORDER_SIZE=0.3 is below the ETH minimum trade"),
    ({"DEFAULT_ORDER_SIZE": "0.05"}, "DEFAULT_ORDER_SIZE=0.05 is below the BTC minimum trade of 0.1 BTC"),
    ({"UNDERLYING": "BTC,ETH", "MAX_EXPIRY_EXPOSURE_ETH": "-1"}, "MAX_EXPIRY_EXPOSURE_ETH='-1' is not allowed"),
])
def test_bad_coin_settings_are_one_line(monkeypatch, env, needle):
    """Bad values stop load_settings; a size below a coin's minimum stops the bot's start-up."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as e:
        load_settings(env_file=None).check_min_trade()
    assert needle in str(e.value) and "\n" not in str(e.value)


async def test_a_bot_with_an_eth_size_below_one_does_not_start(tmp_path):
    bot = make_bot(tmp_path, underlying="BTC,ETH", default_order_size_eth=0.5)
    with pytest.raises(ConfigError, match="DEFAULT_ORDER_SIZE_ETH=0.5 is below the ETH minimum trade"):
        await bot.start()
    assert bot.store.list_events(kind="bot_started") == []
    await bot.exchange.aclose()
    bot.store.close()


def test_cli_status_audit_and_pause_per_coin(tmp_path, monkeypatch, capsys):
    async def scenario():
        b = make_bot(tmp_path, underlying="BTC,ETH")
        await b.start()
        for _ in range(2):
            await b.tick_all()
            b.exchange.clock.advance(60)
        await b.stop()

    asyncio.run(scenario())
    monkeypatch.setenv("DATABASE_PATH", str(tmp_path / "chatops.db"))
    monkeypatch.setenv("UNDERLYING", "BTC,ETH")
    monkeypatch.setenv("CONSOLE_ALLOWED_USERS", "alice")
    assert main(["audit", "decisions", "--json", "--underlying", "eth"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and {r["underlying"] for r in rows} == {"ETH"}
    assert main(["audit", "proposals", "--underlying", "BTC"]) == 0
    listed = capsys.readouterr().out
    assert "BTC-" in listed and "ETH-" not in listed
    assert main(["status"]) == 0
    status = capsys.readouterr().out
    assert "\nBTC: running" in status and "\nETH: running" in status and "equity 27.1429 ETH" in status
    assert main(["status", "--json"]) == 0
    blocks = json.loads(capsys.readouterr().out)["underlyings"]
    assert set(blocks) == {"BTC", "ETH"} and len(blocks["ETH"]["pending"]) == 1
    monkeypatch.setattr("chatops.cli.os_user", lambda: "alice")
    assert main(["pause", "--underlying", "ETH"]) == 0
    assert "Paused ETH." in capsys.readouterr().out
    assert main(["status", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["underlyings"]["ETH"]["paused"] and not out["paused"] and out["underlyings"]["ETH"]["pending"] == []
    assert main(["resume", "--underlying", "ETH"]) == 0
    assert "Resumed ETH." in capsys.readouterr().out
