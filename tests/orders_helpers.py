"""A bot talking to the paper exchange over real HTTP on a simulated clock, with the exchange's own
fault injection in front of the orders; and the check that the proposal, its order rows and the
exchange's own orders agree."""

from __future__ import annotations

import io
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from agent.clock import SimClock
from agent.deribit.client import DeribitClient, RateLimiter
from agent.deribit.paper import PaperExchange
from agent.exchange import Exchange
from chatops.adapters.console import ConsoleChannel
from chatops.app import Bot
from chatops.store import Store
from tests.fakes.paper_http import paper_http
from tests.spine_helpers import make_settings


@dataclass
class H:
    bot: Bot
    paper: PaperExchange
    clock: SimClock
    out: io.StringIO

    @property
    def client(self) -> DeribitClient:
        return self.bot.exchange.client

    async def approved_open(self) -> int:
        """Tick, approve the open it proposes, and let the executor send it."""
        await self.bot.tick()
        (p,) = self.bot.store.pending_proposals()
        reply = await self.bot.core.approve(p.id, "alice", "console")
        assert reply.ok, reply.text
        await self.bot.core.drain()
        return p.id

    async def step(self, seconds: float, times: int = 1) -> None:
        """Let `seconds` of market time pass, then sweep; `times` over."""
        for _ in range(times):
            self.clock.advance(seconds)
            await self.bot.sweep()

    async def until_settled(self, seconds: float | None = None, max_steps: int = 60) -> str:
        step = seconds or self.bot.settings.order_reprice_sec
        for _ in range(max_steps):
            if self.bot.store.proposals_in_status("executing") == []:
                break
            await self.step(step)
        return self.bot.store.latest_proposal().status  # type: ignore[union-attr]

    def legs(self, pid: int) -> list[dict]:
        return self.bot.store._rows("SELECT * FROM order_legs WHERE proposal_id = ? ORDER BY seq", [pid])

    def event_kinds(self, pid: int) -> list[str]:
        return [e["kind"] for e in self.bot.store.order_events(pid)]


FAST = dict(ordinary_per_s=10_000, ordinary_burst=10_000, orders_per_s=10_000, orders_burst=10_000)


@asynccontextmanager
async def harness(tmp_path: Path, *, timeout: float = 2.0, busy_timeout: float | None = None,
                  **settings_kw) -> AsyncIterator[H]:
    clock = SimClock()
    paper = PaperExchange(clock=clock, state_path=tmp_path / "paper.json")
    async with paper_http(paper) as url:
        settings = make_settings(tmp_path, paper_exchange_url=url, **settings_kw)
        client = DeribitClient(url, "bot", "secret", timeout=timeout, backoff_base_s=0.01, limiter=RateLimiter(**FAST),
                               server_clock=lambda: clock.now_ms() / 1000.0)
        out = io.StringIO()
        store = None
        if busy_timeout is not None:
            store = Store(settings.database_path, now=lambda: _now(clock), busy_timeout=busy_timeout)
        bot = Bot(settings, exchange=Exchange(client, clock, None, f"paper exchange at {url}"), store=store,
                  channels=[ConsoleChannel(stdout=out, user="alice", read_input=False)])
        await bot.start()
        try:
            yield H(bot, paper, clock, out)
        finally:
            await bot.stop()


def _now(clock: SimClock):
    from agent.clock import to_datetime

    return to_datetime(clock.now_ms())


async def assert_agree(h: H, pid: int) -> dict:
    """The proposal's status, its order rows (current legs and the final `orders` record) and the
    exchange's own orders by label say the same thing. Returns the facts for further checks."""
    store = h.bot.store
    row = store.get_proposal(pid)
    assert row is not None
    legs = h.legs(pid)
    assert legs, "no order rows"
    total = 0.0
    for leg in legs:
        on_exchange = await h.client.get_order_state_by_label("BTC", leg["label"])
        assert len(on_exchange) <= 1, f"{leg['label']} sent more than once: {on_exchange}"
        if on_exchange:
            (o,) = on_exchange
            assert leg["order_id"] == o.order_id
            assert leg["state"] == o.order_state
            assert abs(leg["filled_amount"] - o.filled_amount) < 1e-9
            if o.filled_amount:
                assert abs((leg["average_price"] or 0) - o.average_price) < 1e-9
            total += o.filled_amount
        else:
            assert leg["order_id"] is None and leg["filled_amount"] == 0
            assert leg["state"] in ("not_found", "not_sent", "rejected", "unknown", "sending", "new")
    if row.status in ("executed", "failed"):
        (ex,) = store.executions(pid)
        by_label = {o["label"]: o for o in ex["orders"]}
        for leg in legs:
            rec = by_label[leg["label"]]
            assert (rec["order_id"], rec["order_state"], rec["filled_amount"]) == (
                leg["order_id"], leg["state"], leg["filled_amount"])
    if len(legs) == 1:
        if row.status == "executed":
            assert total > 0
        elif row.status == "failed":
            assert total == 0
    return {"status": row.status, "reason": row.status_reason or "", "filled": total, "legs": legs}
