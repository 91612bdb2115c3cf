"""Backtest speed: the whole bot (rule brain, auto approvals, store) on the synthetic market,
hourly ticks. Prints ticks per second and the time of a year (8,760 ticks): measured in full with
--days 365, else projected from the run.

    python bench/backtest.py [--days 365] [--seed 7]

Target: a year in under 60 s on this 2-core machine. Also prints the live tick's latency at a
10,000-option chain through the real client over the in-process HTTP transport: the whole tick,
and the bot's own part, which is the tick less the time the paper exchange spends answering (on a
live account that time is Deribit's). The p50 target (< 50 ms) is the bot's part.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import gcpolicy  # noqa: E402
from agent.backtest import make_spec  # noqa: E402
from agent.config import load_settings  # noqa: E402
from chatops.backtest import run  # noqa: E402


async def backtest(days: float, seed: int) -> None:
    settings = load_settings(env_file=None)
    spec = make_spec(days=days, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        result, report = await run(settings, spec, Path(tmp))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    ticks = spec.ticks
    book = report["books"][0]
    print(f"backtest: {ticks} hourly ticks ({days:g} days, seed {seed}, rule brain, synthetic market, "
          f"{book['counts']['trades']} trades)")
    print(f"  {ticks / wall:,.0f} ticks/s wall ({wall:.1f} s), {ticks / cpu:,.0f} ticks/s of CPU ({cpu:.1f} s)")
    year = 8760 / (ticks / wall)
    label = "measured" if ticks >= 8760 else "projected"
    print(f"  one year (8,760 ticks): {year:.1f} s {label}  target < 60 s: {'OK' if year < 60 else 'MISSED'}")


async def live_tick(options_target: int, ticks: int) -> None:
    """A live tick (state, rule brain, risk) at a chain of about `options_target` options."""
    from datetime import datetime, timezone

    from agent.clock import SimClock
    from agent.deribit.client import DeribitClient, RateLimiter
    from agent.deribit.paper import PaperExchange
    from agent.deribit.paper_market import GRID
    from agent.deribit import paper_server
    from agent.deribit.paper_server import transport
    from agent.tick import run_tick

    # A denser strike grid makes the chain as long as a busy day's BTC chain on Deribit.
    base = {k: v for k, v in GRID.items()}
    scale = 1.0
    start = int(datetime(2026, 11, 25, 12, tzinfo=timezone.utc).timestamp() * 1000)
    try:
        while True:
            for k, (frac, width) in base.items():
                GRID[k] = (frac / scale, width)
            clock = SimClock(start)
            ex = PaperExchange(clock=clock, state_path=None, client_id=None, client_secret=None)
            n = sum(len(v) for v in ex.markets["BTC"].by_expiry.values())
            if n >= options_target or scale > 64:
                break
            scale *= 1.25
        settings = load_settings(env_file=None)
        fast = RateLimiter(ordinary_per_s=1e9, ordinary_burst=1e9, orders_per_s=1e9, orders_burst=1e9)
        client = DeribitClient("http://paper.invalid", "a", "b", transport=transport(ex), limiter=fast,
                               server_clock=lambda: clock.now_ms() / 1000.0)
        # The exchange's own share of each tick (its pricing, the book, the JSON it writes): in
        # live trading that is Deribit's time on Deribit's machines, not the bot's.
        real_dispatch = paper_server.dispatch
        exch = [0.0]

        async def timed_dispatch(*a, **k):
            t = time.perf_counter()
            try:
                return await real_dispatch(*a, **k)
            finally:
                exch[0] += time.perf_counter() - t

        paper_server.dispatch = timed_dispatch
        lat, cpu, own = [], [], []
        try:
            await run_tick(client, settings, clock=clock)
            gc_before = gcpolicy.settle()  # as the bot does after its first tick
            for _ in range(ticks):
                clock.advance(300)
                exch[0] = 0.0
                t0, c0 = time.perf_counter(), time.process_time()
                d = await run_tick(client, settings, clock=clock)
                lat.append((time.perf_counter() - t0) * 1000)
                cpu.append((time.process_time() - c0) * 1000)
                own.append(lat[-1] - exch[0] * 1000)
        finally:
            paper_server.dispatch = real_dispatch
            gcpolicy.unsettle(gc_before)
            await client.aclose()
    finally:
        GRID.update(base)
    p50, mine = statistics.median(lat), statistics.median(own)
    print(f"live tick at {d.state['chain']} options, {ticks} ticks (HTTP transport in process, JSON both ways):\n"
          f"  whole tick with the exchange in process: p50 {p50:.1f} ms, p95 {_p95(lat):.1f} ms "
          f"(CPU p50 {statistics.median(cpu):.1f} ms)\n"
          f"  the bot's part (the tick less the exchange's answers): p50 {mine:.1f} ms, p95 {_p95(own):.1f} ms  "
          f"target p50 < 50 ms: {'OK' if mine < 50 else 'MISSED'}")


def _p95(xs: list[float]) -> float:
    return sorted(xs)[max(int(0.95 * len(xs)) - 1, 0)]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=float, default=60)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--live-options", type=int, default=10_000)
    ap.add_argument("--live-ticks", type=int, default=40)
    a = ap.parse_args()
    asyncio.run(backtest(a.days, a.seed))
    if a.live_options:
        asyncio.run(live_tick(a.live_options, a.live_ticks))
