"""The bot (rule brain, unattended) on the paper exchange over a simulated clock, then `chatops pnl`
on what it recorded: the example output in the README.

    python bench/pnl_demo.py [--days 21] [--seed 7] [--json] [--png FILE]

Hourly ticks in simulated time, APPROVAL_MODE=auto; the ledger is fed from the exchange's fills
and settlements exactly as in `chatops run`. Prints the report, the ledger feed's requests, and the
equity check.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.clock import SimClock  # noqa: E402
from agent.config import load_settings  # noqa: E402
from agent.exchange import open_exchange  # noqa: E402
from chatops.app import Bot  # noqa: E402
from chatops.pnl import cli_pnl  # noqa: E402


class Quiet:
    name = "bench"

    async def start(self, core) -> None: ...
    async def stop(self) -> None: ...
    async def post_proposal(self, card) -> None: ...
    async def update_proposal(self, card) -> None: ...

    def __init__(self) -> None:
        self.kinds: dict[str, int] = {}

    async def notify(self, notice) -> None:
        self.kinds[notice.kind] = self.kinds.get(notice.kind, 0) + 1


async def main(days: int, seed: int, as_json: bool, png: str | None) -> None:
    tmp = tempfile.mkdtemp()
    settings = load_settings(env_file=None, database_path=f"{tmp}/chatops.db", paper_state_path=f"{tmp}/paper.json",
                             paper_seed=seed, approval_mode="auto", console_enabled=False)
    start = int(datetime(2026, 11, 25, 12, tzinfo=timezone.utc).timestamp() * 1000)
    clock = SimClock(start)
    quiet = Quiet()
    bot = Bot(settings, exchange=open_exchange(settings, clock=clock), channels=[quiet])
    await bot.start()
    feed = []
    try:
        for _ in range(days * 24):
            await bot.tick()
            feed.append(bot.ledger.last_requests)
            clock.advance(3600)
        await bot.tick()
    finally:
        db = bot.store.path
        await bot.stop()
    from chatops.store import Store

    store = Store(db)
    try:
        cli_pnl(store, "BTC", None, as_json, png, None)
    finally:
        store.close()
    if not as_json:
        print(f"\n{days * 24 + 1} hourly ticks over {days} simulated days (seed {seed}); notices: "
              + ", ".join(f"{v} {k}" for k, v in sorted(quiet.kinds.items())))
        print(f"ledger feed: {sum(1 for r in feed if r == 0)} ticks with 0 extra requests, "
              f"{sum(1 for r in feed if r)} with 1-2 (max {max(feed)})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=21)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--png")
    a = ap.parse_args()
    asyncio.run(main(a.days, a.seed, a.json, a.png))
