"""Execution against the paper exchange served over HTTP: fills, resting orders, tick rounding,
label reuse after a simulated crash, a failing second roll leg, dry-run."""

from __future__ import annotations

import pytest

from agent.clock import SimClock
from agent.config import load_settings
from agent.deribit.client import DeribitClient
from agent.deribit.paper import PaperExchange
from agent.execution import execute_action, price_legs
from agent.models import Action, ActionType, ExecutionStatus
from agent.pricing import is_on_grid
from agent.state import build_agent_state
from tests.fakes.paper_http import paper_http

S = load_settings(env_file=None)


@pytest.fixture
async def env(tmp_path):
    paper = PaperExchange(clock=SimClock(), state_path=tmp_path / "paper.json")
    async with paper_http(paper) as url:
        async with DeribitClient(url, "id", "secret") as client:
            yield paper, client


async def a_candidate(client, paper):
    state = await build_agent_state(client, S, clock=paper.clock)
    return state, state.candidates[0]


def open_action(c, size=0.1):
    return Action(action=ActionType.OPEN_COVERED_CALL, underlying="BTC", symbol=c.instrument_name, size=size,
                  ref_sell_price=c.bid)


async def test_open_fills_at_the_bid_on_the_tick_grid(env):
    paper, client = env
    _, c = await a_candidate(client, paper)
    r = await execute_action(client, open_action(c), "t-open", S)
    assert r.status == ExecutionStatus.FILLED and not r.dry_run
    (o,) = r.orders
    assert o.request.side == "sell" and o.request.label == "t-open" and o.order_state == "filled"
    assert is_on_grid(o.request.price, 0.0001, [{"above_price": 0.005, "tick_size": 0.0005}])
    assert o.request.price >= c.mark * (1 - S.max_slippage_pct / 100) - 1e-12
    (pos,) = await client.get_positions("BTC")
    assert pos.signed_size == pytest.approx(-0.1)


async def test_slippage_floor_makes_the_order_rest_then_fill_when_the_market_comes(env):
    paper, client = env
    _, c = await a_candidate(client, paper)
    tight = S.model_copy(update={"max_slippage_pct": 0.0})  # never below mark: above the bid, so it rests
    r = await execute_action(client, open_action(c), "t-rest", tight)
    assert r.status == ExecutionStatus.SUBMITTED and r.orders[0].order_state == "open"
    assert r.orders[0].request.price >= c.mark
    paper.shock(+4.0)  # the call gets dearer: the bid reaches the resting price
    paper.clock.advance(60)
    (o,) = await client.get_order_state_by_label("BTC", "t-rest")
    assert o.order_state == "filled"


async def test_dry_run_sends_nothing_and_says_what_it_would_send(env):
    paper, client = env
    _, c = await a_candidate(client, paper)
    dry = S.model_copy(update={"dry_run": True})
    r = await execute_action(client, open_action(c), "t-dry", dry)
    assert r.status == ExecutionStatus.SIMULATED and r.dry_run
    assert "no order left the process" in r.message and r.orders[0].order_id is None
    assert await client.get_order_state_by_label("BTC", "t-dry") == []


async def test_label_reuse_after_a_crash_sends_nothing_twice(env):
    paper, client = env
    _, c = await a_candidate(client, paper)
    first = await execute_action(client, open_action(c), "t-once", S)
    # The process "crashed" before recording: the same label is executed again on restart.
    again = await execute_action(client, open_action(c), "t-once", S)
    assert again.orders[0].reused and again.orders[0].order_id == first.orders[0].order_id
    assert len(await client.get_order_state_by_label("BTC", "t-once")) == 1
    (pos,) = await client.get_positions("BTC")
    assert pos.signed_size == pytest.approx(-0.1)


async def test_a_dropped_answer_is_found_by_label(env):
    paper, client = env
    _, c = await a_candidate(client, paper)
    paper.faults.drop_next("private/sell", after_processing=True)
    r = await execute_action(client, open_action(c), "t-drop", S)
    assert r.status == ExecutionStatus.FILLED and r.orders[0].reused
    assert len(await client.get_order_state_by_label("BTC", "t-drop")) == 1


async def test_exchange_rejection_is_reported_with_its_code(env):
    paper, client = env
    _, c = await a_candidate(client, paper)
    paper.faults.fail_next("private/sell", 10009)
    r = await execute_action(client, open_action(c), "t-rej", S)
    assert r.status == ExecutionStatus.REJECTED and r.error_code == 10009


async def _short_and_roll_target(client, paper):
    state, c = await a_candidate(client, paper)
    await execute_action(client, open_action(c), "t-base", S)
    research = S.model_copy(update={"min_dte": 1.0, "max_dte": 40.0, "min_delta": 0.05, "max_delta": 0.45,
                                    "min_open_interest": 0.0, "max_spread_pct": 40.0})
    state = await build_agent_state(client, research, clock=paper.clock)
    target = next(x for x in state.candidates
                  if x.expiration_timestamp > c.expiration_timestamp and x.strike > c.strike)
    roll = Action(action=ActionType.ROLL_COVERED_CALL, underlying="BTC", symbol=target.instrument_name,
                  roll_from=c.instrument_name, size=0.1)
    return c, target, roll


async def test_roll_closes_first_then_opens(env):
    paper, client = env
    c, target, roll = await _short_and_roll_target(client, paper)
    r = await execute_action(client, roll, "t-roll", S)
    assert r.status == ExecutionStatus.FILLED
    assert [o.request.label for o in r.orders] == ["t-roll-close", "t-roll-open"]
    assert r.orders[0].request.side == "buy" and r.orders[0].request.reduce_only
    sizes = {p.instrument_name: p.signed_size for p in await client.get_positions("BTC")}
    assert sizes == {target.instrument_name: pytest.approx(-0.1)}


async def test_a_failing_second_roll_leg_says_the_position_is_flat(env):
    paper, client = env
    c, target, roll = await _short_and_roll_target(client, paper)
    paper.faults.fail_next("private/sell", 10009)
    r = await execute_action(client, roll, "t-half", S)
    assert r.status == ExecutionStatus.FAILED
    assert "roll half done" in r.message and "flat" in r.message
    assert r.orders[0].order_state == "filled" and r.orders[1].error_code == 10009
    assert await client.get_positions("BTC") == []


async def test_price_legs_rounds_buys_down_and_sells_up(env):
    paper, client = env
    c, target, roll = await _short_and_roll_target(client, paper)
    close_leg, open_leg = await price_legs(client, roll, "t-p", S)
    steps = [{"above_price": 0.005, "tick_size": 0.0005}]
    assert is_on_grid(close_leg.price, 0.0001, steps) and is_on_grid(open_leg.price, 0.0001, steps)
    t_close = await client.ticker(close_leg.instrument_name)
    t_open = await client.ticker(open_leg.instrument_name)
    assert close_leg.price <= t_close.best_ask_price + 1e-12
    assert open_leg.price >= t_open.best_bid_price - 1e-12


def test_chatops_tick_prints_a_sensible_proposal(tmp_path, monkeypatch, capsys):
    from chatops.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["tick"]) == 0
    out = capsys.readouterr().out
    assert "[PAPER] tick at" in out and "Proposed (rule): OPEN_COVERED_CALL" in out and "Risk: allowed" in out
    assert (tmp_path / "data" / "paper_exchange.json").exists()


async def test_a_bare_502_before_processing_is_unknown_not_submitted(env):
    paper, client = env
    _, c = await a_candidate(client, paper)
    paper.faults.http_status_next("private/sell", 502)
    r = await execute_action(client, open_action(c), "t-502", S)
    # No code, no order found by label: not "submitted" (which read as sent), not a guess either.
    assert r.status == ExecutionStatus.UNKNOWN and r.orders[0].order_id is None
    assert await client.get_order_state_by_label("BTC", "t-502") == []
