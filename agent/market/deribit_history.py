"""`deribit`: real history from Deribit's public API (no key), cached under data/history/.

Hourly candles of `BTC-PERPETUAL` (or ETH's) from `public/get_tradingview_chart_data` and the DVOL
index (30-day implied vol, percent) from `public/get_volatility_index_data`, paged within
Deribit's limits through the project's own client (its rate limiter, and back-off on 10028
`too_many_requests`). Pages are cached one aligned window per file, written only once complete,
so an error half-way loses nothing: the next run fetches only what is missing.

Option prices are then modelled by Black-76 from DVOL (see `series.py`); they are not replayed
option quotes, and the report says so.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from ..deribit.client import DeribitClient, RateLimiter
from ..deribit.errors import DeribitError
from .base import HOUR_MS
from .errors import MarketDataError
from .series import SeriesPath

log = logging.getLogger(__name__)

PRODUCTION_URL = "https://www.deribit.com"
WINDOW_BARS = 1000  # bars per page and per cache file (public clients page in a few thousand)
RESOLUTION_MIN = 60  # hourly candles
DVOL_RESOLUTION_S = 3600
MAX_CONTINUATIONS = 50  # per window: a server that never stops continuing is an error


def _num(x: Any) -> float:
    return float(x)  # tolerant: numbers may come as strings


class HistoryFetcher:
    """Fetch and cache Deribit history. `client` is a DeribitClient on the public API."""

    def __init__(self, client: DeribitClient, cache_dir: str | Path = "data/history",
                 now_ms: Callable[[], int] | None = None) -> None:
        self.client = client
        self.cache_dir = Path(cache_dir)
        self._now_ms = now_ms
        self.requests = 0

    # -- cache --

    def _cache_file(self, kind: str, name: str, window_start: int) -> Path:
        return self.cache_dir / f"{kind}_{name}_{window_start}.json"

    def _read(self, path: Path) -> list[list[float]] | None:
        try:
            return [list(map(float, r)) for r in json.loads(path.read_text(encoding="utf-8"))]
        except (OSError, ValueError, TypeError):
            return None

    def _write(self, path: Path, rows: list[list[float]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rows, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, path)

    def _windows(self, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
        span = WINDOW_BARS * HOUR_MS
        w = start_ms // span * span
        out = []
        while w < end_ms:
            out.append((w, w + span))
            w += span
        return out

    async def _cached_windows(self, kind: str, name: str, start_ms: int, end_ms: int, fetch) -> list[list[float]]:
        rows: dict[int, list[float]] = {}
        now = self._now_ms() if self._now_ms else None
        for ws, we in self._windows(start_ms, end_ms):
            path = self._cache_file(kind, name, ws)
            got = self._read(path) if path.exists() else None
            if got is None:
                got = await fetch(ws, we - 1)
                if now is None or we <= now:  # a window still in the making is fetched again next time
                    self._write(path, got)
            for r in got:
                rows.setdefault(int(r[0]), r)
        return [rows[k] for k in sorted(rows) if start_ms <= k <= end_ms]

    # -- the two methods --

    async def _call(self, method: str, params: dict[str, Any]) -> Any:
        self.requests += 1
        try:
            return await self.client.call(method, params)
        except DeribitError as exc:
            raise MarketDataError(f"deribit market: {method} failed ({exc}); what was fetched so far is cached "
                                  f"under {self.cache_dir}: run again to resume") from None

    async def _candles_window(self, instrument: str, start_ms: int, end_ms: int) -> list[list[float]]:
        """One window of hourly candles; a server that answers fewer bars than asked is asked again
        from the bar after its last one."""
        out: dict[int, list[float]] = {}
        start = start_ms
        while start <= end_ms:
            res = await self._call("public/get_tradingview_chart_data",
                                   {"instrument_name": instrument, "start_timestamp": start, "end_timestamp": end_ms,
                                    "resolution": str(RESOLUTION_MIN)})
            if not isinstance(res, dict):
                raise MarketDataError(f"deribit market: unexpected chart data for {instrument}: {type(res).__name__}")
            ticks, close = res.get("ticks") or [], res.get("close") or []
            if res.get("status") == "no_data" or not ticks:
                break
            if len(ticks) != len(close):
                raise MarketDataError(f"deribit market: chart data for {instrument} has {len(ticks)} ticks but "
                                      f"{len(close)} closes")
            for t, c in zip(ticks, close):
                ts = int(_num(t))
                if start_ms <= ts <= end_ms:
                    out.setdefault(ts, [float(ts), _num(c)])
            last = max(int(_num(t)) for t in ticks)
            if last + HOUR_MS <= start or last + HOUR_MS > end_ms:  # done, or no progress: stop rather than loop
                break
            start = last + HOUR_MS
        return [out[k] for k in sorted(out)]

    async def _dvol_window(self, currency: str, start_ms: int, end_ms: int) -> list[list[float]]:
        out: dict[int, list[float]] = {}
        end = end_ms
        for _ in range(MAX_CONTINUATIONS):
            res = await self._call("public/get_volatility_index_data",
                                   {"currency": currency, "start_timestamp": start_ms, "end_timestamp": end,
                                    "resolution": str(DVOL_RESOLUTION_S)})
            if not isinstance(res, dict) or not isinstance(res.get("data"), list):
                raise MarketDataError(f"deribit market: unexpected volatility index data for {currency}")
            for row in res["data"]:
                ts = int(_num(row[0]))
                out.setdefault(ts, [float(ts), _num(row[4])])  # close of the hour
            cont = res.get("continuation")
            if cont is None:
                return [out[k] for k in sorted(out)]
            cont = int(_num(cont))
            if cont >= end or cont < start_ms:
                return [out[k] for k in sorted(out)]
            end = cont
        raise MarketDataError(f"deribit market: volatility index data for {currency} kept continuing "
                              f"after {MAX_CONTINUATIONS} pages")

    async def candles(self, instrument: str, start_ms: int, end_ms: int) -> list[list[float]]:
        return await self._cached_windows("candles", instrument, start_ms, end_ms,
                                          lambda s, e: self._candles_window(instrument, s, e))

    async def dvol(self, currency: str, start_ms: int, end_ms: int) -> list[list[float]]:
        return await self._cached_windows("dvol", currency, start_ms, end_ms,
                                          lambda s, e: self._dvol_window(currency, s, e))


async def load_deribit(currency: str, start_ms: int, end_ms: int, *, base_url: str = PRODUCTION_URL,
                       cache_dir: str | Path = "data/history", client: DeribitClient | None = None,
                       now_ms: Callable[[], int] | None = None) -> SeriesPath:
    """Spot from the perpetual's hourly closes, 30-day implied vol from DVOL, over [start, end]."""
    own = client is None
    if client is None:
        # Deribit's public limit, with room to spare: 10 calls a second, bursts of 10.
        client = DeribitClient(base_url, limiter=RateLimiter(ordinary_per_s=10, ordinary_burst=10))
    instrument = f"{currency}-PERPETUAL"
    fetcher = HistoryFetcher(client, cache_dir, now_ms or (lambda: int(time.time() * 1000)))
    # A day before the start: the first tick needs a price and a vol already known.
    lead = 24 * HOUR_MS
    try:
        candles = await fetcher.candles(instrument, start_ms - lead, end_ms)
        dvol = await fetcher.dvol(currency, start_ms - lead, end_ms)
    finally:
        if own:
            await client.aclose()
    if len(candles) < 2:
        raise MarketDataError(f"deribit market: no {instrument} candles between the start and the end; "
                              f"pick dates Deribit has history for")
    if not dvol:
        raise MarketDataError(f"deribit market: no DVOL data for {currency} in that range (DVOL starts in 2021)")
    # The candle at ts closes at ts + 1 h: known from then on (no look-ahead).
    ts = [int(c[0]) + HOUR_MS for c in candles]
    dv_ts = [int(d[0]) + HOUR_MS for d in dvol]
    ivs, j = [], 0
    for t in ts:
        while j + 1 < len(dv_ts) and dv_ts[j + 1] <= t:
            j += 1
        ivs.append(dvol[j][1] / 100.0)
    return SeriesPath(
        currency, ts, [c[1] for c in candles], ivs,
        source={"kind": "deribit", "currency": currency, "start_ms": start_ms, "end_ms": end_ms,
                "cache_dir": str(cache_dir)},
        description=(f"deribit history: {instrument} hourly closes and the DVOL index ({len(ts)} hours, "
                     f"{fetcher.requests} requests, cached in {cache_dir}); option prices are MODELLED by Black-76 "
                     f"with DVOL as the 30-day at-the-money vol, a term structure and a smile, not replayed quotes"),
    )
