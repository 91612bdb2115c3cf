"""A fake of Deribit's public history API over real HTTP (aiohttp on 127.0.0.1).

It speaks the documented shapes (../shared/deribit/REFERENCE.md, "History for backtests"):

- `public/get_tradingview_chart_data`: parallel arrays `ticks/open/high/low/close/volume/cost`
  and `status` ("ok" or "no_data"), at most `max_bars` bars per call (the earliest ones).
- `public/get_volatility_index_data`: `data` rows `[ms, open, high, low, close]` and
  `continuation`: at most `max_rows` rows per call, the NEWEST in the range first and in
  descending order (so callers must sort), `continuation` = the oldest row's time when more
  remain, else null.

Scripted faults: `fail_at[n] = (code, message)` answers the n-th call (1-based) with a JSON-RPC
error; `rate_limit_at` answers those calls with 10028 too_many_requests. Every call is logged.
"""

from __future__ import annotations

import math
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator

from aiohttp import web

HOUR_MS = 3_600_000


def price_at(ts: int) -> float:
    """A smooth deterministic BTC path: 60,000 with slow waves."""
    h = ts / HOUR_MS
    return round(60_000 * (1 + 0.08 * math.sin(h / 97.0) + 0.02 * math.sin(h / 7.3)), 2)


def dvol_at(ts: int) -> float:
    h = ts / HOUR_MS
    return round(55 + 12 * math.sin(h / 151.0), 2)


@dataclass
class HistoryServer:
    start_ms: int  # the first hour with data
    end_ms: int  # the last hour with data
    max_bars: int = 300
    max_rows: int = 200
    fail_at: dict[int, tuple[int, str]] = field(default_factory=dict)
    rate_limit_at: set[int] = field(default_factory=set)
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def _hours(self, start: int, end: int) -> list[int]:
        first = max(self.start_ms, -(-start // HOUR_MS) * HOUR_MS)
        last = min(self.end_ms, end // HOUR_MS * HOUR_MS)
        return list(range(first, last + 1, HOUR_MS)) if first <= last else []

    def chart(self, q: dict[str, str]) -> dict:
        if q.get("resolution") != "60":
            raise ValueError("resolution")
        hours = self._hours(int(q["start_timestamp"]), int(q["end_timestamp"]))[: self.max_bars]
        if not hours:
            return {"status": "no_data", "ticks": [], "open": [], "high": [], "low": [], "close": [], "volume": [],
                    "cost": []}
        close = [price_at(t) for t in hours]
        return {"status": "ok", "ticks": hours, "open": close, "high": [c * 1.001 for c in close],
                "low": [c * 0.999 for c in close], "close": [str(c) for c in close],  # strings: parse tolerantly
                "volume": [1.0] * len(hours), "cost": [c for c in close]}

    def dvol(self, q: dict[str, str]) -> dict:
        if q.get("currency") != "BTC":
            raise ValueError("currency")
        hours = self._hours(int(q["start_timestamp"]), int(q["end_timestamp"]))
        page = list(reversed(hours))[: self.max_rows]  # newest first
        more = len(hours) > len(page)
        rows = [[t, dvol_at(t) - 1, dvol_at(t) + 1, dvol_at(t) - 2, dvol_at(t)] for t in page]
        return {"data": rows, "continuation": page[-1] if more else None}

    def answer(self, method: str, q: dict[str, str]) -> dict:
        self.calls.append((method, q))
        n = len(self.calls)
        if n in self.rate_limit_at:
            return {"jsonrpc": "2.0", "id": None, "error": {"code": 10028, "message": "too_many_requests", "data": None}}
        if n in self.fail_at:
            code, message = self.fail_at[n]
            return {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message, "data": None}}
        try:
            if method == "public/get_tradingview_chart_data":
                result = self.chart(q)
            elif method == "public/get_volatility_index_data":
                result = self.dvol(q)
            else:
                return {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}}
        except (KeyError, ValueError) as exc:
            return {"jsonrpc": "2.0", "error": {"code": -32602, "message": "Invalid params", "data": {"param": str(exc)}}}
        return {"jsonrpc": "2.0", "id": None, "result": result, "usIn": 0, "usOut": 0, "usDiff": 0, "testnet": False}


@asynccontextmanager
async def history_server(server: HistoryServer) -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.Response:
        method = request.match_info["method"]
        return web.json_response(server.answer(f"public/{method}", dict(request.query)))

    app = web.Application()
    app.router.add_get("/api/v2/public/{method}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
