"""A whole tick (state, rule brain, risk) against the in-process paper exchange on a realistic
chain: p50/p95 latency and requests per tick, and what the ledger feed adds (nothing on a tick
where the balance and positions did not change; one sale is made halfway to show a changed tick).

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
from agent.execution import execute_action  # noqa: E402
from agent.ledger_feed import Cursor, sync  # noqa: E402
from agent.tick import run_tick  # noqa: E402


async def main(ticks: int) -> None:
    tmp = tempfile.mkdtemp()
    settings = load_settings(env_file=None, paper_state_path=f"{tmp}/paper.json")
    start = int(datetime(2026, 11, 25, 12, tzinfo=timezone.utc).timestamp() * 1000)
    ex = open_exchange(settings, clock=SimClock(start))
    lat, reqs, chain = [], [], 0
    ledger_reqs: list[int] = []
    changed: list[int] = []
    seen: dict = {}

    def keep(state):
        seen["state"] = state
        return state

    try:
        await run_tick(ex.client, settings, clock=ex.clock, state_hook=keep)  # warm-up: auth and instruments
        cursor = (await sync(ex.client, seen["state"], Cursor(), force=True)).cursor  # start-up catch-up
        for n in range(ticks):
            ex.clock.advance(300)  # a 5-minute loop, in simulated time
            t0 = time.perf_counter()
            d = await run_tick(ex.client, settings, clock=ex.clock, state_hook=keep)
            fed = await sync(ex.client, seen["state"], cursor)
            lat.append((time.perf_counter() - t0) * 1000)
            cursor = fed.cursor
            reqs.append(d.requests)
            ledger_reqs.append(fed.requests)
            if fed.reason != "unchanged":
                changed.append(fed.requests)
            chain = d.state["chain"]
            if n == ticks // 2 and d.final_action.symbol:  # one sale: the next tick's feed reads it
                await execute_action(ex.client, d.final_action, f"bench-{n}", settings)
    finally:
        await ex.aclose()
    lat.sort()
    p50, p95 = statistics.median(lat), lat[int(0.95 * len(lat)) - 1]
    print(f"{ticks} ticks on a {chain}-option BTC chain (in-process paper exchange, rule brain):")
    print(f"  tick latency p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {lat[-1]:.1f} ms  "
          f"target p50 < 50 ms: {'OK' if p50 < 50 else 'MISSED'}")
    print(f"  requests per tick: min {min(reqs)}, max {max(reqs)}, mean {statistics.mean(reqs):.2f} "
          f"(instruments refetched hourly or on a new listing; tokens refreshed at 80 % of their life)")
    steady = [r for r in ledger_reqs if r == 0]
    print(f"  ledger feed: {len(steady)} of {len(ledger_reqs)} ticks read nothing more (0 requests); "
          f"{len(changed)} changed tick(s) read {', '.join(map(str, changed)) or '-'} request(s) "
          f"(trades since the cursor, settlements when a position went away)")
    total = [a + b for a, b in zip(reqs, ledger_reqs)]
    print(f"  state + ledger per tick: median {statistics.median(total):g}, max {max(total)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=200)
    asyncio.run(main(ap.parse_args().ticks))
