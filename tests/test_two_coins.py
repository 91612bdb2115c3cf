"""UNDERLYING=BTC,ETH: one bot, one client, a tick, a pending proposal and a pause per coin, on the
paper exchange over HTTP."""

from __future__ import annotations

import io
from contextlib import asynccontextmanager

from agent.clock import SimClock
from agent.config import load_settings
from agent.deribit.paper import PaperExchange
from agent.exchange import open_exchange
from chatops.adapters.console import ConsoleChannel
from chatops.app import Bot
from chatops.scheduler import BotRunner
from tests.fakes.paper_http import paper_http
from tests.spine_helpers import settle_orders


@asynccontextmanager
async def two_coin_bot(tmp_path, speed: float | None = None, **kw):
    paper = PaperExchange(clock=SimClock(speed=speed), state_path=str(tmp_path / "paper.json"))
    async with paper_http(paper) as url:
        settings = load_settings(env_file=None, underlying="BTC,ETH", paper_exchange_url=url,
                                 database_path=str(tmp_path / "chatops.db"), console_allowed_users="alice", **kw)
        out = io.StringIO()
        bot = Bot(settings, exchange=open_exchange(settings, clock=paper.clock),
                  channels=[ConsoleChannel(stdout=out, user="alice", read_input=False)])
        await bot.start()
        try:
            yield bot, paper, out
        finally:
            await bot.stop()


async def test_one_bot_proposes_for_both_and_an_approval_executes_only_that_one(tmp_path):
    async with two_coin_bot(tmp_path) as (bot, paper, out):
        assert bot.underlyings == ("BTC", "ETH")
        await bot.tick_all()
        btc, eth = bot.store.pending_proposals("BTC"), bot.store.pending_proposals("ETH")
        assert len(btc) == 1 and len(eth) == 1
        assert btc[0].symbol.startswith("BTC-") and eth[0].symbol.startswith("ETH-")
        assert btc[0].size == 0.1 and eth[0].size == 1.0  # each coin its own default size
        assert btc[0].label != eth[0].label
        text = out.getvalue()
        assert f"#{btc[0].id} Open covered call - BTC" in text and f"#{eth[0].id} Open covered call - ETH" in text

        # A second round keeps one pending proposal per coin (the same action is kept, not doubled).
        await bot.tick_all()
        assert [p.id for p in bot.store.pending_proposals()] == [btc[0].id, eth[0].id]

        reply = await bot.core.approve(eth[0].id, "alice", "console")
        await settle_orders(bot)  # a sell starts at the mid and steps to the bid on the simulated clock
        assert reply.ok
        assert bot.store.get_proposal(eth[0].id).status == "executed"
        assert bot.store.get_proposal(btc[0].id).status == "pending"
        # Read back from the exchange: the ETH account holds the call, the BTC account nothing.
        (pos,) = await bot.exchange.client.get_positions("ETH")
        assert pos.instrument_name == eth[0].symbol and pos.size == -1.0
        assert await bot.exchange.client.get_positions("BTC") == []
        assert [o.label for o in await bot.exchange.client.get_order_state_by_label("ETH", eth[0].label)] == [eth[0].label]
        assert await bot.exchange.client.get_order_state_by_label("BTC", eth[0].label) == []

        why = (await bot.core.why(str(eth[0].id), "alice", "console")).text
        assert "size 1 ETH" in why
        assert "Decision d1 (BTC)" in (await bot.core.why("d1", "alice", "console")).text


async def test_pausing_eth_leaves_btc_trading(tmp_path):
    async with two_coin_bot(tmp_path) as (bot, paper, out):
        await bot.tick_all()
        (eth,) = bot.store.pending_proposals("ETH")
        reply = await bot.core.handle_text("pause ETH rolling over", "alice", "console")
        assert reply.text == "Paused ETH." and bot.approvals.is_paused("ETH")
        assert not bot.approvals.is_paused() and not bot.approvals.is_paused("BTC")
        assert bot.store.get_proposal(eth.id).status == "cancelled"  # ETH's pending goes with its pause

        paper.clock.advance(60)
        await bot.tick_all()
        assert bot.store.pending_proposals("ETH") == []  # paused: no new ETH proposal
        (btc,) = bot.store.pending_proposals("BTC")
        await bot.core.approve(btc.id, "alice", "console")
        await settle_orders(bot)  # a sell starts at the mid and steps to the bid on the simulated clock
        assert bot.store.get_proposal(btc.id).status == "executed"
        assert len(await bot.exchange.client.get_positions("BTC")) == 1
        assert await bot.exchange.client.get_positions("ETH") == []
        status = (await bot.core.status("alice", "console")).text
        assert "BTC: running" in status and "ETH: PAUSED" in status

        assert (await bot.core.handle_text("resume ETH", "alice", "console")).text == "Resumed ETH."
        await bot.tick_all()
        assert len(bot.store.pending_proposals("ETH")) == 1

        # The global switch still stops both.
        await bot.core.handle_text("pause", "alice", "console")
        assert bot.approvals.is_paused("BTC") and bot.approvals.is_paused("ETH")
        assert bot.store.pending_proposals() == []


async def test_requests_per_tick_stay_at_five_for_each_coin(tmp_path):
    async with two_coin_bot(tmp_path) as (bot, paper, out):
        per_coin: dict[str, list[int]] = {"BTC": [], "ETH": []}
        for _ in range(3):
            for coin in ("BTC", "ETH"):
                _, decision = await bot.tick(coin)
                assert decision is not None and decision.underlying == coin
                per_coin[coin].append(decision.requests)
            paper.clock.advance(60)
        # The first ticks authenticate and list instruments; then 5 each on the one shared client.
        assert per_coin["BTC"][1:] == [5, 5] and per_coin["ETH"][1:] == [5, 5]


async def test_a_two_coin_run_ticks_each_coin_and_executes_both(tmp_path):
    """The scheduler runs one tick job per coin (staggered); unattended, each coin's call executes
    within its own limits (ETH's 1 within its AUTO_APPROVE_MAX_SIZE, from its DEFAULT_ORDER_SIZE)."""
    # Market time runs 20x wall time here, so the working orders step to the bid within the run.
    async with two_coin_bot(tmp_path, speed=20, approval_mode="auto") as (bot, paper, out):
        runner = BotRunner(bot, interval=1, ticks=1)
        await runner.run()
        assert bot.ticks_by == {"BTC": 1, "ETH": 1}
        executed = bot.store.list_proposals(status="executed")
        assert sorted(p.underlying for p in executed) == ["BTC", "ETH"], bot.store.list_proposals()
        assert {p.size for p in executed} == {0.1, 1.0}
        for coin in ("BTC", "ETH"):
            assert len(await bot.exchange.client.get_positions(coin)) == 1


async def test_the_daily_summary_and_status_cover_both(tmp_path):
    async with two_coin_bot(tmp_path) as (bot, paper, out):
        await bot.tick_all()
        await bot.daily_summary()
        text = out.getvalue()
        assert "Daily summary: 2 ticks, 2 proposals" in text
        assert "BTC: equity 1.0000 BTC" in text and "ETH: equity 27.1429 ETH" in text
        status = (await bot.core.status("alice", "console")).text
        assert status.startswith("[PAPER] BTC,ETH covered calls")
        btc_block, eth_block = status.split("\nETH: ")
        assert "spot 95," in btc_block.split("BTC: ", 1)[1] and "equity 27.1429 ETH" in eth_block


async def test_eth_alone_opens_a_covered_call_with_the_defaults(tmp_path):
    """UNDERLYING=ETH on the embedded paper exchange: the defaults (size 1 ETH) trade."""
    from tests.spine_helpers import make_bot

    bot = make_bot(tmp_path, underlying="ETH")
    await bot.start()
    try:
        _, decision = await bot.tick()
        assert decision.final_action.action.value == "OPEN_COVERED_CALL" and decision.final_action.size == 1.0
        (p,) = bot.store.pending_proposals()
        await bot.core.approve(p.id, "alice", "console")
        await settle_orders(bot)  # a sell starts at the mid and steps to the bid on the simulated clock
        assert bot.store.get_proposal(p.id).status == "executed"
        (pos,) = await bot.exchange.client.get_positions("ETH")
        assert pos.size == -1.0
    finally:
        await bot.stop()


def test_one_state_file_for_both_coins_adopts_an_old_per_coin_file(tmp_path, caplog):
    from agent.deribit.paper import PaperExchange

    old = PaperExchange(clock=SimClock(), state_path=str(tmp_path / "paper_exchange_BTC.json"), seed=11)
    old.set_index(80_000.0, "BTC")
    old._save()
    (tmp_path / "paper_exchange_ETH.json").write_text((tmp_path / "paper_exchange_BTC.json").read_text())
    new = PaperExchange(clock=SimClock(), state_path=str(tmp_path / "paper_exchange.json"))
    assert (tmp_path / "paper_exchange.json").exists() and not (tmp_path / "paper_exchange_BTC.json").exists()
    assert new.markets["BTC"].params.seed == 11 and set(new.accounts) == {"BTC", "ETH"}
    assert "paper_exchange_ETH.json is no longer read" in caplog.text
