"""The ledger from the paper exchange's own records over HTTP, on a simulated clock: a call that
expires out of the money, one that expires in the money, and a coin P&L equal to the equity change."""

from __future__ import annotations

import pytest

from agent.clock import SimClock
from agent.config import load_settings
from agent.deribit.client import DeribitClient
from agent.deribit.paper import PaperExchange
from agent.execution import execute_action
from agent.ledger import pnl, positions, reconcile
from agent.ledger_feed import Cursor, snapshot_of, sync
from agent.models import Action, ActionType, ExecutionStatus
from agent.state import build_agent_state
from tests.fakes.paper_http import paper_http
from tests.paper_helpers import T0_MS

S = load_settings(env_file=None, mode="research", min_dte=1.5, max_dte=4.0)


@pytest.fixture
async def env(tmp_path):
    paper = PaperExchange(clock=SimClock(start_ms=T0_MS), state_path=tmp_path / "paper.json")
    async with paper_http(paper) as url:
        async with DeribitClient(url, "id", "secret", server_clock=lambda: paper.clock.now_ms() / 1000) as client:
            yield paper, client


async def sell_nearest(client, paper, label, *, otm_pct):
    state = await build_agent_state(client, S, clock=paper.clock)
    c = min(state.candidates, key=lambda c: (c.expiration_timestamp, abs(c.otm_pct - otm_pct)))
    r = await execute_action(client, Action(action=ActionType.OPEN_COVERED_CALL, underlying="BTC",
                                            symbol=c.instrument_name, size=0.1, ref_sell_price=c.bid), label, S)
    assert r.status == ExecutionStatus.FILLED
    return c


async def test_fills_and_settlements_through_an_otm_and_an_itm_expiry(env):
    paper, client = env
    state0 = await build_agent_state(client, S, clock=paper.clock)
    first = await sync(client, state0, Cursor(), force=True)
    assert first.fills == () and first.settlements == () and first.requests == 2
    start, cursor = first.snapshot, first.cursor
    fills, settlements = [], []

    async def tick():
        nonlocal cursor
        st = await build_agent_state(client, S, clock=paper.clock)
        r = await sync(client, st, cursor)
        cursor = r.cursor
        fills.extend(r.fills)
        settlements.extend(r.settlements)
        return st, r

    # A steady tick reads nothing more.
    _, r = await tick()
    assert (r.requests, r.reason) == (0, "unchanged")

    a = await sell_nearest(client, paper, "led-1", otm_pct=10.0)  # far out of the money
    _, r = await tick()
    assert r.requests == 1 and [f.label for f in r.fills] == ["led-1"]
    (f,) = r.fills
    assert (f.instrument_name, f.direction, f.amount) == (a.instrument_name, "sell", 0.1)
    assert f.fee == pytest.approx(min(0.0003 * 0.1, 0.125 * f.price * 0.1)) and f.order_id and f.index_price

    paper.clock.advance((a.expiration_timestamp - paper.clock.now_ms()) / 1000 + 3600)
    paper.set_index(paper.index_price() * 0.97)  # keep it out of the money whatever the path did
    _, r = await tick()
    (otm,) = r.settlements
    assert otm.instrument_name == a.instrument_name and otm.payoff == 0 and otm.position == pytest.approx(-0.1)

    b = await sell_nearest(client, paper, "led-2", otm_pct=1.0)
    paper.clock.advance((b.expiration_timestamp - paper.clock.now_ms()) / 1000 - 7200)
    paper.set_index(b.strike * 1.15)  # deep in the money into the settlement window
    paper.clock.advance(3 * 3600)
    end_state, r = await tick()
    (itm,) = r.settlements
    assert itm.instrument_name == b.instrument_name and itm.payoff > 0.05
    assert itm.cash_flow == pytest.approx(-0.1 * itm.payoff)
    assert itm.payoff == pytest.approx((itm.delivery_price - b.strike) / itm.delivery_price, abs=1e-8)

    # No record is read twice, and the ledger's positions agree with the exchange's.
    assert len({f.trade_id for f in fills}) == len(fills) == 2
    assert reconcile(positions(fills, settlements), {p.instrument_name: p.size for p in end_state.positions}) == []

    p = pnl(fills, settlements, start, snapshot_of(end_state))
    assert [c.end for c in p.cycles] == ["expiry_otm", "expiry_itm"]
    assert p.settlement_cash == pytest.approx(itm.cash_flow)
    assert abs(p.pnl_coin - (end_state.account.equity - state0.account.equity)) <= 1e-8
    assert p.check_ok and p.pnl_coin < 0  # the ITM payout outweighs both premiums
