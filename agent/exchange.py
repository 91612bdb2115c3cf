"""Open the configured exchange: the paper exchange (in process or over HTTP) or Deribit."""

from __future__ import annotations

from dataclasses import dataclass

from .clock import Clock, SimClock, WallClock
from .config import Settings
from .deribit.client import DeribitClient, RateLimiter

PAPER_KEY = ("paper-bot", "paper-bot-secret")


@dataclass
class Exchange:
    """A client, the clock that market time runs on, and the in-process paper exchange if any."""

    client: DeribitClient
    clock: Clock
    paper: object | None = None  # agent.deribit.paper.PaperExchange when in process
    description: str = ""

    async def aclose(self) -> None:
        await self.client.aclose()


def open_exchange(settings: Settings, *, clock: Clock | None = None, reset_paper: bool = False) -> Exchange:
    if settings.exchange == "deribit":
        client = DeribitClient(settings.deribit_base_url, settings.secret("deribit_client_id"),
                               settings.secret("deribit_client_secret"))
        return Exchange(client, clock or WallClock(), None, f"Deribit at {settings.deribit_base_url}")
    key_id = settings.paper_client_id or PAPER_KEY[0]
    secret = settings.secret("paper_client_secret") or PAPER_KEY[1]
    if settings.paper_exchange_url:
        client = DeribitClient(settings.paper_exchange_url, key_id, secret, backoff_base_s=0.2)
        return Exchange(client, clock or WallClock(), None, f"paper exchange at {settings.paper_exchange_url}")
    from .deribit.paper import PaperExchange  # only needed in process
    from .deribit.paper_server import transport as paper_transport

    if clock is None:
        clock = SimClock(speed=settings.paper_speed) if settings.paper_speed else WallClock()
    paper = PaperExchange(
        currency=settings.underlying, seed=settings.paper_seed, initial_equity=settings.paper_equity,
        state_path=settings.effective_paper_state_path, reset=reset_paper, clock=clock,
        client_id=settings.paper_client_id, client_secret=settings.secret("paper_client_secret"),
    )
    # The in-process paper exchange has no rate limits of its own, and under a simulated clock a
    # day of ticks may run in seconds: Deribit's 20 calls/s would only slow the simulation down.
    fast = RateLimiter(ordinary_per_s=10_000, ordinary_burst=10_000, orders_per_s=10_000, orders_burst=10_000)
    client = DeribitClient("http://paper.invalid", key_id, secret, transport=paper_transport(paper), backoff_base_s=0.05,
                           limiter=fast, server_clock=lambda: clock.now_ms() / 1000.0)
    return Exchange(client, clock, paper, f"paper exchange in process ({settings.effective_paper_state_path})")
