"""The paper exchange's orders: validation, funds, fills and fees, resting orders, post-only/IOC/FOK,
cancels and label lookups, reduce-only, trade history; settlement and new listings as time passes; its
state across a restart. (Auth, the wire format and the market: tests/test_paper_exchange.py.)

Time is a SimClock, so expiry, settlement and resting fills are driven by `clock.advance`.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from agent.deribit.paper import PaperExchange, fee_for
from agent.deribit.paper_market import TICK_SIZE, TICK_STEPS, calendar
from agent.pricing import round_to_tick
from tests.paper_helpers import T0_MS, books, call, clock, ex, login, pick, result  # noqa: F401 (clock, ex: fixtures)


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
