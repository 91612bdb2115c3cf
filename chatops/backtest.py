"""`chatops backtest`: the whole bot, approvals on auto and no chat, on a simulated clock.

`agent.backtest` runs the clock, the market and the paper exchange; this module gives it the bot
itself as the driver (`Bot.tick`: state, brain, risk, proposal, the automatic approval, the
re-check and the execution, all recorded in a SQLite store that `chatops audit` opens), and writes
the report, the JSON and the chart.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent import gcpolicy
from agent.backtest import BacktestError, BacktestSpec, build_model, make_spec, run_backtest
from agent.backtest_report import build_report, report_json, report_text
from agent.config import Settings
from agent.exchange import Exchange
from agent.market import MarketDataError
from agent.market.synthetic import DEFAULT_VRP
from agent.models import Decision

from .app import Bot
from .store import Store


def add_parser(sub: Any) -> None:
    b = sub.add_parser("backtest", help="the same agent on history or a synthetic market; a report against HODL")
    b.add_argument("--start", help="ISO date (UTC), e.g. 2025-01-01")
    b.add_argument("--end", help="ISO date (UTC)")
    b.add_argument("--days", type=float, help="length of the run (default 365)")
    b.add_argument("--interval", default="1h", help="time between ticks: 15m, 1h, 4h, 1d (default 1h)")
    b.add_argument("--seed", type=int, default=7, help="the synthetic market's seed (default 7)")
    b.add_argument("--brain", default="rule", choices=["rule", "llm", "shadow"],
                   help="who decides: the rules, the LLM, or shadow (both books, rules against the LLM)")
    b.add_argument("--market", default="synthetic", help="synthetic (default), deribit or csv:PATH")
    b.add_argument("--vrp", type=float, default=DEFAULT_VRP,
                   help=f"volatility risk premium in vol points, as a fraction (default {DEFAULT_VRP:g})")
    b.add_argument("--json", action="store_true", help="print the report as JSON")
    b.add_argument("--png", help="draw equity against HODL and the short strikes over the spot into this file")
    b.add_argument("--out", help="directory for the run: its SQLite database(s), report.txt, report.json")
    b.add_argument("--history-url", help="where the deribit market fetches history (default Deribit production)")
    b.add_argument("--cache", default="data/history", help="history cache directory (default data/history)")


class BotDriver:
    """A whole Bot over one paper account, without channels, approving on its own."""

    def __init__(self, settings: Settings, exchange: Exchange, db_path: Path, llm_client: Any = None) -> None:
        store = Store(db_path, now=lambda: _now(exchange))
        # The run's database is an artefact of the run (rerun to get it again): no fsync per tick.
        if not store.db.is_pg:  # always SQLite (a file under --out); guarded all the same
            store.db.execute("PRAGMA synchronous=OFF")
        self.bot = Bot(settings, exchange=exchange, store=store, channels=[], llm_client=llm_client)
        self.bot.inline_writes = True  # nothing else on the loop: no thread hop for each write

    async def start(self) -> None:
        await self.bot.start()

    async def tick(self) -> Decision | None:
        _, decision = await self.bot.tick()
        # What the scheduler's sweep does between ticks live: follow a working order to a final
        # state, repricing every ORDER_REPRICE_SEC of market time until ORDER_TIMEOUT_SEC.
        clock, s = self.bot.exchange.clock, self.bot.settings
        start = clock.now_ms()
        step = int(max(s.order_reprice_sec, 1.0) * 1000)
        while self.bot.store.proposals_in_status("executing") and clock.now_ms() - start <= s.order_timeout_sec * 1000:
            clock.set(clock.now_ms() + step)  # type: ignore[attr-defined]
            await self.bot.sweep()
        if self.bot.store.proposals_in_status("pending", "approved", "executing"):
            await self.bot.sweep()
        else:  # nothing to expire, execute or follow: only the audit anchor a sweep would write
            self.bot.anchor(f"every {s.audit_anchor_every}")
        return decision

    async def stop(self) -> None:
        await self.bot.stop()


def _now(exchange: Exchange):
    from agent.clock import to_datetime

    return to_datetime(exchange.clock.now_ms())


def backtest_settings(settings: Settings, db_path: Path) -> Settings:
    """The user's policy and risk settings; the run's own exchange, database and approvals."""
    return settings.model_copy(update={
        "exchange": "paper", "dry_run": False, "approval_mode": "auto", "database_path": str(db_path),
        "console_enabled": False, "paper_exchange_url": None,
    })


class Progress:
    """A progress bar on a terminal (stderr); silent otherwise."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.on = self.stream.isatty()
        self.t0 = time.perf_counter()
        self._last = 0.0

    def __call__(self, n: int, total: int) -> None:
        if not self.on:
            return
        now = time.perf_counter()
        if n < total and now - self._last < 0.2:
            return
        self._last = now
        width = 30
        done = int(width * n / total)
        rate = n / max(now - self.t0, 1e-9)
        eta = (total - n) / rate if rate > 0 else 0
        self.stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {n}/{total} ticks, {rate:,.0f}/s, {eta:4.0f} s left ")
        if n == total:
            self.stream.write("\n")
        self.stream.flush()


async def run(settings: Settings, spec: BacktestSpec, out_dir: Path, *, progress=None, history_url: str | None = None,
              cache_dir: str = "data/history", llm_client: Any = None):
    """Run a backtest with databases under `out_dir`; returns (run, report dict)."""
    model, spec = await build_model(spec, cache_dir=cache_dir, deribit_url=history_url)
    out_dir.mkdir(parents=True, exist_ok=True)

    def driver(name: str, book_settings: Settings, exchange: Exchange) -> BotDriver:
        db = out_dir / ("backtest.db" if name == "rules" or spec.brain != "shadow" else f"backtest-{name}.db")
        for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            p.unlink(missing_ok=True)  # a run's database holds that run only
        return BotDriver(backtest_settings(book_settings, db), exchange, db, llm_client)

    gc_before = gcpolicy.settle()  # what the bot does after its first tick (see agent.gcpolicy)
    try:
        result = await run_backtest(spec, settings, model, driver, progress=progress)
    finally:
        gcpolicy.unsettle(gc_before)
    return result, build_report(result)


def main_backtest(settings: Settings, args: argparse.Namespace) -> int:
    try:
        spec = make_spec(start=args.start, end=args.end, days=args.days, interval=args.interval, seed=args.seed,
                         brain=args.brain, market=args.market, vrp=args.vrp, currency=settings.underlying,
                         equity=settings.paper_equity)
    except (BacktestError, MarketDataError) as exc:
        print(f"backtest: {exc}", file=sys.stderr)
        return 2
    # Every execution would log a line: the report says it all, the database keeps each one.
    if settings.log_level != "DEBUG":
        for name in ("chatops", "agent"):
            logging.getLogger(name).setLevel(logging.WARNING)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="chatops-backtest-"))
    try:
        result, report = asyncio.run(run(settings, spec, out, progress=Progress(), history_url=args.history_url,
                                         cache_dir=args.cache))
    except (BacktestError, MarketDataError) as exc:
        print(f"backtest: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    text, js = report_text(report), report_json(report)
    if args.out:
        (out / "report.txt").write_text(text, encoding="utf-8")
        (out / "report.json").write_text(js, encoding="utf-8")
    if args.png:
        from agent.backtest_plot import draw

        draw(result, args.png)
    print(js if args.json else text, end="")
    ticks = sum(len(b.samples) for b in result.books)
    print(f"({ticks} ticks in {result.elapsed_s:.1f} s, {ticks / max(result.elapsed_s, 1e-9):,.0f} ticks/s"
          + (f"; databases and report in {out}" if args.out else "") + ")", file=sys.stderr)
    return 0
