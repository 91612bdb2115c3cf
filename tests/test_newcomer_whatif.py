"""What-if answers the question asked: candidates re-selected from the whole chain under the new
spot and IV, no waiting rule hiding the answer (and saying so), an uncovered call named."""

from __future__ import annotations

import pytest

from agent.state import build_agent_state
from agent.whatif import apply_overrides, parse_overrides, uncovered_calls
from tests import builders as b
from tests.spine_helpers import make_bot, settle_orders


@pytest.fixture
async def bot(tmp_path):
    bot = make_bot(tmp_path)
    await bot.start()
    yield bot
    await bot.stop()


async def test_a_spot_move_reselects_from_the_whole_chain(bot):
    today = await build_agent_state(bot.exchange.client, bot.settings, clock=bot.exchange.clock)
    assert today.candidates
    # Repricing only today's candidates finds none: their deltas leave the band.
    assert apply_overrides(today, parse_overrides("spot=-5%"), bot.settings).candidates == ()
    reply = await bot.core.whatif("spot=-5%", "alice", "console")
    assert "Rules: OPEN_COVERED_CALL" in reply.text, reply.text
    chosen = reply.text.split("Rules: OPEN_COVERED_CALL ")[1].split()[0]
    assert chosen not in {c.instrument_name for c in today.candidates}  # a lower strike, out of today's list
    assert f"re-selected from all {today.chain_size} options" in reply.text


async def test_the_hysteresis_is_lifted_and_the_answer_says_so(bot):
    await bot.tick()
    (p,) = bot.store.pending_proposals()
    await bot.core.approve(p.id, "alice", "console")
    await settle_orders(bot)  # the sell starts at the mid and steps to the bid on the simulated clock
    reply = await bot.core.whatif("spot=+8%", "alice", "console")
    assert "hysteresis)" not in reply.text.split("\n")[2]  # the reasoning is not "last action 0 min ago"
    assert "roll wanted" in reply.text
    assert "Hypothetical, so not applied: the 60-min hysteresis after the last action" in reply.text


async def test_the_rejection_cool_down_is_lifted_and_named(bot):
    await bot.tick()
    (p,) = bot.store.pending_proposals()
    await bot.core.reject(p.id, "alice", "console", "strike too close")
    reply = await bot.core.whatif("iv=+0", "alice", "console")
    assert f"Rules: OPEN_COVERED_CALL {p.symbol}" in reply.text  # the rejected call, as the market stands
    assert "the rejection cool-down (#1 OPEN_COVERED_CALL" in reply.text and "strike too close" in reply.text


async def test_equity_zero_names_the_uncovered_call(bot):
    await bot.tick()
    (p,) = bot.store.pending_proposals()
    await bot.core.approve(p.id, "alice", "console")
    await settle_orders(bot)  # the sell starts at the mid and steps to the bid on the simulated clock
    reply = await bot.core.whatif("equity=0", "alice", "console")
    assert f"UNCOVERED: short 0.1 {p.symbol}" in reply.text and "0.0000 BTC held against 0.1 sold" in reply.text
    reply = await bot.core.whatif("equity=5", "alice", "console")
    assert "UNCOVERED" not in reply.text


def test_uncovered_calls_is_pure_and_counts_every_short():
    calls = (b.short_call(1, size=-0.3), b.short_call(2, size=-0.3, strike=104_000))
    assert uncovered_calls(b.state(positions=calls, equity=1.0)) == []
    named = uncovered_calls(b.state(positions=calls, equity=0.5))
    assert len(named) == 2 and all("0.1 naked" in n for n in named)
