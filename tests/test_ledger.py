"""agent/ledger.py: cycles, P&L parts and the equity check, on hand-made exchange records (pure)."""

from __future__ import annotations

import pytest

from agent.ledger import (EQUITY_TOLERANCE, Fill, Mark, Settlement, Snapshot, cycles, fill_from_trade, pnl,
                          positions, reconcile, settlement_from_wire, snapshot_before)

H = 3_600_000
A = "BTC-4DEC26-100000-C"
B = "BTC-11DEC26-105000-C"


def fill(tid, ts, name, direction, amount, price, label="", index=95_000.0):
    fee = min(0.0003 * amount, 0.125 * price * amount)
    return Fill(trade_id=tid, timestamp=ts, instrument_name=name, direction=direction, amount=amount, price=price,
                fee=fee, order_id=f"o{tid}", label=label, index_price=index)


def test_from_the_wire():
    f = fill_from_trade({"trade_id": 7, "timestamp": 1, "instrument_name": A, "direction": "sell", "amount": 0.1,
                         "price": 0.01, "fee": 0.00003, "order_id": 99, "label": "cc-1", "index_price": 95_000})
    assert (f.trade_id, f.order_id, f.signed_amount) == ("7", "99", -0.1)
    assert f.cash_flow == pytest.approx(0.1 * 0.01 - 0.00003)
    s = settlement_from_wire({"type": "delivery", "timestamp": 5, "instrument_name": A, "position": -0.1,
                              "mark_price": 0.05, "index_price": 105_263.0})
    assert s is not None and s.cash_flow == pytest.approx(-0.005) and s.in_the_money
    assert settlement_from_wire({"type": "settlement", "timestamp": 5, "instrument_name": A}) is None


def test_a_leg_that_expires_in_the_money_pays_the_settlement():
    start = Snapshot(0, equity=1.0, spot=95_000)
    fs = [fill("1", 1 * H, A, "sell", 0.1, 0.01)]
    ss = [Settlement(A, 10 * H, position=-0.1, payoff=0.05, delivery_price=105_263.0)]
    end = Snapshot(11 * H, equity=1.0 + 0.001 - fs[0].fee - 0.005, spot=105_263.0)
    p = pnl(fs, ss, start, end)
    assert p.premium == pytest.approx(0.001) and p.settlement_cash == pytest.approx(-0.005)
    assert p.pnl_coin == pytest.approx(0.001 - 0.00003 - 0.005)
    assert p.realized_coin == pytest.approx(p.pnl_coin) and p.unrealized_coin == 0
    assert abs(p.check_diff) <= EQUITY_TOLERANCE and p.check_ok
    (c,) = p.cycles
    assert (c.end, c.closed_at, c.size) == ("expiry_itm", 10 * H, -0.1)
    # USD: premium at the fill's index, the settlement at the delivery price.
    assert c.pnl_usd == pytest.approx((0.001 - 0.00003) * 95_000 - 0.005 * 105_263.0)
    assert p.vs_hodl_usd == pytest.approx(p.pnl_coin * 105_263.0)
    assert p.hodl_usd == pytest.approx(1.0 * 105_263.0)


def test_out_of_the_money_expiry_keeps_the_premium_and_an_open_leg_is_unrealized():
    start = Snapshot(0, equity=1.0, spot=95_000)
    fs = [fill("1", H, A, "sell", 0.1, 0.01), fill("2", 11 * H, B, "sell", 0.1, 0.008)]
    ss = [Settlement(A, 10 * H, position=-0.1, payoff=0.0, delivery_price=96_000.0)]
    end = Snapshot(12 * H, equity=0, spot=96_500, marks=(Mark(B, -0.1, 0.006),))
    cash = sum(f.cash_flow for f in fs)
    end = Snapshot(end.timestamp, equity=1.0 + cash - 0.0006, spot=end.spot, marks=end.marks)
    p = pnl(fs, ss, start, end)
    a, b = p.cycles
    assert a.end == "expiry_otm" and a.pnl_coin == pytest.approx(0.001 - fs[0].fee)
    assert b.is_open and b.open_value == pytest.approx(-0.0006)
    assert p.unrealized_coin == pytest.approx(0.0008 - fs[1].fee - 0.0006)
    assert p.realized_coin + p.unrealized_coin == pytest.approx(p.pnl_coin)
    assert p.check_ok


def test_a_buy_back_with_a_sale_is_a_roll_and_a_lone_buy_back_a_close():
    fs = [fill("1", H, A, "sell", 0.1, 0.01, "cc-1"), fill("2", 30 * H, A, "buy", 0.1, 0.03, "cc-2-close"),
          fill("3", 30 * H + 1000, B, "sell", 0.1, 0.032, "cc-2-open"), fill("4", 50 * H, B, "buy", 0.1, 0.002, "cc-3")]
    legs = cycles(fs, [])
    assert [c.end for c in legs] == ["roll", "close"]
    assert legs[0].pnl_coin == pytest.approx(0.001 - 0.003 - legs[0].fees)
    assert positions(fs, []) == {}
    assert positions(fs[:3], []) == {B: -0.1}


def test_a_window_starts_from_the_marks_of_its_first_snapshot():
    # Sold before the window: the window's P&L is the change of that liability plus its own flows.
    fs = [fill("1", H, A, "sell", 0.1, 0.01)]
    s0 = Snapshot(0, equity=1.0, spot=95_000)
    s1 = Snapshot(5 * H, equity=1.0 + fs[0].cash_flow - 0.0008, spot=95_500, marks=(Mark(A, -0.1, 0.008),))
    s2 = Snapshot(9 * H, equity=1.0 + fs[0].cash_flow - 0.0003, spot=95_100, marks=(Mark(A, -0.1, 0.003),))
    p = pnl(fs, [], s1, s2)
    assert p.fills == 0 and p.pnl_coin == pytest.approx(0.0005)
    assert p.check_ok and p.unrealized_coin == pytest.approx(0.0005)
    assert snapshot_before([s0, s1, s2], 6 * H) is s1
    assert snapshot_before([s1, s2], 0) is s1  # before the baseline: the baseline


def test_the_check_reports_what_the_records_do_not_explain():
    start = Snapshot(0, equity=1.0, spot=95_000)
    end = Snapshot(H, equity=1.5, spot=95_000)  # a deposit of 0.5
    p = pnl([], [], start, end)
    assert p.check_diff == pytest.approx(-0.5) and not p.check_ok
    d = p.to_dict()
    assert d["check"]["ok"] is False and d["check"]["difference"] == pytest.approx(-0.5)


def test_reconcile_names_each_difference():
    assert reconcile({A: -0.1}, {A: -0.1}) == []
    assert reconcile({A: -0.1}, {A: -0.2, B: -0.1}) == [f"{B}: ledger +0, exchange -0.1", f"{A}: ledger -0.1, exchange -0.2"]
