"""Injectable clocks: wall time, or simulated time (manual or at a speed factor)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...


def to_datetime(ms: int | float) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)


def market_seconds(clock: object, wall_seconds: float) -> float:
    """How much market time passes in `wall_seconds` of wall time on this clock: the same on the
    wall clock, `speed` times more on a simulated clock running at a speed (PAPER_SPEED). Human-
    facing durations (approval TTL, watchdog, outbox retries) are stored in market time through
    this, so that they last as long on the wall whatever the speed."""
    speed = getattr(clock, "speed", None)
    return wall_seconds * speed if speed else wall_seconds


class WallClock:
    speed = None

    def now_ms(self) -> int:
        return int(time.time() * 1000)


class SimClock:
    """Simulated time starting at `start_ms`.

    With `speed` set, it runs `speed` times faster than the wall clock (for demos); without it, it
    only moves when `advance` is called (for tests and backtests).
    """

    def __init__(self, start_ms: int | None = None, speed: float | None = None) -> None:
        self._base_ms = float(start_ms if start_ms is not None else time.time() * 1000)
        self._speed = speed
        self._wall0 = time.monotonic()

    @property
    def speed(self) -> float | None:
        return self._speed

    def now_ms(self) -> int:
        if self._speed is None:
            return int(self._base_ms)
        return int(self._base_ms + (time.monotonic() - self._wall0) * 1000 * self._speed)

    def advance(self, seconds: float) -> None:
        self._base_ms += seconds * 1000.0
