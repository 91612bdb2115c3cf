"""What every market model gives the paper exchange: a spot path and an implied-volatility surface.

A model is a `PricePath`: `spot(t_ms)` on a fixed step, the settlement average, the at-the-money
implied vol for a tenor (`atm_vol`) and a smile around it (`smile_iv`). Test shocks (`add_shock`)
multiply the spot from a time on, whatever the model. Everything is a pure function of the
model's parameters and the time asked: no I/O after construction, no wall clock.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS
SETTLEMENT_WINDOW_MS = 30 * 60_000


def smile_iv(atm: float, forward: float, strike: float, t_years: float, skew: float = 0.06,
             curvature: float = 0.12) -> float:
    """iv = atm * (1 + skew*m + curvature*m^2), m = ln(K/F)/sqrt(T): out-of-the-money calls slightly bid."""
    m = math.log(strike / forward) / math.sqrt(max(t_years, 1.0 / (365 * 24)))
    m = min(max(m, -3.0), 3.0)
    return min(max(atm * (1.0 + skew * m + curvature * m * m), 0.05), 3.0)


class PricePath:
    """Base of the market models. Subclasses give `raw_log_spot(step)` and `atm_vol(t_ms, t_years)`."""

    kind = "base"
    skew = 0.06
    curvature = 0.12

    def __init__(self, currency: str, start_ms: int, step_ms: int, shocks: Iterable[tuple[int, float]] = ()) -> None:
        self.currency = currency
        self.start_ms = int(start_ms)
        self.step_ms = int(step_ms)
        self.shocks: list[tuple[int, float]] = sorted((int(t), float(f)) for t, f in shocks)
        self.version = 0

    # -- what a subclass provides --

    def raw_log_spot(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def atm_vol(self, t_ms: int, t_years: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """What rebuilds this model after a restart (see agent.market.model_from_dict)."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind

    # -- shared --

    def smile_iv(self, atm: float, forward: float, strike: float, t_years: float) -> float:
        return smile_iv(atm, forward, strike, t_years, self.skew, self.curvature)

    def step_index(self, t_ms: int) -> int:
        return max(0, (int(t_ms) - self.start_ms) // self.step_ms)

    def spot(self, t_ms: int) -> float:
        log_s = self.raw_log_spot(self.step_index(t_ms))
        for at, factor in self.shocks:
            if at > t_ms:
                break
            log_s += math.log(factor)
        return math.exp(log_s)

    def add_shock(self, t_ms: int, factor: float) -> None:
        """Multiply the spot by `factor` from `t_ms` on: the past is left as it was."""
        if factor <= 0:
            raise ValueError("a shock factor must be positive")
        self.shocks.append((int(t_ms), float(factor)))
        self.shocks.sort()
        self.version += 1

    def average(self, end_ms: int, window_ms: int = SETTLEMENT_WINDOW_MS) -> float:
        """Mean of one sample per step over [end - window, end): Deribit's 30-minute settlement average."""
        n = max(1, window_ms // self.step_ms)
        start = end_ms - n * self.step_ms
        return sum(self.spot(start + i * self.step_ms) for i in range(n)) / n
