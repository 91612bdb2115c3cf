"""Black-76 in coin terms and tick rounding, cross-checked against the maintained vollib."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st
from vollib.black import black
from vollib.black.greeks.analytical import delta as vl_delta

from agent.pricing import (
    call_delta,
    call_price_coin,
    call_price_usd,
    is_on_grid,
    round_to_tick,
    strike_for_delta,
)

STEPS = [{"above_price": 0.005, "tick_size": 0.0005}]


@given(st.floats(20_000, 200_000), st.floats(0.5, 1.8), st.floats(0.1, 1.5), st.floats(1 / 365, 1.0))
def test_black76_matches_vollib(fwd, moneyness, vol, t):
    k = fwd * moneyness
    ref = black("c", fwd, k, t, 0.0, vol)
    assert call_price_usd(fwd, k, vol, t) == pytest.approx(ref, rel=1e-6, abs=1e-6)
    assert call_price_coin(fwd, k, vol, t) == pytest.approx(ref / fwd, rel=1e-6, abs=1e-9)
    assert call_delta(fwd, k, vol, t) == pytest.approx(vl_delta("c", fwd, k, t, 0.0, vol), abs=1e-7)


@given(st.floats(0.05, 0.95), st.floats(0.2, 1.2), st.floats(2 / 365, 0.5))
def test_strike_for_delta_inverts_delta(d, vol, t):
    k = strike_for_delta(95_000, d, vol, t)
    assert call_delta(95_000, k, vol, t) == pytest.approx(d, abs=1e-9)


def test_strike_for_delta_rejects_out_of_range():
    with pytest.raises(ValueError):
        strike_for_delta(95_000, 1.2, 0.5, 0.1)


@pytest.mark.parametrize(
    "price,side,expected",
    [
        (0.00123, "sell", 0.0013),
        (0.00123, "buy", 0.0012),
        (0.0123, "sell", 0.0125),
        (0.0123, "buy", 0.012),
        (0.00498, "sell", 0.005),  # stays on the fine grid at the boundary
        (0.00504, "sell", 0.0055),
        (0.00504, "buy", 0.005),
        (0.0125, "sell", 0.0125),  # already on the grid: unchanged
    ],
)
def test_round_to_tick(price, side, expected):
    got = round_to_tick(price, 0.0001, STEPS, side=side)
    assert got == pytest.approx(expected, abs=1e-12)
    assert is_on_grid(got, 0.0001, STEPS)


@given(st.floats(0.0001, 0.5))
def test_rounding_keeps_the_order_inside_its_limit(p):
    up = round_to_tick(p, 0.0001, STEPS, side="sell")
    down = round_to_tick(p, 0.0001, STEPS, side="buy")
    assert up >= p - 1e-12 and down <= p + 1e-12
    assert is_on_grid(up, 0.0001, STEPS) and is_on_grid(down, 0.0001, STEPS)


def test_off_grid_detected():
    assert not is_on_grid(0.0123, 0.0001, STEPS)
    assert is_on_grid(0.0034, 0.0001, STEPS)
