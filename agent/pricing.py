"""Black-76 for inverse (coin-margined) options, and Deribit's tick grid.

Deribit prices its options off the forward (`underlying_price`) with Black-76 and quotes the
premium in coin: the USD value divided by the forward. Rates are taken as zero, as Deribit does
for the forward-based mark.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from statistics import NormalDist
from typing import Iterable, Literal

_N = NormalDist()
YEAR_SECONDS = 365.0 * 24 * 3600


def realized_vol_pct(points: Iterable[tuple[float, float]], min_returns: int = 24) -> float | None:
    """Annualized realized volatility (percent) of (unix seconds, price) samples in time order:
    sqrt(sum of squared log returns / years covered). None with fewer than `min_returns` returns."""
    rets, years, prev = [], 0.0, None
    for ts, price in points:
        if price is None or price <= 0:
            continue
        if prev is not None and ts > prev[0]:
            rets.append(math.log(price / prev[1]))
            years += (ts - prev[0]) / YEAR_SECONDS
        prev = (ts, price)
    if len(rets) < min_returns or years <= 0:
        return None
    return math.sqrt(sum(r * r for r in rets) / years) * 100.0


def _d1_d2(forward: float, strike: float, vol: float, t_years: float) -> tuple[float, float]:
    sd = vol * math.sqrt(t_years)
    d1 = (math.log(forward / strike) + 0.5 * sd * sd) / sd
    return d1, d1 - sd


def call_price_usd(forward: float, strike: float, vol: float, t_years: float) -> float:
    """Undiscounted Black-76 call value in quote currency (USD)."""
    if t_years <= 0 or vol <= 0:
        return max(forward - strike, 0.0)
    d1, d2 = _d1_d2(forward, strike, vol, t_years)
    return forward * _N.cdf(d1) - strike * _N.cdf(d2)


def call_price_coin(forward: float, strike: float, vol: float, t_years: float) -> float:
    """Black-76 call premium in coin per contract (what Deribit quotes for BTC options)."""
    return call_price_usd(forward, strike, vol, t_years) / forward


def call_delta(forward: float, strike: float, vol: float, t_years: float) -> float:
    """Black-76 call delta N(d1), the figure Deribit shows as an option's delta."""
    if t_years <= 0 or vol <= 0:
        return 1.0 if forward > strike else 0.0
    d1, _ = _d1_d2(forward, strike, vol, t_years)
    return _N.cdf(d1)


def strike_for_delta(forward: float, delta: float, vol: float, t_years: float) -> float:
    """The strike whose Black-76 call delta equals `delta` (0 < delta < 1)."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    sd = vol * math.sqrt(t_years)
    d1 = _N.inv_cdf(delta)
    return forward * math.exp(-d1 * sd + 0.5 * sd * sd)


def years_between(from_ms: int | float, to_ms: int | float) -> float:
    return max((to_ms - from_ms) / 1000.0, 0.0) / YEAR_SECONDS


def tick_for_price(price: float, tick_size: float, tick_size_steps: Iterable = ()) -> float:
    """The tick that applies at `price`: `tick_size`, or the step whose `above_price` it exceeds."""
    tick = tick_size
    for step in sorted(tick_size_steps, key=lambda s: _get(s, "above_price")):
        if price > _get(step, "above_price"):
            tick = _get(step, "tick_size")
    return tick


def round_to_tick(
    price: float, tick_size: float, tick_size_steps: Iterable = (), side: Literal["buy", "sell"] = "sell"
) -> float:
    """Round onto the grid in the direction that keeps the order inside its limit.

    A sell rounds up (never sells cheaper than asked), a buy rounds down (never pays more).
    """
    steps = tuple(tick_size_steps)
    mode = ROUND_CEILING if side == "sell" else ROUND_FLOOR
    p = Decimal(repr(price))
    tick = Decimal(repr(tick_for_price(price, tick_size, steps)))
    rounded = (p / tick).to_integral_value(rounding=mode) * tick
    # Rounding up can cross into a coarser step; round again on that step's grid.
    tick2 = Decimal(repr(tick_for_price(float(rounded), tick_size, steps)))
    if tick2 != tick:
        rounded = (rounded / tick2).to_integral_value(rounding=mode) * tick2
    return float(rounded)


def is_on_grid(price: float, tick_size: float, tick_size_steps: Iterable = ()) -> bool:
    tick = Decimal(repr(tick_for_price(price, tick_size, tick_size_steps)))
    return (Decimal(repr(price)) % tick) == 0


def _get(obj, name: str) -> float:
    return float(obj[name] if isinstance(obj, dict) else getattr(obj, name))
