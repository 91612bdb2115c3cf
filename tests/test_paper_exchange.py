"""The paper exchange speaks Deribit's wire protocol: over real HTTP (GET and POST JSON-RPC) and in process.
Here: auth, the wire format, the market it quotes, fault injection and serving; its orders, settlement and
persistence are in tests/test_paper_orders.py.

Time is a SimClock, so expiry and settlement are driven by `clock.advance`.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from agent.clock import SimClock
from agent.deribit.client import DeribitClient
from agent.deribit.errors import BadRequest, TransportError
from agent.deribit.paper_server import transport as paper_transport
from agent.deribit.paper import PaperExchange
from agent.deribit.paper_market import DAY_MS, TICK_SIZE, TICK_STEPS, YEAR_MS, Market, MarketParams, bid_ask, calendar
from agent.deribit.types import (
    AccountSummary,
    AuthResult,
    BookSummary,
    IndexPrice,
    Instrument,
    Order,
    OrderResult,
    Position,
    Ticker,
    UserTrades,
)
from agent.pricing import call_price_coin, is_on_grid, round_to_tick
from tests.fakes.paper_http import paper_http
from tests.paper_helpers import T0, T0_MS, NAME, books, call, clock, ex, login, pick, result  # noqa: F401 (clock, ex: fixtures)


# --- auth ---------------------------------------------------------------------------------------


async def test_auth_result_matches_deribit_and_opens_private_methods(ex):
    r = await result(ex, "public/auth", grant_type="client_credentials", client_id="any", client_secret="thing")
    auth = AuthResult.model_validate(r)
    assert (auth.token_type, auth.expires_in) == ("bearer", 900)
    assert "trade:read_write" in auth.scope and "account:read" in auth.scope
    summary = await result(ex, "private/get_account_summary", auth.access_token, currency="BTC")
    assert summary["equity"] == 1.0


async def test_configured_credentials_are_checked(clock, monkeypatch):
    monkeypatch.setenv("PAPER_CLIENT_ID", "me")
    monkeypatch.setenv("PAPER_CLIENT_SECRET", "s3cret")
    ex = PaperExchange(clock=clock, state_path=None)
    bad = await call(ex, "public/auth", grant_type="client_credentials", client_id="me", client_secret="wrong")
    assert bad["error"]["code"] == 13004 and bad["error"]["message"] == "invalid_credentials"
    ok = await call(ex, "public/auth", grant_type="client_credentials", client_id="me", client_secret="s3cret")
    assert ok["result"]["access_token"]
    missing = await call(ex, "public/auth", grant_type="client_credentials", client_id="me")
    assert missing["error"]["code"] == -32602 and missing["error"]["data"]["param"] == "client_secret"


async def test_missing_unknown_and_expired_tokens_are_unauthorized(ex, clock):
    for token in (None, "made-up"):
        env = await call(ex, "private/get_positions", token, currency="BTC")
        assert env["error"]["code"] == 13009 and env["error"]["message"] == "unauthorized"
    token = await login(ex)
    clock.advance(899)
    assert "result" in await call(ex, "private/get_positions", token, currency="BTC")
    clock.advance(1)  # the exchange's clock, not the wall clock, expires it
    env = await call(ex, "private/get_positions", token, currency="BTC")
    assert env["error"]["code"] == 13009 and "expired" in env["error"]["data"]["reason"]


async def test_refresh_token_grant_rotates_the_refresh_token(ex):
    first = await result(ex, "public/auth", grant_type="client_credentials", client_id="a", client_secret="b")
    second = await result(ex, "public/auth", grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert second["access_token"] != first["access_token"]
    assert "result" in await call(ex, "private/get_positions", second["access_token"], currency="BTC")
    reused = await call(ex, "public/auth", grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert reused["error"]["code"] == 13009


# --- wire format --------------------------------------------------------------------------------


async def test_http_get_and_post_json_rpc_answer_the_same_envelope(ex):
    async with paper_http(ex) as base, httpx.AsyncClient(base_url=base) as http:
        got = await http.get("/api/v2/public/get_index_price", params={"index_name": "btc_usd"})
        posted = await http.post("/api/v2/public/get_index_price", json={
            "jsonrpc": "2.0", "id": 42, "method": "public/get_index_price", "params": {"index_name": "btc_usd"}})
        root = await http.post("/api/v2", json={"jsonrpc": "2.0", "id": 7, "method": "public/get_time", "params": {}})
        unknown = await http.get("/api/v2/public/no_such_method")
        unauthorized = await http.get("/api/v2/private/get_account_summary", params={"currency": "BTC"})
    for resp in (got, posted):
        env = resp.json()
        assert resp.status_code == 200 and env["jsonrpc"] == "2.0" and env["testnet"] is True
        assert env["result"] == {"index_price": 95_000.0, "estimated_delivery_price": 95_000.0}
        assert env["usOut"] >= env["usIn"] and env["usDiff"] == env["usOut"] - env["usIn"]
    assert posted.json()["id"] == 42
    assert root.json()["id"] == 7 and root.json()["result"] == T0_MS
    assert unknown.json()["error"] == {"code": -32601, "message": "Method not found", "data": None}
    assert unauthorized.status_code == 400 and unauthorized.json()["error"]["code"] == 13009


async def test_get_query_strings_are_coerced_and_bad_params_named(ex, clock):
    b = pick(ex, clock)
    async with httpx.AsyncClient(transport=paper_transport(ex), base_url="http://paper") as http:
        token = (await http.get("/api/v2/public/auth", params={
            "grant_type": "client_credentials", "client_id": "a", "client_secret": "b"})).json()["result"]["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        ok = await http.get("/api/v2/private/sell", headers=auth, params={
            "instrument_name": b["instrument_name"], "amount": "0.1", "type": "limit", "price": str(b["bid_price"]),
            "post_only": "false", "reduce_only": "false", "label": "123"})
        bad_bool = await http.get("/api/v2/private/sell", headers=auth, params={
            "instrument_name": b["instrument_name"], "amount": "0.1", "price": "0.01", "post_only": "maybe"})
        missing = await http.get("/api/v2/private/sell", headers=auth, params={"amount": "0.1", "price": "0.01"})
        not_number = await http.get("/api/v2/private/sell", headers=auth, params={
            "instrument_name": b["instrument_name"], "amount": "lots", "price": "0.01"})
        instruments = await http.get("/api/v2/public/get_instruments", params={"currency": "BTC", "kind": "option", "expired": "false"})
    order = ok.json()["result"]["order"]
    assert order["amount"] == 0.1 and order["post_only"] is False and order["label"] == "123"
    assert bad_bool.json()["error"]["code"] == -32602 and bad_bool.json()["error"]["data"]["param"] == "post_only"
    assert missing.json()["error"] == {"code": -32602, "message": "Invalid params",
                                       "data": {"param": "instrument_name", "reason": "required parameter is missing"}}
    assert not_number.json()["error"]["data"]["param"] == "amount"
    assert len(instruments.json()["result"]) == len(ex.markets["BTC"].options)


@pytest.mark.parametrize("http_method", ["GET", "POST"])
async def test_every_method_parses_into_the_client_types_over_http(ex, clock, http_method):
    b = pick(ex, clock)
    name = b["instrument_name"]
    async with paper_http(ex) as base, DeribitClient(base, "id", "secret", http_method=http_method, max_retries=0) as c:
        assert await c.get_time() == T0_MS
        assert isinstance(await c.get_index_price("btc_usd"), IndexPrice)
        instruments = await c.get_instruments("BTC", "option")
        assert all(isinstance(i, Instrument) and i.kind == "option" for i in instruments)
        book = await c.get_book_summary_by_currency("BTC", "option")
        assert len(book) == len(instruments) and all(isinstance(x, BookSummary) for x in book)
        ticker = await c.ticker(name)
        assert isinstance(ticker, Ticker) and ticker.greeks is not None and 0 < ticker.greeks.delta < 1
        sold = await c.sell(name, 0.1, b["bid_price"], label="open-1")
        assert isinstance(sold, OrderResult) and sold.order.order_state == "filled" and len(sold.trades) == 1
        resting = await c.sell(name, 0.1, round_to_tick(b["ask_price"] * 1.5, TICK_SIZE, TICK_STEPS), label="rest-1")
        assert resting.order.order_state == "open" and resting.trades == ()
        assert isinstance(await c.get_order_state(resting.order.order_id), Order)
        assert [o.order_id for o in await c.get_open_orders_by_label("BTC", "rest-1")] == [resting.order.order_id]
        assert [o.order_state for o in await c.get_order_state_by_label("BTC", "open-1")] == ["filled"]
        cancelled = await c.cancel(resting.order.order_id)
        assert cancelled.order_state == "cancelled"
        account = await c.get_account_summary("BTC")
        assert isinstance(account, AccountSummary) and account.initial_margin > 0
        positions = await c.get_positions("BTC", "option")
        assert [(p.instrument_name, p.signed_size) for p in positions] == [(name, -0.1)]
        assert all(isinstance(p, Position) for p in positions)
        closed = await c.buy(name, 0.1, ticker.best_ask_price, label="close-1", reduce_only=True)
        assert closed.order.order_state == "filled"
        trades = await c.get_user_trades_by_instrument(name, count=10, sorting="desc")
        assert isinstance(trades, UserTrades) and [t.direction for t in trades.trades] == ["buy", "sell"]
        assert await c.get_positions("BTC") == []


# --- the market ---------------------------------------------------------------------------------


async def test_chain_has_a_realistic_size_and_deribit_names(ex):
    instruments = [Instrument.model_validate(i) for i in await result(ex, "public/get_instruments", currency="BTC", kind="option")]
    assert 600 <= len(instruments) <= 900
    for inst in instruments:
        m = NAME.match(inst.instrument_name)
        assert m, inst.instrument_name
        exp = datetime.fromtimestamp(inst.expiration_timestamp / 1000, tz=timezone.utc)
        assert (exp.hour, exp.minute, exp.second) == (8, 0, 0)
        assert m.group(1) == str(exp.day) and m.group(2) == exp.strftime("%b").upper() and m.group(3) == exp.strftime("%y")
        assert float(m.group(4)) == inst.strike and (m.group(5) == "C") == (inst.option_type == "call")
        assert (inst.min_trade_amount, inst.contract_size, inst.tick_size, inst.instrument_type) == (0.1, 1.0, 0.0001, "reversed")
        assert inst.tick_size_steps[0].above_price == 0.005 and inst.tick_size_steps[0].tick_size == 0.0005
    eth = await result(ex, "public/get_instruments", currency="ETH", kind="option")
    assert eth and all(i["min_trade_amount"] == 1.0 and i["instrument_name"].startswith("ETH-") for i in eth)
    assert {i["strike"] % 25 for i in eth} == {0.0}


async def test_expiry_calendar_is_deribits(ex):
    instruments = await result(ex, "public/get_instruments", currency="BTC")
    expiries = sorted({i["expiration_timestamp"] for i in instruments})
    dates = [datetime.fromtimestamp(e / 1000, tz=timezone.utc).date() for e in expiries]
    periods = {i["expiration_timestamp"]: i["settlement_period"] for i in instruments}
    first = T0.date() + timedelta(days=1)
    assert dates[:3] == [first, first + timedelta(days=1), first + timedelta(days=2)]  # three dailies
    fridays = [d for d in dates if d.weekday() == 4]
    assert [f for f in fridays if f <= first + timedelta(days=28)][:4] == [
        date for date in (first + timedelta(days=n) for n in range(1, 29)) if date.weekday() == 4][:4]

    def last_friday(d):
        return (d + timedelta(days=7)).month != d.month

    monthlies = [d for d in dates if d.weekday() == 4 and last_friday(d)]
    assert [(d.year, d.month) for d in monthlies[:3]] == [(2026, 11), (2026, 12), (2027, 1)]
    quarterlies = [d for d in monthlies if d.month in (3, 6, 9, 12)]
    assert len(quarterlies) >= 4 and quarterlies[-1] <= first + timedelta(days=370)
    assert all(d.weekday() == 4 for d in dates[3:])  # beyond the dailies, only Fridays
    for e, d in zip(expiries, dates):
        want = "month" if d.weekday() == 4 and last_friday(d) else "week" if d.weekday() == 4 else "day"
        assert periods[e] == want


def test_chain_size_stays_realistic_across_the_year():
    sizes = []
    for day in range(0, 365, 9):
        t = T0_MS + day * DAY_MS
        m = Market.create(MarketParams("BTC", 7, t, 95_000.0))
        m.list_due(t)
        sizes.append(len(m.options))
        assert all(e > t for e in calendar(t))
    assert 600 <= min(sizes) and max(sizes) <= 900


async def test_marks_are_black76_with_quotes_on_the_grid(ex, clock):
    rows = await result(ex, "public/get_book_summary_by_currency", currency="BTC", kind="option")
    inst = {i["instrument_name"]: i for i in await result(ex, "public/get_instruments", currency="BTC")}
    no_bid = 0
    for row in rows:
        b = BookSummary.model_validate(row)
        i = inst[b.instrument_name]
        t = (i["expiration_timestamp"] - clock.now_ms()) / YEAR_MS
        f, k, iv = b.underlying_price, i["strike"], b.mark_iv / 100
        call = call_price_coin(f, k, iv, t)
        expected = call if i["option_type"] == "call" else call - (f - k) / f
        assert b.mark_price == pytest.approx(expected, abs=1e-8)
        assert 25 <= b.mark_iv <= 150
        assert b.ask_price is not None and b.mark_price <= b.ask_price and is_on_grid(b.ask_price, TICK_SIZE, TICK_STEPS)
        if b.bid_price is None:
            no_bid += 1
            assert b.mark_price < 0.0002 and b.mid_price is None
        else:
            assert b.bid_price <= b.mark_price and is_on_grid(b.bid_price, TICK_SIZE, TICK_STEPS)
            assert b.mid_price == pytest.approx((b.bid_price + b.ask_price) / 2)
        assert row["underlying_index"] == ("index_price" if i["settlement_period"] == "day" else "BTC-" + b.instrument_name.split("-")[1])
        assert row["quote_currency"] == "BTC" and row["interest_rate"] == 0.0
    assert no_bid > 0  # deep out of the money: no bid, as on Deribit


async def test_smile_term_structure_and_open_interest(ex, clock):
    rows = {r["instrument_name"]: r for r in books(ex, clock)}
    week = [r for n, r in rows.items() if "-4DEC26-" in n and n.endswith("-C")]
    atm = min(week, key=lambda r: abs(float(r["instrument_name"].split("-")[2]) - r["underlying_price"]))
    wing = max(week, key=lambda r: float(r["instrument_name"].split("-")[2]))
    assert 45 <= atm["mark_iv"] <= 60 and wing["mark_iv"] > atm["mark_iv"]
    assert max(r["open_interest"] for r in week) == max(atm["open_interest"], *(r["open_interest"] for r in week))
    assert any(r["open_interest"] < 50 for r in rows.values())
    assert wing["open_interest"] < atm["open_interest"]
    again = PaperExchange(clock=SimClock(start_ms=T0_MS), state_path=None)
    assert {r["instrument_name"]: r["open_interest"] for r in books(again, clock)} == {n: r["open_interest"] for n, r in rows.items()}


def test_bid_ask_is_on_grid_and_brackets_mark():
    for i in range(1, 6000):
        mark = i * 0.0000731
        bid, ask = bid_ask(mark)
        assert ask >= mark and is_on_grid(ask, TICK_SIZE, TICK_STEPS)
        if bid is not None:
            assert bid <= mark < ask and is_on_grid(bid, TICK_SIZE, TICK_STEPS)
            assert bid == round_to_tick(bid, TICK_SIZE, TICK_STEPS, side="buy")
        else:
            assert mark < 0.0002


def test_spot_path_is_seeded_and_independent_of_sampling():
    a = Market.create(MarketParams("BTC", 7, T0_MS, 95_000.0))
    b = Market.create(MarketParams("BTC", 7, T0_MS, 95_000.0))
    other = Market.create(MarketParams("BTC", 8, T0_MS, 95_000.0))
    late = T0_MS + 300 * DAY_MS + 123_456
    hourly = [a.path.spot(T0_MS + h * 3_600_000) for h in range(24 * 60)]
    assert b.path.spot(late) == a.path.spot(late)  # b jumps straight there, a walked
    assert [b.path.spot(T0_MS + h * 3_600_000) for h in range(0, 24 * 60, 97)] == hourly[::97]
    assert other.path.spot(late) != a.path.spot(late)
    rets = [math.log(hourly[i + 1] / hourly[i]) for i in range(len(hourly) - 1)]
    vol = (sum(r * r for r in rets) / len(rets) * 24 * 365) ** 0.5
    assert 0.4 < vol < 0.6


async def test_ticker_and_unknown_instruments(ex, clock):
    b = pick(ex, clock)
    t = Ticker.model_validate(await result(ex, "public/ticker", instrument_name=b["instrument_name"]))
    assert (t.best_bid_price, t.best_ask_price, t.mark_price, t.state) == (b["bid_price"], b["ask_price"], b["mark_price"], "open")
    assert t.bid_iv <= t.mark_iv <= t.ask_iv
    env = await call(ex, "public/ticker", instrument_name="BTC-1JAN20-1000-C")
    assert env["error"]["code"] == 13020 and env["error"]["message"] == "not_found"
    token = await login(ex)
    env = await call(ex, "private/sell", token, instrument_name="BTC-1JAN20-1000-C", amount=0.1, price=0.01)
    assert env["error"]["code"] == 10020 and env["error"]["data"]["instrument_name"] == "BTC-1JAN20-1000-C"


# --- fault injection ------------------------------------------------------------------------------


async def test_fail_next_answers_the_error_count_times(ex):
    ex.faults.fail_next("public/get_time", 10028, count=2)
    codes = [(await call(ex, "public/get_time")).get("error", {}).get("code") for _ in range(3)]
    assert codes == [10028, 10028, None]
    async with paper_http(ex) as base, DeribitClient(base, "id", "s", max_retries=3, backoff_base_s=0.001) as c:
        ex.faults.fail_next("public/get_time", 10028, count=2)
        assert await c.get_time() == T0_MS  # the client retried through it
        ex.faults.fail_next("private/sell", 11050, message="bad_request", data={"why": "test"})
        with pytest.raises(BadRequest):
            await c.sell("BTC-26NOV26-95000-C", 0.1, 0.01)


async def test_latency_delays_answers(ex):
    ex.faults.add_latency(0.05, "public/get_time")
    start = time.perf_counter()
    await call(ex, "public/get_time")
    assert time.perf_counter() - start >= 0.05
    start = time.perf_counter()
    await call(ex, "public/test")
    assert time.perf_counter() - start < 0.05
    ex.faults.add_latency(0.3)  # every method now
    async with paper_http(ex) as base, DeribitClient(base, "id", "s", timeout=0.05, max_retries=0) as c:
        with pytest.raises(TransportError, match="timeout"):
            await c.get_time()
        ex.faults.clear()
        assert await c.get_time() == T0_MS


async def test_drop_in_process_and_over_http(ex, clock):
    async with httpx.AsyncClient(transport=paper_transport(ex), base_url="http://paper") as http:
        ex.faults.drop_next("public/get_time")
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/api/v2/public/get_time")
        assert (await http.get("/api/v2/public/get_time")).json()["result"] == T0_MS
    b = pick(ex, clock)
    async with paper_http(ex) as base, DeribitClient(base, "id", "s", max_retries=0) as c:
        ex.faults.drop_next("public/get_time")
        with pytest.raises(TransportError):
            await c.get_time()
        # Dropped after the work is done: the order exists though the client never heard back.
        ex.faults.drop_next("private/sell", after_processing=True)
        with pytest.raises(TransportError):
            await c.sell(b["instrument_name"], 0.1, b["bid_price"], label="lost-answer")
        (found,) = await c.get_order_state_by_label("BTC", "lost-answer")
        assert found.order_state == "filled"


async def test_bare_http_status_without_json(ex):
    async with paper_http(ex) as base:
        ex.faults.http_status_next("public/get_time", 502, count=1)
        async with httpx.AsyncClient(base_url=base) as http:
            resp = await http.get("/api/v2/public/get_time")
            assert resp.status_code == 502 and resp.headers["content-type"].startswith("text/plain")
            with pytest.raises(json.JSONDecodeError):
                resp.json()
        async with DeribitClient(base, "id", "s", max_retries=0) as c:
            ex.faults.http_status_next("public/get_time", 503)
            with pytest.raises(TransportError, match="503"):
                await c.get_time()
            assert await c.get_time() == T0_MS
    async with httpx.AsyncClient(transport=paper_transport(ex), base_url="http://paper") as http:
        ex.faults.http_status_next("*", 504)
        assert (await http.get("/api/v2/public/test")).status_code == 504


# --- serving --------------------------------------------------------------------------------------


def test_run_server_prints_its_address_and_serves(tmp_path):
    code = ("from agent.deribit.paper import PaperExchange; from agent.deribit.paper_server import run_server; "
            "run_server(PaperExchange(state_path=None), '127.0.0.1', 0)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path.parent)
    try:
        line = proc.stdout.readline().strip()  # type: ignore[union-attr]
        m = re.fullmatch(r"paper exchange listening on http://127\.0\.0\.1:(\d+)", line)
        assert m, line
        resp = httpx.get(f"http://127.0.0.1:{m.group(1)}/api/v2/public/get_time", timeout=5)
        assert isinstance(resp.json()["result"], int)
    finally:
        proc.terminate()
        proc.wait(timeout=5)


async def test_book_summary_is_cached_per_millisecond(ex, clock):
    first = await result(ex, "public/get_book_summary_by_currency", currency="BTC")
    assert await result(ex, "public/get_book_summary_by_currency", currency="BTC") is first
    clock.advance(0.001)
    assert await result(ex, "public/get_book_summary_by_currency", currency="BTC") is not first
    ex.shock(1)
    moved = await result(ex, "public/get_book_summary_by_currency", currency="BTC")
    assert moved[0]["underlying_price"] > first[0]["underlying_price"]
