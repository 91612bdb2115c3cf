"""The backtest's in-process book (agent.backtest_client.LazyBook over paper_book.BookView) holds
exactly what the wire carries, entry for entry; pricing one expiry alone gives the figures the
whole-chain pass gives."""

from __future__ import annotations

import asyncio

import pytest

from agent.backtest import ManualClock
from agent.backtest_client import InProcessClient, LazyBook
from agent.deribit.errors import DeribitError
from agent.deribit.paper import PaperExchange
from agent.deribit.types import BookSummary

START = 1_735_689_600_000  # 2025-01-01 00:00 UTC


def _paper(ms: int = START) -> tuple[PaperExchange, ManualClock]:
    clock = ManualClock(ms)
    return PaperExchange(clock=clock, state_path=None, client_id=None, client_secret=None, currencies=("BTC",)), clock


def test_lazy_book_equals_the_wire_book_entry_for_entry():
    wire_ex, wire_clock = _paper()
    lazy_ex, lazy_clock = _paper()
    for hours in (0, 7, 31, 200):  # new instants, a new listing day, strikes added as the spot moves
        wire_clock.set(START + hours * 3_600_000)
        lazy_clock.set(START + hours * 3_600_000)
        env = asyncio.run(wire_ex.handle("public/get_book_summary_by_currency", {"currency": "BTC", "kind": "option"}, None))
        wire = [BookSummary.model_validate(r) for r in env["result"]]
        client = InProcessClient(lazy_ex)
        try:
            lazy = asyncio.run(client.get_book_summary_by_currency("BTC"))
        finally:
            asyncio.run(client.aclose())
        assert isinstance(lazy, LazyBook) and len(lazy) == len(wire) > 500
        one = wire[len(wire) // 2]
        assert lazy.by_name[one.instrument_name] == one  # read alone, before the rest
        assert list(lazy.by_name.keys()) == [b.instrument_name for b in wire]  # the wire's order
        assert list(lazy) == wire
        assert "BTC-1JAN20-1000-C" not in lazy.by_name and lazy.by_name.get("BTC-1JAN20-1000-C") is None


def test_an_expiry_priced_alone_matches_the_whole_chain_pass():
    ex, clock = _paper(START + 5 * 3_600_000)
    market = ex.markets["BTC"]
    now = clock.now_ms()
    whole = {r["instrument_name"]: r for r in market.summaries(now, market.spot(now))}
    alone, _ = _paper(now)  # a fresh market: nothing priced at this instant yet
    m2 = alone.markets["BTC"]
    for spec in list(m2.options.values())[::37]:
        q = m2.quote(spec, now)  # prices this option's expiry only
        r = whole[spec.name]
        assert (q.mark, q.bid, q.ask, round(q.iv * 100, 2)) == (r["mark_price"], r["bid_price"], r["ask_price"], r["mark_iv"])


def test_a_bad_currency_is_the_same_error_as_on_the_wire():
    ex, _ = _paper()
    client = InProcessClient(ex)
    try:
        with pytest.raises(DeribitError) as err:
            asyncio.run(client.get_book_summary_by_currency("DOGE"))
        assert err.value.code == -32602
        assert asyncio.run(client.get_book_summary_by_currency("BTC", kind="future")) == []
    finally:
        asyncio.run(client.aclose())


def test_a_book_read_after_the_listing_changed_says_so():
    ex, clock = _paper()
    view = ex.book_view("BTC")
    first = next(iter(view.names))
    assert view.row(first)["instrument_name"] == first
    market = ex.markets["BTC"]
    ex.set_index(market.spot(clock.now_ms()) * 1.4)  # far from the grid's edge: strikes are added
    market.extend_strikes(clock.now_ms())
    with pytest.raises(RuntimeError, match="listing changed"):
        view.row(first)
