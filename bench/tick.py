"""A whole tick (state, rule brain, risk) against the in-process paper exchange on a realistic
chain: p50/p95 latency and requests per tick.

    python bench/tick.py [--ticks 200]

Target: p50 under 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.clock import SimClock  # noqa: E402
from agent.config import load_settings  # noqa: E402
from agent.exchange import open_exchange  # noqa: E402
from agent.tick import run_tick  # noqa: E402


async def main(ticks: int) -> None:
    tmp = tempfile.mkdtemp()
    settings = load_settings(env_file=None, paper_state_path=f"{tmp}/paper.json")
    start = int(datetime(2026, 11, 25, 12, tzinfo=timezone.utc).timestamp() * 1000)
    ex = open_exchange(settings, clock=SimClock(start))
    lat, reqs, chain = [], [], 0
    try:
        await run_tick(ex.client, settings, clock=ex.clock)  # warm-up: auth and instruments
        for _ in range(ticks):
            ex.clock.advance(300)  # a 5-minute loop, in simulated time
            t0 = time.perf_counter()
            d = await run_tick(ex.client, settings, clock=ex.clock)
            lat.append((time.perf_counter() - t0) * 1000)
            reqs.append(d.requests)
            chain = d.state["chain"]
    finally:
        await ex.aclose()
    lat.sort()
    p50, p95 = statistics.median(lat), lat[int(0.95 * len(lat)) - 1]
    print(f"{ticks} ticks on a {chain}-option BTC chain (in-process paper exchange, rule brain):")
    print(f"  tick latency p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {lat[-1]:.1f} ms  "
          f"target p50 < 50 ms: {'OK' if p50 < 50 else 'MISSED'}")
    print(f"  requests per tick: min {min(reqs)}, max {max(reqs)}, mean {statistics.mean(reqs):.2f} "
          f"(instruments refetched hourly or on a new listing; tokens refreshed at 80 % of their life)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=200)
    asyncio.run(main(ap.parse_args().ticks))
