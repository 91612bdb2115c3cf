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

# Deribit's tick grid in "pips" of 0.0001 (see paper_market.bid_ask, whose rules these are).
_PIPS_PER_COIN = 10_000
_COARSE_ABOVE_PIPS = 50
_COARSE_PIPS = 5
_NO_BID_BELOW = 0.0002
_HALF_SPREAD = 0.035


def norm_cdf(x: np.ndarray) -> np.ndarray:
    """math.erf on each element (numpy has no erf; the same values as the scalar pricing)."""
    z = (x / _SQRT2).tolist()
    return 0.5 * (1.0 + np.fromiter(map(math.erf, z), dtype=float, count=len(z)))


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
    call_mid: list[float | None]
    put_mid: list[float | None]


def bid_ask_array(marks: np.ndarray) -> tuple[list[float | None], list[float], list[float | None]]:
    """paper_market.bid_ask on a whole array (the same rules, the same results), and the mids."""
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
    # The same IEEE divisions as one float at a time, done by numpy; None where there is no bid
    # (object arrays: the masking without a Python loop).
    bids = (bid / _PIPS_PER_COIN).astype(object)
    bids[no_bid] = None
    # (bid + ask) / 2 rounded to 8 decimals is exactly (bid_pips + ask_pips) / 20000.
    mids = ((bid + ask) / (2 * _PIPS_PER_COIN)).astype(object)
    mids[no_bid] = None
    return bids.tolist(), (ask / _PIPS_PER_COIN).tolist(), mids.tolist()


def price_chain(expiries: list[tuple[int, tuple[float, ...], float, float, float]], skew: float,
                curvature: float) -> dict[int, ExpiryTable]:
    """Every listed option at one instant in one pass. `expiries`: (expiry ms, strikes, forward,
    t in years, at-the-money vol) for each expiry not yet expired."""
    if not expiries:
        return {}
    sizes = [len(e[1]) for e in expiries]
    k = np.fromiter((x for e in expiries for x in e[1]), dtype=float, count=sum(sizes))
    fwd = np.repeat([e[2] for e in expiries], sizes)
    t = np.repeat([e[3] for e in expiries], sizes)
    atm = np.repeat([e[4] for e in expiries], sizes)
    m = np.clip(np.log(k / fwd) / np.sqrt(np.maximum(t, 1.0 / (365 * 24))), -3.0, 3.0)
    iv_pct = np.round(np.clip(atm * (1.0 + skew * m + curvature * m * m), 0.05, 3.0) * 100.0, 2)
    sd = iv_pct / 100.0 * np.sqrt(t)
    d1 = (np.log(fwd / k) + 0.5 * sd * sd) / sd
    call = (fwd * norm_cdf(d1) - k * norm_cdf(d1 - sd)) / fwd
    put = call - (fwd - k) / fwd
    call_mark = np.round(np.maximum(call, 0.0), 8)
    put_mark = np.round(np.maximum(put, 0.0), 8)
    # Calls and puts quoted in one pass (the numpy calls cost as much as the arithmetic here).
    total = len(call_mark)
    b_all, a_all, m_all = bid_ask_array(np.concatenate((call_mark, put_mark)))
    cb, ca, cm = b_all[:total], a_all[:total], m_all[:total]
    pb, pa, pm = b_all[total:], a_all[total:], m_all[total:]
    ivl, cml, pml = iv_pct.tolist(), call_mark.tolist(), put_mark.tolist()
    out: dict[int, ExpiryTable] = {}
    i = 0
    for (exp_ms, strikes, f, ty, _), n in zip(expiries, sizes):
        j = i + n
        out[exp_ms] = ExpiryTable(f, ty, ivl[i:j], cml[i:j], cb[i:j], ca[i:j], pml[i:j], pb[i:j], pa[i:j],
                                  {s: x for x, s in enumerate(strikes)}, cm[i:j], pm[i:j])
        i = j
    return out
