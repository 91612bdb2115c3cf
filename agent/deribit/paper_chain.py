"""Pricing a whole expiry at once: the smile, Black-76 and the quotes, as arrays.

The book summary prices every listed option every tick; done one option at a time in Python that is
most of a backtest's time. Here each expiry is priced in a handful of numpy operations, and the
single-option quote (`Market.quote`) reads the same table, so the book, the ticker and the matching
engine always agree to the last digit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_SQRT2 = math.sqrt(2.0)
_erf = np.frompyfunc(math.erf, 1, 1)

# Deribit's tick grid in "pips" of 0.0001 (see paper_market.bid_ask, whose rules these are).
_PIPS_PER_COIN = 10_000
_COARSE_ABOVE_PIPS = 50
_COARSE_PIPS = 5
_NO_BID_BELOW = 0.0002
_HALF_SPREAD = 0.035


def norm_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(x / _SQRT2).astype(float))


@dataclass(frozen=True)
class ExpiryTable:
    """Every option of one expiry at one instant, in the order of `strikes` (calls) and puts beside."""

    forward: float
    t_years: float
    iv_pct: list[float]
    call_mark: list[float]
    call_bid: list[float | None]
    call_ask: list[float]
    put_mark: list[float]
    put_bid: list[float | None]
    put_ask: list[float]
    index: dict[float, int]


def smile_array(atm: float, forward: float, strikes: np.ndarray, t_years: float, skew: float,
                curvature: float) -> np.ndarray:
    m = np.log(strikes / forward) / math.sqrt(max(t_years, 1.0 / (365 * 24)))
    m = np.clip(m, -3.0, 3.0)
    return np.clip(atm * (1.0 + skew * m + curvature * m * m), 0.05, 3.0)


def call_coin_array(forward: float, strikes: np.ndarray, vols: np.ndarray, t_years: float) -> np.ndarray:
    """Black-76 call premiums in coin (undiscounted), as agent.pricing.call_price_coin."""
    sd = vols * math.sqrt(t_years)
    d1 = (np.log(forward / strikes) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    return (forward * norm_cdf(d1) - strikes * norm_cdf(d2)) / forward


def bid_ask_array(marks: np.ndarray) -> tuple[list[float | None], list[float]]:
    """paper_market.bid_ask on a whole array (the same rules, the same results)."""
    pips = marks * _PIPS_PER_COIN
    tick = np.where(pips > _COARSE_ABOVE_PIPS, _COARSE_PIPS, 1)
    n = np.maximum(1, np.round(2 * _HALF_SPREAD * pips / tick))
    lo = pips - (n - 1) * tick / 2
    t_lo = np.where(lo > _COARSE_ABOVE_PIPS, _COARSE_PIPS, 1)
    bid = np.floor(lo / t_lo + 1e-9) * t_lo
    hi = np.maximum(bid + n * tick, pips)
    t_hi = np.where(hi > _COARSE_ABOVE_PIPS, _COARSE_PIPS, 1)
    ask = np.ceil(hi / t_hi - 1e-9) * t_hi
    no_bid = (marks < _NO_BID_BELOW) | (bid <= 0)
    ask = np.where(no_bid, np.maximum(ask, 1), ask)
    bids = [None if nb else b / _PIPS_PER_COIN for nb, b in zip(no_bid.tolist(), bid.tolist())]
    asks = [a / _PIPS_PER_COIN for a in ask.tolist()]
    return bids, asks


def price_expiry(strikes: tuple[float, ...], forward: float, t_years: float, atm: float, skew: float,
                 curvature: float) -> ExpiryTable:
    k = np.asarray(strikes, dtype=float)
    iv_pct = np.round(smile_array(atm, forward, k, t_years, skew, curvature) * 100.0, 2)
    call = call_coin_array(forward, k, iv_pct / 100.0, t_years)
    put = call - (forward - k) / forward
    call_mark = np.round(np.maximum(call, 0.0), 8)
    put_mark = np.round(np.maximum(put, 0.0), 8)
    cb, ca = bid_ask_array(call_mark)
    pb, pa = bid_ask_array(put_mark)
    return ExpiryTable(forward, t_years, iv_pct.tolist(), call_mark.tolist(), cb, ca, put_mark.tolist(), pb, pa,
                       {s: i for i, s in enumerate(strikes)})
