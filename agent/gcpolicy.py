"""Garbage collection for a process that ticks: the bot, or a backtest.

A tick allocates tens of thousands of short-lived objects (a book of thousands of entries, each a
model). With CPython's defaults a young collection runs every 700 allocations, and objects that
happen to be alive then (the tick's own book) are promoted and soon make a full collection walk
the whole heap: libraries, settings, caches, the instruments, nothing of it garbage. Measured with
`python bench/backtest.py`, that was half of a 10,000-option tick.

`settle()` is called once the process has loaded what it keeps (after the first tick): it moves
all of that out of the collector's sight (`gc.freeze`) and collects the young generation every
50,000 allocations instead of 700. Cycles are still collected, only less often.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def settle() -> tuple[int, int, int]:
    """Freeze what is loaded and collect young objects less often; returns the old thresholds."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    young, middle, old = before
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)
    return before


def unsettle(before: tuple[int, int, int]) -> None:
    """Undo `settle` (a bot or a backtest that ends inside a longer process, e.g. the tests)."""
    gc.unfreeze()
    gc.set_threshold(*before)


__all__ = ["settle", "unsettle", "YOUNG_THRESHOLD"]
