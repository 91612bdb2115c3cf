"""The backtest's fast way to the paper exchange: the real client, without the wire.

`InProcessClient` is the project's `DeribitClient` (auth and token refresh, the instruments
cache, typed parsing, request counters, the error mapping) with one change: a call goes straight
to `PaperExchange.handle` in the same process instead of through HTTP and JSON. The exchange
answers the same envelope it would put on the wire, so the agent sees the same values; only the
encoding and decoding a year of ticks would spend is skipped.
"""

from __future__ import annotations

from typing import Any

from .deribit.client import DeribitClient, RateLimiter
from .deribit.errors import DeribitError, error_for

UNLIMITED = dict(ordinary_per_s=1e9, ordinary_burst=1e9, orders_per_s=1e9, orders_burst=1e9)


class InProcessClient(DeribitClient):
    def __init__(self, exchange: Any, client_id: str = "backtest", client_secret: str = "backtest-secret",
                 **kw: Any) -> None:
        clock = exchange.clock
        kw.setdefault("limiter", RateLimiter(**UNLIMITED))
        kw.setdefault("server_clock", lambda: clock.now_ms() / 1000.0)
        super().__init__("http://paper.in-process", client_id, client_secret, **kw)
        self.exchange = exchange

    async def _send(self, method: str, params: dict[str, Any], token: str | None, site: str,
                    envelope_adapter: Any = None) -> Any:
        credits = await self.limiter.acquire(method)
        self._count(site, requests=1, credits=credits)
        envelope = await self.exchange.handle(method, params, token)
        err = envelope.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            raise error_for(code if isinstance(code, int) else None, err.get("message"), err.get("data"), method)
        if "result" not in envelope:
            raise DeribitError(None, "paper exchange answered without a result", None, method)
        return envelope["result"]
