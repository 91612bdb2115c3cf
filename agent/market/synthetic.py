"""A seeded synthetic market in which selling options is a real bet, as it is on Deribit.

Spot follows stochastic volatility with jumps (a Heston-like variance with mean reversion, so
calm and stormy spells cluster; a negative correlation between spot and variance shocks; Poisson
jumps in the spot, mostly down, that kick the variance up). Implied volatility is what a trader
would expect realized volatility to be over the option's life, given the variance now, plus a
volatility risk premium (`vrp`, in vol points): the premium option sellers are paid on average,
and lose in the storms. A smile sits on top.

The path is drawn in weekly chunks of one-minute steps, each chunk from an RNG keyed on (seed,
currency, chunk), the variance carried from one chunk to the next: the value at a time depends on
the seed alone, not on how the path was sampled.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable

import numpy as np

from .base import HOUR_MS, YEAR_MS, PricePath

MINUTE_MS = 60_000
STEPS_PER_HOUR = 60
CHUNK_HOURS = 168  # a week of hourly variance steps per RNG chunk
VAR_FLOOR = 0.15**2  # 15 % vol: BTC has never been calmer than that for long
VAR_CAP = 2.5**2

# The default volatility risk premium, in vol points of the at-the-money implied vol: an
# assumption of this model (set it with --vrp), not a measured figure.
DEFAULT_VRP = 0.05


@dataclass(frozen=True)
class SyntheticParams:
    """What fixes a synthetic path; stored with the paper state so a restart continues it."""

    seed: int
    spot0: float
    start_ms: int
    vrp: float = DEFAULT_VRP
    vol0: float = 0.50  # volatility at the start
    long_vol: float = 0.50  # long-run level of the diffusive volatility
    kappa: float = 6.0  # mean reversion per year (a half-life of about six weeks)
    vol_of_var: float = 0.7
    rho: float = -0.45  # correlation of spot and variance shocks
    jump_rate: float = 8.0  # jumps per year
    jump_mean: float = -0.02  # mean log jump
    jump_sd: float = 0.05
    jump_kick: float = 0.04  # variance added by one jump

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SyntheticParams":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class SyntheticPath(PricePath):
    kind = "synthetic"

    def __init__(self, currency: str, params: SyntheticParams, shocks: Iterable[tuple[int, float]] = ()) -> None:
        super().__init__(currency, params.start_ms, MINUTE_MS, shocks)
        self.params = p = params
        self._dt_hour = HOUR_MS / YEAR_MS
        self._dt_min = MINUTE_MS / YEAR_MS
        # Jumps are compensated so the spot stays a martingale in price terms.
        self._compensator = p.jump_rate * (math.exp(p.jump_mean + 0.5 * p.jump_sd**2) - 1.0)
        # Long-run mean of the variance including the kicks from jumps, and the jumps' own variance.
        self._theta_eff = p.long_vol**2 + p.jump_rate * p.jump_kick / p.kappa
        self._jump_var = p.jump_rate * (p.jump_mean**2 + p.jump_sd**2)
        self._log_spot: list[np.ndarray] = []  # per chunk: CHUNK_HOURS * 60 + 1 prefix values
        self._var: list[np.ndarray] = []  # per chunk: variance at the start of each hour
        self._end_state = (math.log(p.spot0), p.vol0**2)
        self._tag = zlib.crc32(currency.encode())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "currency": self.currency, "params": self.params.to_dict()}

    def describe(self) -> str:
        p = self.params
        return (f"synthetic (seed {p.seed}; stochastic vol around {p.long_vol:.0%}, spot-vol correlation {p.rho:g}, "
                f"{p.jump_rate:g} jumps a year; implied vol = expected realized + {p.vrp * 100:g} vol points, with a smile)")

    # -- the path --

    def _chunk(self, c: int) -> None:
        """Draw chunk c (and every chunk before it)."""
        p = self.params
        while len(self._log_spot) <= c:
            k = len(self._log_spot)
            rng = np.random.default_rng([p.seed, self._tag, k])
            n_min = CHUNK_HOURS * STEPS_PER_HOUR
            z = rng.standard_normal(n_min)
            z_perp = rng.standard_normal(CHUNK_HOURS)
            n_jumps = rng.poisson(p.jump_rate * self._dt_min, n_min)
            jump_sizes = rng.normal(p.jump_mean, p.jump_sd, n_min) * n_jumps  # ~never two in a minute
            hourly_z = z.reshape(CHUNK_HOURS, STEPS_PER_HOUR).sum(axis=1) / math.sqrt(STEPS_PER_HOUR)
            w = p.rho * hourly_z + math.sqrt(1.0 - p.rho**2) * z_perp
            jumps_per_hour = n_jumps.reshape(CHUNK_HOURS, STEPS_PER_HOUR).sum(axis=1)
            log_s0, v = self._end_state
            var = np.empty(CHUNK_HOURS)
            theta, kappa, xi, dt = p.long_vol**2, p.kappa, p.vol_of_var, self._dt_hour
            for h in range(CHUNK_HOURS):
                var[h] = v
                v = v + kappa * (theta - v) * dt + xi * math.sqrt(v * dt) * w[h] + p.jump_kick * jumps_per_hour[h]
                v = min(max(v, VAR_FLOOR), VAR_CAP)
            v_min = np.repeat(var, STEPS_PER_HOUR)
            incr = (-0.5 * v_min - self._compensator) * self._dt_min + np.sqrt(v_min * self._dt_min) * z + jump_sizes
            log_s = np.empty(n_min + 1)
            log_s[0] = log_s0
            np.cumsum(incr, out=log_s[1:])
            log_s[1:] += log_s0
            self._log_spot.append(log_s)
            self._var.append(var)
            self._end_state = (float(log_s[-1]), v)

    def raw_log_spot(self, step: int) -> float:
        c, j = divmod(step, CHUNK_HOURS * STEPS_PER_HOUR)
        if c >= len(self._log_spot):
            self._chunk(c)
        return float(self._log_spot[c][j])

    def variance(self, t_ms: int) -> float:
        """The diffusive variance in force at `t_ms` (known at that time: no look-ahead)."""
        h = max(0, (int(t_ms) - self.start_ms) // HOUR_MS)
        c, j = divmod(h, CHUNK_HOURS)
        if c >= len(self._var):
            self._chunk(c)
        return float(self._var[c][j])

    def expected_realized_vol(self, t_ms: int, t_years: float) -> float:
        """sqrt of the expected mean variance over the next `t_years`, jumps included."""
        p = self.params
        v = self.variance(t_ms)
        kt = p.kappa * max(t_years, 1e-9)
        mean_var = self._theta_eff + (v - self._theta_eff) * (1.0 - math.exp(-kt)) / kt + self._jump_var
        return math.sqrt(max(mean_var, VAR_FLOOR))

    def atm_vol(self, t_ms: int, t_years: float) -> float:
        return self.expected_realized_vol(t_ms, t_years) + self.params.vrp


def realized_vol(path: PricePath, start_ms: int, end_ms: int, step_ms: int = HOUR_MS) -> float:
    """Annualized realized volatility of the path's log returns sampled every `step_ms`."""
    prev = math.log(path.spot(start_ms))
    total, n = 0.0, 0
    for t in range(start_ms + step_ms, end_ms + 1, step_ms):
        cur = math.log(path.spot(t))
        total += (cur - prev) ** 2
        prev = cur
        n += 1
    return math.sqrt(total / (n * step_ms / YEAR_MS)) if n else 0.0
