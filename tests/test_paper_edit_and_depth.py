"""The paper exchange's `private/edit` (same order id and label, a crossing price fills) and its
partial fills (`limit_depth`: the touch holds only so many contracts; the rest rests, and a
cancel keeps what filled, as on Deribit)."""

from __future__ import annotations

import pytest

from agent.clock import SimClock
from agent.deribit.client import DeribitClient
from agent.deribit.errors import DeribitError
from agent.deribit.paper import PaperExchange
from agent.deribit.paper_server import transport as paper_transport


@pytest.fixture
async def ex(tmp_path):
    paper = PaperExchange(clock=SimClock(), state_path=tmp_path / "paper.json")
    async with DeribitClient("http://paper.invalid", "id", "secret", transport=paper_transport(paper)) as client:
        summary = await client.get_book_summary_by_currency("BTC")
        name = next(s.instrument_name for s in summary if s.bid_price and s.bid_price > 0.005
                    and s.ask_price and s.ask_price - s.bid_price >= 0.001)
        yield paper, client, name


async def test_edit_moves_the_price_in_place_and_a_crossing_edit_fills(ex):
    paper, client, name = ex
    t = await client.ticker(name)
    placed = await client.sell(name, 0.1, t.best_ask_price, label="e-1")
    assert placed.order.order_state == "open"
    moved = await client.edit(placed.order.order_id, 0.1, t.best_ask_price - 0.0005)
    assert moved.order.order_id == placed.order.order_id and moved.order.label == "e-1"
    assert moved.order.price == pytest.approx(t.best_ask_price - 0.0005) and moved.order.order_state == "open"
    filled = await client.edit(placed.order.order_id, 0.1, t.best_bid_price)
    assert filled.order.order_state == "filled" and filled.trades and filled.trades[0].price == t.best_bid_price
    with pytest.raises(DeribitError) as e:
        await client.edit(placed.order.order_id, 0.1, t.best_ask_price)
    assert e.value.code == 11044
    assert len(await client.get_order_state_by_label("BTC", "e-1")) == 1


async def test_a_limited_touch_fills_part_and_a_cancel_keeps_the_fill(ex):
    paper, client, name = ex
    paper.limit_depth(name, 0.1)
    t = await client.ticker(name)
    r = await client.sell(name, 0.3, t.best_bid_price, label="d-1")
    assert r.order.order_state == "open" and r.order.filled_amount == pytest.approx(0.1)
    assert [tr.amount for tr in r.trades] == [pytest.approx(0.1)]
    paper.clock.advance(60)
    assert (await client.get_order_state(r.order.order_id)).filled_amount == pytest.approx(0.1)  # touch used up
    cancelled = await client.cancel(r.order.order_id)
    assert cancelled.order_state == "cancelled" and cancelled.filled_amount == pytest.approx(0.1)
    (pos,) = await client.get_positions("BTC")
    assert pos.signed_size == pytest.approx(-0.1)
    paper.limit_depth(name, None)
    t = await client.ticker(name)
    assert (await client.sell(name, 0.1, t.best_bid_price)).order.order_state == "filled"
