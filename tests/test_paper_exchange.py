"""The paper exchange speaks Deribit's wire protocol: over real HTTP (GET and POST JSON-RPC) and in process.

Time is a SimClock, so expiry, settlement and resting fills are driven by `clock.advance`.
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
from agent.deribit.paper import PaperExchange, fee_for
from agent.deribit.paper_market import (
    DAY_MS,
    TICK_SIZE,
    TICK_STEPS,
    YEAR_MS,
    Market,
    MarketParams,
    bid_ask,
    calendar,
)
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

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)  # a Wednesday
T0_MS = int(T0.timestamp() * 1000)
NAME = re.compile(r"^BTC-([1-9]\d?)([A-Z]{3})(\d{2})-(\d+)-([CP])$")


@pytest.fixture
def clock() -> SimClock:
    return SimClock(start_ms=T0_MS)


@pytest.fixture
def ex(clock: SimClock) -> PaperExchange:
    return PaperExchange(clock=clock, state_path=None)


async def call(ex: PaperExchange, method: str, token: str | None = None, **params):
    """One JSON-RPC call in process; returns the envelope."""
    return await ex.handle(method, params, token, request_id=1)


async def result(ex: PaperExchange, method: str, token: str | None = None, **params):
    env = await call(ex, method, token, **params)
    assert "error" not in env, env
    return env["result"]


async def login(ex: PaperExchange) -> str:
    r = await result(ex, "public/auth", grant_type="client_credentials", client_id="id", client_secret="secret")
    return r["access_token"]


def books(ex: PaperExchange, clock: SimClock) -> list[dict]:
    m = ex.markets["BTC"]
    return m.summaries(clock.now_ms(), m.spot(clock.now_ms()))


def pick(ex: PaperExchange, clock: SimClock, *, expiry: str | None = None, kind: str = "C",
         lo: float = 0.005, hi: float = 0.05) -> dict:
    """A book row with a bid in [lo, hi]: something that trades."""
    for b in books(ex, clock):
        n = b["instrument_name"]
        if n.endswith("-" + kind) and (expiry is None or f"-{expiry}-" in n) and b["bid_price"] and lo <= b["bid_price"] <= hi:
            return b
    raise AssertionError("no such option")


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


# --- orders -------------------------------------------------------------------------------------


async def test_order_validation_errors(ex, clock):
    token = await login(ex)
    b = pick(ex, clock)
    name = b["instrument_name"]
    cases = {
        10043: dict(amount=0.1, price=0.00512),  # above 0.005 the tick is 0.0005
        10002: dict(amount=0.05, price=0.01),
        10021: dict(amount=0.15, price=0.01),
        11050: dict(amount=0.1, price=0.01, type="market"),
        -32602: dict(amount=0.1, price=0.01, label="x" * 65),
    }
    for code, params in cases.items():
        env = await call(ex, "private/sell", token, instrument_name=name, **params)
        assert env["error"]["code"] == code, (code, env)
    assert await result(ex, "private/get_open_orders_by_currency", token, currency="BTC") == []


async def test_not_enough_funds(ex, clock):
    token = await login(ex)
    b = pick(ex, clock)
    env = await call(ex, "private/sell", token, instrument_name=b["instrument_name"], amount=10.0, price=b["bid_price"])
    assert env["error"]["code"] == 10009 and env["error"]["message"] == "not_enough_funds"
    dear = pick(ex, clock, lo=0.1, hi=0.5)
    env = await call(ex, "private/buy", token, instrument_name=dear["instrument_name"], amount=20.0, price=dear["ask_price"])
    assert env["error"]["code"] == 10009
    summary = await result(ex, "private/get_account_summary", token, currency="BTC")
    assert summary["balance"] == 1.0 and summary["initial_margin"] == 0.0


async def test_sell_at_the_bid_fills_now_and_charges_the_fee(ex, clock):
    token = await login(ex)
    b = pick(ex, clock)
    below = round_to_tick(b["bid_price"] * 0.8, TICK_SIZE, TICK_STEPS, side="sell")
    r = await result(ex, "private/sell", token, instrument_name=b["instrument_name"], amount=0.3, price=below, label="L")
    order, trade = r["order"], r["trades"][0]
    assert (order["order_state"], order["filled_amount"], order["average_price"]) == ("filled", 0.3, b["bid_price"])
    assert order["order_id"].startswith("BTC-") and order["api"] is True and order["order_type"] == "limit"
    assert (trade["price"], trade["liquidity"], trade["amount"]) == (b["bid_price"], "T", 0.3)  # price improvement
    assert trade["fee"] == pytest.approx(min(0.0003 * 0.3, 0.125 * b["bid_price"] * 0.3))
    s = await result(ex, "private/get_account_summary", token, currency="BTC")
    assert s["balance"] == pytest.approx(1.0 + 0.3 * b["bid_price"] - trade["fee"])
    assert s["equity"] == pytest.approx(s["balance"] - 0.3 * b["mark_price"])
    strike, fwd = float(b["instrument_name"].split("-")[2]), b["underlying_price"]
    im = 0.3 * (max(0.15 - max(strike - fwd, 0) / fwd, 0.1) + b["mark_price"])
    assert s["initial_margin"] == pytest.approx(im) and s["maintenance_margin"] == pytest.approx(0.3 * (0.075 + b["mark_price"]))
    assert s["available_funds"] == pytest.approx(s["equity"] - s["initial_margin"])
    (pos,) = await result(ex, "private/get_positions", token, currency="BTC", kind="option")
    assert (pos["size"], pos["direction"], pos["average_price"]) == (-0.3, "sell", b["bid_price"])
    assert s["options_delta"] == pytest.approx(pos["delta"]) and pos["delta"] < 0


def test_fee_is_capped_at_an_eighth_of_the_premium():
    assert fee_for(1.0, 0.01) == pytest.approx(0.0003)
    assert fee_for(1.0, 0.0002) == pytest.approx(0.000025)  # 12.5 % of 0.0002


async def test_resting_sell_fills_when_the_market_reaches_it(ex, clock):
    token = await login(ex)
    b = pick(ex, clock, expiry="4DEC26")
    price = round_to_tick(b["ask_price"] * 1.3, TICK_SIZE, TICK_STEPS, side="sell")
    r = await result(ex, "private/sell", token, instrument_name=b["instrument_name"], amount=0.2, price=price, label="rest")
    assert r["order"]["order_state"] == "open" and r["trades"] == []
    s = await result(ex, "private/get_account_summary", token, currency="BTC")
    assert s["initial_margin"] > 0 and s["balance"] == 1.0  # the order reserves margin, moves no money
    clock.advance(600)
    ex.shock(+6)  # calls rally
    state = await result(ex, "private/get_order_state", token, order_id=r["order"]["order_id"])
    assert (state["order_state"], state["average_price"]) == ("filled", price)
    trades = await result(ex, "private/get_user_trades_by_instrument", token, instrument_name=b["instrument_name"])
    assert [(t["price"], t["liquidity"], t["order_id"]) for t in trades["trades"]] == [(price, "M", r["order"]["order_id"])]


async def test_post_only_ioc_and_fok(ex, clock):
    token = await login(ex)
    b = pick(ex, clock)
    name, away = b["instrument_name"], round_to_tick(b["ask_price"] * 2, TICK_SIZE, TICK_STEPS)
    env = await call(ex, "private/sell", token, instrument_name=name, amount=0.1, price=b["bid_price"], post_only=True)
    assert env["error"]["code"] == 11054
    for tif in ("immediate_or_cancel", "fill_or_kill"):
        r = await result(ex, "private/sell", token, instrument_name=name, amount=0.1, price=away, time_in_force=tif)
        assert (r["order"]["order_state"], r["order"]["filled_amount"], r["trades"]) == ("cancelled", 0.0, [])
    r = await result(ex, "private/sell", token, instrument_name=name, amount=0.1, price=away, post_only=True)
    assert r["order"]["order_state"] == "open"


async def test_cancel_and_label_lookups(ex, clock):
    token = await login(ex)
    b = pick(ex, clock)
    away = round_to_tick(b["ask_price"] * 2, TICK_SIZE, TICK_STEPS)
    first = (await result(ex, "private/sell", token, instrument_name=b["instrument_name"], amount=0.1, price=away, label="p-1"))["order"]
    await result(ex, "private/sell", token, instrument_name=b["instrument_name"], amount=0.1, price=away, label="other")
    assert [o["order_id"] for o in await result(ex, "private/get_open_orders_by_label", token, currency="BTC", label="p-1")] == [first["order_id"]]
    cancelled = await result(ex, "private/cancel", token, order_id=first["order_id"])
    assert cancelled["order_state"] == "cancelled" and cancelled["order_id"] == first["order_id"]
    assert await result(ex, "private/get_open_orders_by_label", token, currency="BTC", label="p-1") == []
    by_label = await result(ex, "private/get_order_state_by_label", token, currency="BTC", label="p-1")
    assert [(o["order_id"], o["order_state"]) for o in by_label] == [(first["order_id"], "cancelled")]
    again = await call(ex, "private/cancel", token, order_id=first["order_id"])
    assert again["error"]["code"] == 11050
    unknown = await call(ex, "private/get_order_state", token, order_id="BTC-999999")
    assert unknown["error"]["code"] == 10004 and unknown["error"]["message"] == "order_not_found"
    assert (await call(ex, "private/cancel", token, order_id="nope"))["error"]["code"] == 10004
    assert await result(ex, "private/cancel_by_label", token, label="other", currency="BTC") == 1


async def test_reduce_only_trims_to_the_open_short_and_rejects_without_one(ex, clock):
    token = await login(ex)
    b = pick(ex, clock)
    name = b["instrument_name"]
    env = await call(ex, "private/buy", token, instrument_name=name, amount=0.1, price=b["ask_price"], reduce_only=True)
    assert env["error"]["code"] == 11050
    await result(ex, "private/sell", token, instrument_name=name, amount=0.2, price=b["bid_price"])
    r = await result(ex, "private/buy", token, instrument_name=name, amount=0.5, price=b["ask_price"], reduce_only=True)
    assert (r["order"]["amount"], r["order"]["order_state"]) == (0.2, "filled")
    assert await result(ex, "private/get_positions", token, currency="BTC") == []


async def test_user_trades_sorting_and_has_more(ex, clock):
    token = await login(ex)
    b = pick(ex, clock)
    for _ in range(3):
        await result(ex, "private/sell", token, instrument_name=b["instrument_name"], amount=0.1, price=b["bid_price"])
        clock.advance(1)
    desc = await result(ex, "private/get_user_trades_by_instrument", token, instrument_name=b["instrument_name"], count=2, sorting="desc")
    asc = await result(ex, "private/get_user_trades_by_instrument", token, instrument_name=b["instrument_name"], count=5, sorting="asc")
    assert desc["has_more"] is True and len(desc["trades"]) == 2 and asc["has_more"] is False
    assert [t["trade_seq"] for t in asc["trades"]] == [1, 2, 3] and [t["trade_seq"] for t in desc["trades"]] == [3, 2]


# --- time: settlement and listing -----------------------------------------------------------------


async def test_settlement_pays_itm_short_calls_and_removes_positions(ex, clock):
    token = await login(ex)
    expiry = "26NOV26"
    itm = next(b for b in books(ex, clock) if b["instrument_name"] == f"BTC-{expiry}-90000-C")
    otm = next(b for b in books(ex, clock) if b["instrument_name"] == f"BTC-{expiry}-95000-C")
    for b in (itm, otm):
        await result(ex, "private/sell", token, instrument_name=b["instrument_name"], amount=0.1, price=b["bid_price"])
    resting = (await result(ex, "private/sell", token, instrument_name=otm["instrument_name"], amount=0.1, price=0.5))["order"]
    expiry_ms = int(datetime(2026, 11, 26, 8, tzinfo=timezone.utc).timestamp() * 1000)
    clock.advance((expiry_ms - clock.now_ms()) / 1000 - 40 * 60)
    ex.set_index(93_000)  # the 90000 call ends in the money, the 95000 call out of it
    clock.advance(39 * 60)
    token = await login(ex)  # hours later: the old token has expired
    before = (await result(ex, "private/get_account_summary", token, currency="BTC"))["balance"]
    clock.advance(120)
    after = await result(ex, "private/get_account_summary", token, currency="BTC")
    rows = (await result(ex, "private/get_settlement_history_by_currency", token, currency="BTC"))["settlements"]
    paid = {r["instrument_name"]: r for r in rows}
    row = paid[itm["instrument_name"]]
    s = row["index_price"]
    path = ex.markets["BTC"].path
    assert s == pytest.approx(sum(path.spot(expiry_ms - 1_800_000 + i * 60_000) for i in range(30)) / 30, abs=0.01)
    assert s == pytest.approx(93_000, rel=0.015)
    assert row["position"] == -0.1 and row["mark_price"] == pytest.approx((s - 90_000) / s)
    assert paid[otm["instrument_name"]]["mark_price"] == 0 and paid[otm["instrument_name"]]["cash_flow"] == 0
    assert after["balance"] == pytest.approx(before - 0.1 * (s - 90_000) / s)
    assert after["initial_margin"] == 0 and await result(ex, "private/get_positions", token, currency="BTC") == []
    assert (await result(ex, "private/get_order_state", token, order_id=resting["order_id"]))["order_state"] == "cancelled"
    names = {i["instrument_name"] for i in await result(ex, "public/get_instruments", currency="BTC")}
    assert not any(f"-{expiry}-" in n for n in names)
    expired = await result(ex, "public/get_instruments", currency="BTC", expired=True)
    assert itm["instrument_name"] in {i["instrument_name"] for i in expired}
    env = await call(ex, "private/sell", token, instrument_name=itm["instrument_name"], amount=0.1, price=0.01)
    assert env["error"]["code"] == 10020


async def test_new_expiries_list_as_time_passes(ex, clock):
    before = {i["expiration_timestamp"] for i in await result(ex, "public/get_instruments", currency="BTC")}
    clock.advance(3 * 86_400)
    after_rows = await result(ex, "public/get_instruments", currency="BTC")
    after = {i["expiration_timestamp"] for i in after_rows}
    now = clock.now_ms()
    assert min(after) > now and min(before) <= now
    assert sorted(after)[:3] == [e for e in calendar(now)][:3]  # three fresh dailies
    new = [i for i in after_rows if i["expiration_timestamp"] not in before]
    assert new and all(i["creation_timestamp"] > T0_MS for i in new)


# --- persistence ----------------------------------------------------------------------------------


async def test_state_survives_a_restart_and_reset_starts_fresh(tmp_path, clock):
    path = tmp_path / "paper.json"
    ex = PaperExchange(clock=clock, state_path=path)
    token = await login(ex)
    b = pick(ex, clock)
    await result(ex, "private/sell", token, instrument_name=b["instrument_name"], amount=0.1, price=b["bid_price"], label="a")
    away = round_to_tick(b["ask_price"] * 2, TICK_SIZE, TICK_STEPS)
    rest = (await result(ex, "private/sell", token, instrument_name=b["instrument_name"], amount=0.1, price=away, label="b"))["order"]
    ex.shock(-3)
    summary = await result(ex, "private/get_account_summary", token, currency="BTC")
    index = ex.index_price()
    assert json.loads(path.read_text())["version"] == 1

    again = PaperExchange(clock=clock, state_path=path, seed=99, initial_equity=5.0)  # stored params win
    assert (await call(again, "private/get_account_summary", token, currency="BTC"))["error"]["code"] == 13009
    token2 = await login(again)
    assert await result(again, "private/get_account_summary", token2, currency="BTC") == summary
    assert again.index_price() == index
    assert [o["order_id"] for o in await result(again, "private/get_open_orders_by_label", token2, currency="BTC", label="b")] == [rest["order_id"]]
    clock.advance(3600)
    assert again.markets["BTC"].path.spot(clock.now_ms()) == ex.markets["BTC"].path.spot(clock.now_ms())
    token2 = await login(again)
    nxt = await result(again, "private/sell", token2, instrument_name=b["instrument_name"], amount=0.1, price=away)
    assert int(nxt["order"]["order_id"].split("-")[1]) == int(rest["order_id"].split("-")[1]) + 1

    fresh = PaperExchange(clock=clock, state_path=path, reset=True)
    token3 = await login(fresh)
    assert (await result(fresh, "private/get_account_summary", token3, currency="BTC"))["equity"] == 1.0
    assert await result(fresh, "private/get_order_state_by_label", token3, currency="BTC", label="a") == []
    assert json.loads(path.read_text())["accounts"]["BTC"]["positions"] == {}


def test_unreadable_state_file_says_what_to_do(tmp_path, clock):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="reset"):
        PaperExchange(clock=clock, state_path=path)


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
