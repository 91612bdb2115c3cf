"""The `deribit` market against a fake Deribit history server over real HTTP: paging of both
methods, DVOL's continuation, an error half-way (cached pages survive it), a rate-limit answer."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from agent.backtest import make_spec
from agent.deribit.client import DeribitClient, RateLimiter
from agent.market import MarketDataError
from agent.market.deribit_history import load_deribit
from tests.fakes.deribit_history import HOUR_MS, HistoryServer, dvol_at, history_server, price_at

T0 = int(datetime(2024, 3, 1, tzinfo=timezone.utc).timestamp() * 1000)
DAY = 24 * HOUR_MS


def _client(url: str) -> DeribitClient:
    return DeribitClient(url, backoff_base_s=0.001, backoff_max_s=0.01,
                         limiter=RateLimiter(ordinary_per_s=1e6, ordinary_burst=1e6))


def _server(days: int = 60, **kw) -> HistoryServer:
    return HistoryServer(start_ms=T0 - 10 * DAY, end_ms=T0 + days * DAY, **kw)


async def test_pages_both_methods_and_builds_the_model(tmp_path):
    srv = _server()
    async with history_server(srv) as url:
        client = _client(url)
        try:
            path = await load_deribit("BTC", T0, T0 + 50 * DAY, cache_dir=tmp_path, client=client)
        finally:
            await client.aclose()
    charts = [q for m, q in srv.calls if m.endswith("tradingview_chart_data")]
    dvols = [q for m, q in srv.calls if m.endswith("volatility_index_data")]
    hours = 51 * 24 + 1  # a day of lead before the start, through the end
    assert len(charts) > hours // srv.max_bars  # the 300-bar cap made it page
    assert len(dvols) > hours // srv.max_rows  # ... and DVOL followed its continuation
    assert all(q["resolution"] == "60" for q in charts) and all(q["resolution"] == "3600" for q in dvols)
    # Every hour once, in order, with the server's numbers; a candle is known from its close on.
    assert len(path.ts) == hours
    assert list(path.ts) == sorted(set(path.ts))
    t = T0 + 7 * DAY
    assert path.spot(t) == pytest.approx(price_at(t - HOUR_MS))
    assert path.iv30_at(t) == pytest.approx(dvol_at(t - HOUR_MS) / 100)
    # DVOL is the 30-day ATM vol; other tenors come from the term structure around it.
    assert path.atm_vol(t, 30 / 365) == pytest.approx(path.iv30_at(t), rel=1e-9)
    assert path.atm_vol(t, 7 / 365) != pytest.approx(path.atm_vol(t, 90 / 365))
    assert "MODELLED" in path.describe()


async def test_cache_means_a_second_run_asks_nothing(tmp_path):
    srv = _server()
    async with history_server(srv) as url:
        for _ in range(2):
            client = _client(url)
            try:
                await load_deribit("BTC", T0, T0 + 20 * DAY, cache_dir=tmp_path, client=client)
            finally:
                await client.aclose()
            if _ == 0:
                first = len(srv.calls)
    assert first > 0 and len(srv.calls) == first
    assert list(tmp_path.glob("candles_BTC-PERPETUAL_*.json")) and list(tmp_path.glob("dvol_BTC_*.json"))


async def test_error_half_way_is_one_line_and_loses_nothing(tmp_path):
    srv = _server(days=120)
    srv.fail_at[4] = (11050, "bad_request")  # the 4th call: after a window of candles is done
    async with history_server(srv) as url:
        client = _client(url)
        try:
            with pytest.raises(MarketDataError) as err:
                await load_deribit("BTC", T0, T0 + 100 * DAY, cache_dir=tmp_path, client=client)
        finally:
            await client.aclose()
        msg = str(err.value)
        assert "\n" not in msg and "get_tradingview_chart_data" in msg and "run again to resume" in msg
        cached = list(tmp_path.glob("candles_*.json"))
        assert cached  # the window finished before the error is kept
        before = len(srv.calls)
        client = _client(url)
        try:
            path = await load_deribit("BTC", T0, T0 + 100 * DAY, cache_dir=tmp_path, client=client)
        finally:
            await client.aclose()
    again = srv.calls[before:]
    assert len(path.ts) == 101 * 24 + 1
    # The resumed run did not ask again for the window it had cached.
    cached_starts = {int(p.stem.rsplit("_", 1)[1]) for p in cached}
    assert not any(m.endswith("chart_data") and int(q["start_timestamp"]) in cached_starts for m, q in again)


async def test_rate_limit_answer_is_retried(tmp_path):
    srv = _server()
    srv.rate_limit_at = {1, 2}
    async with history_server(srv) as url:
        client = _client(url)
        try:
            path = await load_deribit("BTC", T0, T0 + 5 * DAY, cache_dir=tmp_path, client=client)
        finally:
            await client.aclose()
    assert len(path.ts) == 6 * 24 + 1
    assert client.stats.by_site["public/get_tradingview_chart_data"].retries == 2


async def test_no_data_is_a_clear_error(tmp_path):
    srv = HistoryServer(start_ms=T0 + 400 * DAY, end_ms=T0 + 500 * DAY)
    async with history_server(srv) as url:
        client = _client(url)
        try:
            with pytest.raises(MarketDataError, match="no BTC-PERPETUAL candles"):
                await load_deribit("BTC", T0, T0 + 5 * DAY, cache_dir=tmp_path, client=client)
        finally:
            await client.aclose()


async def test_backtest_on_deribit_history(tmp_path):
    from chatops.backtest import run
    from agent.config import load_settings

    srv = _server(days=30)
    spec = make_spec(start="2024-03-01", days=4, market="deribit")
    async with history_server(srv) as url:
        result, report = await run(load_settings(env_file=None), spec, tmp_path / "out", history_url=url,
                                   cache_dir=str(tmp_path / "cache"))
    from agent.backtest_report import report_text

    text = report_text(report)
    assert report["run"]["ticks"] == 4 * 24 + 1
    assert report["run"]["spot_start"] == pytest.approx(price_at(T0 - HOUR_MS))
    assert "not replayed option quotes" in text
    book = report["books"][0]
    assert book["coin"]["unexplained"] == pytest.approx(0.0, abs=1e-9)
