"""A market model from a recorded series: prices, and a 30-day at-the-money implied vol if known.

Used by the `deribit` history (index candles and the DVOL index) and by `csv:PATH`. No look-ahead:
at time t the model knows the last sample at or before t and nothing after (a step function, not an
interpolation). Options are priced by Black-76 from the 30-day implied vol with a term structure
(variance mean-reverting toward its trailing 180-day level: an inverted curve after a spike, an
upward one in calm) and the same smile as the synthetic market. Without an implied-vol column, the
30-day vol is the trailing 30-day realized vol plus a premium (`vrp`).
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Iterable, Sequence

import numpy as np

from .base import DAY_MS, YEAR_MS, PricePath

MINUTE_MS = 60_000
KAPPA = 6.0  # mean reversion of variance per year, for the term structure
LONG_WINDOW_DAYS = 180
REALIZED_WINDOW_DAYS = 30
T30 = 30 / 365
VOL_FLOOR = 0.10


def _g(t_years: float) -> float:
    kt = KAPPA * max(t_years, 1e-9)
    return (1.0 - math.exp(-kt)) / kt


class SeriesPath(PricePath):
    """Spot and implied vol from samples (ms, price[, iv as a fraction]) sorted by time."""

    kind = "series"

    def __init__(self, currency: str, ts_ms: Sequence[int], prices: Sequence[float], ivs: Sequence[float] | None = None,
                 *, vrp: float = 0.05, source: dict[str, Any] | None = None, description: str = "",
                 shocks: Iterable[tuple[int, float]] = ()) -> None:
        if len(ts_ms) < 2:
            raise ValueError("a price series needs at least two rows")
        ts = np.asarray(ts_ms, dtype=np.int64)
        order = np.argsort(ts, kind="stable")
        ts = ts[order]
        keep = np.concatenate(([True], np.diff(ts) > 0))  # duplicates: the first row wins
        self.ts = ts[keep]
        self.prices = np.asarray(prices, dtype=float)[order][keep]
        if np.any(~np.isfinite(self.prices)) or np.any(self.prices <= 0):
            raise ValueError("prices must be positive numbers")
        super().__init__(currency, int(self.ts[0]), MINUTE_MS, shocks)
        self._ts_list = self.ts.tolist()
        self._log_prices = np.log(self.prices).tolist()
        self.vrp = float(vrp)
        self.source = source or {"kind": self.kind}
        self.description = description
        step = float(np.median(np.diff(self.ts)))
        if ivs is not None:
            iv = np.asarray(ivs, dtype=float)[order][keep]
            if np.any(~np.isfinite(iv)) or np.any(iv <= 0):
                raise ValueError("implied vols must be positive numbers (fractions, e.g. 0.52)")
            self.iv30 = iv
            self.implied_given = True
        else:
            self.iv30 = self._trailing_realized(step) + self.vrp
            self.implied_given = False
        # Trailing mean of the 30-day vol: where the term structure reverts to.
        n_long = max(1, int(LONG_WINDOW_DAYS * DAY_MS / step))
        csum = np.concatenate(([0.0], np.cumsum(self.iv30)))
        idx = np.arange(len(self.iv30))
        lo = np.maximum(0, idx + 1 - n_long)
        self.long_vol = (csum[idx + 1] - csum[lo]) / (idx + 1 - lo)
        self._iv30_list = self.iv30.tolist()
        self._long_list = self.long_vol.tolist()

    @property
    def end_ms(self) -> int:
        return int(self.ts[-1])

    def _trailing_realized(self, step: float) -> np.ndarray:
        """Trailing 30-day realized vol at each sample (the first ones use what exists so far)."""
        r = np.diff(np.log(self.prices), prepend=math.log(self.prices[0]))
        n = max(2, int(REALIZED_WINDOW_DAYS * DAY_MS / step))
        csum = np.concatenate(([0.0], np.cumsum(r * r)))
        idx = np.arange(len(r))
        lo = np.maximum(1, idx + 1 - n)
        count = np.maximum(idx + 1 - lo, 1)
        var_per_step = (csum[idx + 1] - csum[lo]) / count
        vol = np.sqrt(var_per_step * (YEAR_MS / step))
        vol[:max(1, min(n, len(vol)) // 4)] = np.nan  # too few returns yet: use the first good value
        good = np.where(np.isfinite(vol) & (vol > 0))[0]
        fill = vol[good[0]] if len(good) else 0.5
        vol = np.where(np.isfinite(vol) & (vol > 0), vol, fill)
        return np.maximum(vol, VOL_FLOOR)

    def _index(self, t_ms: int) -> int:
        return max(0, bisect.bisect_right(self._ts_list, int(t_ms)) - 1)

    def raw_log_spot(self, step: int) -> float:
        return self._log_prices[self._index(self.start_ms + step * self.step_ms)]

    def iv30_at(self, t_ms: int) -> float:
        return self._iv30_list[self._index(t_ms)]

    def atm_vol(self, t_ms: int, t_years: float) -> float:
        i = self._index(t_ms)
        s30, long = self._iv30_list[i], self._long_list[i]
        var = long * long + (s30 * s30 - long * long) * _g(t_years) / _g(T30)
        return max(math.sqrt(max(var, 0.0)), VOL_FLOOR)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.source)

    def describe(self) -> str:
        return self.description or self.kind
