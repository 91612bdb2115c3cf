"""A bot wired to the in-process paper exchange on a simulated clock, for spine tests."""

from __future__ import annotations

import io
from pathlib import Path

from agent.clock import SimClock
from agent.config import load_settings
from agent.exchange import open_exchange
from chatops.adapters.console import ConsoleChannel
from chatops.app import Bot


def make_settings(tmp_path: Path, **kw):
    base = dict(database_path=str(tmp_path / "chatops.db"), paper_state_path=str(tmp_path / "paper.json"),
                console_allowed_users="alice,bob")
    base.update(kw)
    return load_settings(env_file=None, **base)


def make_bot(tmp_path: Path, *, clock: SimClock | None = None, out: io.StringIO | None = None, **kw) -> Bot:
    settings = make_settings(tmp_path, **kw)
    clock = clock or SimClock()
    console = ConsoleChannel(stdout=out or io.StringIO(), user="alice", read_input=False)
    return Bot(settings, exchange=open_exchange(settings, clock=clock), channels=[console])


async def orders_with_label(bot: Bot, label: str):
    return await bot.exchange.client.get_order_state_by_label(bot.settings.underlying, label)


async def settle_orders(bot: Bot, max_steps: int = 40) -> None:
    """Let working orders live: step the simulated clock by ORDER_REPRICE_SEC and sweep until no
    proposal is executing (a sell starts at the mid and steps toward the bid)."""
    await bot.core.drain()
    for _ in range(max_steps):
        if not bot.store.proposals_in_status("executing"):
            return
        bot.exchange.clock.advance(bot.settings.order_reprice_sec)
        await bot.executor.follow()
    raise AssertionError(f"orders still working after {max_steps} reprice steps")


async def until_executed(bot: Bot, pid: int, timeout: float = 10.0) -> None:
    """Wait (briefly, for a press to reach the executor) and let the working order live on the
    simulated clock until proposal `pid` is executed."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = bot.store.get_proposal(pid)
        if row is not None and row.status == "executed":
            return
        if row is not None and row.status == "executing":
            bot.exchange.clock.advance(bot.settings.order_reprice_sec)
            await bot.executor.follow()
        else:
            await asyncio.sleep(0.01)
    raise AssertionError(f"#{pid} not executed in {timeout:g} s ({bot.store.get_proposal(pid)})")
