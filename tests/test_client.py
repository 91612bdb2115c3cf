"""The Deribit client against the paper exchange served over real HTTP on loopback."""

from __future__ import annotations

import pytest

from agent.clock import SimClock
from agent.deribit import errors
from agent.deribit.client import DeribitClient
from agent.deribit.paper import PaperExchange
from tests.fakes.paper_http import paper_http


class Time:
    """A monotonic clock the test moves, and a sleep that moves it (retries without waiting)."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


@pytest.fixture
def paper(tmp_path):
    return PaperExchange(clock=SimClock(), state_path=tmp_path / "paper.json", token_ttl_s=100)


@pytest.fixture
async def served(paper):
    async with paper_http(paper) as url:
        yield url


def make(url: str, t: Time | None = None, **kw) -> DeribitClient:
    t = t or Time()
    return DeribitClient(url, "id", "secret", clock=t.clock, sleep=t.sleep, **kw)


async def test_every_method_over_http(served, paper):
    async with make(served) as c:
        assert await c.get_time() > 0
        idx = await c.get_index_price("btc_usd")
        assert idx.index_price == pytest.approx(paper.index_price("BTC"))
        insts = await c.get_instruments("BTC")
        assert len(insts) >= 600 and all(i.kind == "option" for i in insts)
        book = await c.get_book_summary_by_currency("BTC")
        assert {b.instrument_name for b in book} == {i.instrument_name for i in insts}
        call = next(b for b in book if b.instrument_name.endswith("-C") and b.bid_price and b.bid_price > 0.005)
        t = await c.ticker(call.instrument_name)
        assert t.greeks is not None and 0 < t.greeks.delta < 1
        acct = await c.get_account_summary("BTC")
        assert acct.equity == pytest.approx(1.0)
        assert await c.get_positions("BTC") == []

        sold = await c.sell(call.instrument_name, 0.1, call.bid_price, label="t-sell")
        assert sold.order.order_state == "filled" and sold.trades
        (pos,) = await c.get_positions("BTC")
        assert pos.signed_size == pytest.approx(-0.1)
        assert (await c.get_order_state(sold.order.order_id)).order_state == "filled"
        assert [o.order_id for o in await c.get_order_state_by_label("BTC", "t-sell")] == [sold.order.order_id]

        resting = await c.buy(call.instrument_name, 0.1, 0.0001, label="t-rest", reduce_only=True)
        assert resting.order.order_state == "open"
        assert [o.label for o in await c.get_open_orders_by_label("BTC", "t-rest")] == ["t-rest"]
        cancelled = await c.cancel(resting.order.order_id)
        assert cancelled.order_state == "cancelled"
        assert await c.get_open_orders_by_label("BTC", "t-rest") == []
        trades = await c.get_user_trades_by_instrument(call.instrument_name)
        assert [tr.order_id for tr in trades.trades] == [sold.order.order_id]
        assert c.stats.requests >= 14 and c.stats.by_site["private/sell"].requests == 1


async def test_post_json_rpc_works_too(served):
    async with make(served, http_method="POST") as c:
        assert (await c.get_account_summary("BTC")).equity == pytest.approx(1.0)


async def test_instruments_are_cached_within_the_10s_limit(served):
    t = Time()
    async with make(served, t) as c:
        await c.get_instruments("BTC")
        await c.get_instruments("BTC")
        t.t += 5
        c.invalidate_instruments()
        await c.get_instruments("BTC")  # stale, but the 10 s limit still holds
        assert c.stats.by_site["public/get_instruments"].requests == 1
        t.t += 6
        await c.get_instruments("BTC")
        assert c.stats.by_site["public/get_instruments"].requests == 2


async def test_token_refreshed_before_80_percent_of_its_life(served, paper):
    t = Time()
    async with make(served, t) as c:
        await c.get_account_summary("BTC")
        assert c.stats.by_site["public/auth"].requests == 1
        t.t += 79  # token_ttl_s=100
        await c.get_account_summary("BTC")
        assert c.stats.by_site["public/auth"].requests == 1
        t.t += 2
        await c.get_account_summary("BTC")
        assert c.stats.by_site["public/auth"].requests == 2  # refreshed (refresh_token grant)


async def test_reauthenticates_once_on_13009(served, paper):
    async with make(served) as c:
        await c.get_account_summary("BTC")
        paper.revoke_tokens()
        assert (await c.get_account_summary("BTC")).equity > 0
        assert c.stats.by_site["public/auth"].requests == 2
        paper.faults.fail_next("private/get_positions", 13009, count=2)
        with pytest.raises(errors.Unauthorized):
            await c.get_positions("BTC")


async def test_invalid_credentials_stop_with_a_clear_message(tmp_path):
    ex = PaperExchange(clock=SimClock(), state_path=None, client_id="right", client_secret="right")
    async with paper_http(ex) as url:
        async with DeribitClient(url, "wrong", "wrong") as c:
            with pytest.raises(errors.InvalidCredentials) as e:
                await c.get_account_summary("BTC")
            assert "DERIBIT_CLIENT_ID" in str(e.value) and e.value.code == 13004
            assert c.stats.by_site["public/auth"].requests == 1  # not retried


async def test_missing_key_is_a_clear_error_without_a_request(served):
    async with DeribitClient(served) as c:
        with pytest.raises(errors.InvalidCredentials, match="no API key configured"):
            await c.get_positions("BTC")
        assert c.stats.requests == 0


@pytest.mark.parametrize("code", [10028, 10040, 10041, 13028])
async def test_retryable_codes_are_retried_with_backoff(served, paper, code):
    t = Time()
    async with make(served, t) as c:
        paper.faults.fail_next("public/get_index_price", code, count=2)
        idx = await c.get_index_price("btc_usd")
        assert idx.index_price > 0
        assert c.stats.by_site["public/get_index_price"].retries == 2
        assert len(t.sleeps) == 2 and t.sleeps[1] > t.sleeps[0] * 0.9


async def test_retries_are_bounded(served, paper):
    t = Time()
    async with make(served, t, max_retries=3) as c:
        paper.faults.fail_next("public/get_index_price", 10028, count=10)
        with pytest.raises(errors.TooManyRequests):
            await c.get_index_price("btc_usd")
        assert c.stats.by_site["public/get_index_price"].requests == 4
        assert max(t.sleeps) <= c.backoff_max_s


@pytest.mark.parametrize("code,exc", [(10009, errors.NotEnoughFunds), (10043, errors.PriceWrongTick),
                                      (11050, errors.BadRequest), (-32602, errors.InvalidParams)])
async def test_non_retryable_codes_are_not_retried(served, paper, code, exc):
    async with make(served) as c:
        await c.get_account_summary("BTC")
        paper.faults.fail_next("private/sell", code)
        with pytest.raises(exc) as e:
            await c.sell("BTC-X", 0.1, 0.01)
        assert e.value.code == code
        assert c.stats.by_site["private/sell"].requests == 1


async def test_real_exchange_errors_come_through_named(served, paper):
    async with make(served) as c:
        book = await c.get_book_summary_by_currency("BTC")
        call = next(b for b in book if b.instrument_name.endswith("-C") and b.bid_price and b.bid_price > 0.005)
        with pytest.raises(errors.PriceWrongTick):
            await c.sell(call.instrument_name, 0.1, call.bid_price + 0.00013)
        with pytest.raises(errors.NotEnoughFunds):
            await c.sell(call.instrument_name, 50, call.bid_price)
        with pytest.raises(errors.InstrumentNotFound):
            await c.sell("BTC-1JAN20-1000-C", 0.1, 0.01)
        with pytest.raises(errors.InstrumentNotFound):
            await c.ticker("BTC-1JAN20-1000-C")


async def test_5xx_and_dropped_connections_are_retried_for_reads(served, paper):
    t = Time()
    async with make(served, t) as c:
        paper.faults.http_status_next("public/get_index_price", 502)
        paper.faults.drop_next("public/get_index_price")
        assert (await c.get_index_price("btc_usd")).index_price > 0
        assert c.stats.by_site["public/get_index_price"].retries == 2


async def test_an_order_call_that_may_have_arrived_is_not_resent(served, paper):
    async with make(served) as c:
        book = await c.get_book_summary_by_currency("BTC")
        call = next(b for b in book if b.instrument_name.endswith("-C") and b.bid_price and b.bid_price > 0.005)
        paper.faults.drop_next("private/sell", after_processing=True)
        with pytest.raises(errors.TransportError):
            await c.sell(call.instrument_name, 0.1, call.bid_price, label="maybe")
        assert c.stats.by_site["private/sell"].requests == 1
        # it did arrive: the caller reconciles by label
        assert len(await c.get_order_state_by_label("BTC", "maybe")) == 1


async def test_timeouts_are_retried(served, paper):
    t = Time()
    async with make(served, t, timeout=0.2) as c:
        paper.faults.add_latency(0.5, "public/get_time")
        with pytest.raises(errors.TransportError, match="timeout"):
            await c.get_time()
        assert c.stats.by_site["public/get_time"].requests == c.max_retries + 1
        paper.faults.clear()
        assert await c.get_time() > 0


async def test_measure_counts_requests_of_a_block(served):
    async with make(served) as c:
        await c.get_account_summary("BTC")
        with c.measure() as counter:
            await c.get_index_price("btc_usd")
            await c.get_instruments("BTC")
        assert counter.requests == 2 and counter.credits == 1000
        assert set(counter.by_site) == {"public/get_index_price", "public/get_instruments"}
