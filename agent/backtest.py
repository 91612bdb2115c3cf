"""Backtest: the real agent on a simulated clock, over a market model, against the paper exchange.

Each tick moves the clock and hands control to a `Driver`: the whole bot (state, brain, risk
engine, the proposal, its automatic approval, the re-check and the execution) decides and acts as
it would live; the chat-ops side supplies that driver (`chatops.backtest`), since the agent never
imports the bot around it. After each tick the exchange is read back (account equity, index
price, open positions) for the equity curve. The report (`backtest_report`) is built from the
exchange's own records at the end: its trades, its settlements, its account.

With `--brain shadow` two books run in lockstep on the same market and ticks: the rules drive one
(the LLM deciding beside them, as in the bot's shadow mode, for the agreement), the LLM drives the
other (for its P&L).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

from .backtest_client import InProcessClient
from .clock import to_datetime
from .config import Settings
from .deribit.paper import PaperExchange
from .deribit.paper_market import DEFAULT_SPOT
from .exchange import Exchange
from .market import parse_market, synthetic
from .market.base import DAY_MS, HOUR_MS, PricePath
from .market.synthetic import DEFAULT_VRP
from .models import Action, ActionType, Decision

SYNTHETIC_START = datetime(2025, 1, 1, tzinfo=timezone.utc)  # a fixed default: the same run every time
_INTERVAL = re.compile(r"^(\d+(?:\.\d+)?)([mhd])$")
BRAINS = ("rule", "llm", "shadow")
BACKTEST_TOKEN_TTL_S = 5 * 86_400.0  # within the 7-day refresh token: the client refreshes at 80 %


class BacktestError(ValueError):
    """A bad backtest argument or market: one line for the user."""


def parse_interval(text: str) -> int:
    """'1h', '15m', '1d' -> milliseconds."""
    m = _INTERVAL.match((text or "").strip())
    if not m:
        raise BacktestError(f"bad --interval {text!r}: use minutes, hours or days such as 15m, 1h, 1d")
    ms = int(float(m[1]) * {"m": 60_000, "h": HOUR_MS, "d": DAY_MS}[m[2]])
    if ms < 60_000:
        raise BacktestError(f"--interval {text!r} is under a minute: the market moves in one-minute steps")
    return ms


def parse_when(text: str) -> int:
    """An ISO date or time (UTC unless it says otherwise) -> ms."""
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BacktestError(f"bad date {text!r}: use ISO 8601 such as 2025-01-01 or 2025-01-01T08:00") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


@dataclass(frozen=True)
class BacktestSpec:
    """Everything that fixes a run: the same spec (and settings) gives the same report."""

    start_ms: int
    end_ms: int
    interval_ms: int = HOUR_MS
    seed: int = 7
    brain: str = "rule"
    market: str = "synthetic"
    vrp: float = DEFAULT_VRP
    currency: str = "BTC"
    equity: float = 1.0
    spot0: float | None = None

    @property
    def ticks(self) -> int:
        return (self.end_ms - self.start_ms) // self.interval_ms + 1

    @property
    def days(self) -> float:
        return (self.end_ms - self.start_ms) / DAY_MS

    def check(self) -> "BacktestSpec":
        if self.brain not in BRAINS:
            raise BacktestError(f"bad --brain {self.brain!r}: use rule, llm or shadow")
        if self.end_ms <= self.start_ms:
            raise BacktestError("the end must come after the start")
        if not (0.0 <= self.vrp < 1.0):
            raise BacktestError(f"--vrp {self.vrp:g} is out of range: vol points as a fraction, e.g. 0.05")
        if self.equity <= 0:
            raise BacktestError("the starting equity must be positive")
        parse_market(self.market)
        return self


def make_spec(*, start: str | None = None, end: str | None = None, days: float | None = None, interval: str = "1h",
              seed: int = 7, brain: str = "rule", market: str = "synthetic", vrp: float = DEFAULT_VRP,
              currency: str = "BTC", equity: float = 1.0, now_ms: int | None = None) -> BacktestSpec:
    """The run's window from --start/--end/--days: a synthetic run starts on a fixed date by default,
    a Deribit one ends at today's midnight UTC."""
    kind, _ = parse_market(market)
    if start and end and days:
        raise BacktestError("give at most two of --start, --end and --days")
    span = None if days is None else int(days * DAY_MS)
    if span is not None and span <= 0:
        raise BacktestError("--days must be positive")
    s = parse_when(start) if start else None
    e = parse_when(end) if end else None
    if s is None and e is None:
        if kind == "deribit":
            now = now_ms if now_ms is not None else int(time.time() * 1000)
            e = now // DAY_MS * DAY_MS
        elif kind == "synthetic":
            s = int(SYNTHETIC_START.timestamp() * 1000)
    if s is None and e is not None:
        s = e - (span or 365 * DAY_MS)
    if e is None and s is not None and span is not None:
        e = s + span
    spec = BacktestSpec(start_ms=s or 0, end_ms=e or 0, interval_ms=parse_interval(interval), seed=seed, brain=brain,
                        market=market, vrp=vrp, currency=currency.upper(), equity=equity)
    if kind == "csv" and (s is None or e is None):
        return spec  # filled from the file by build_model
    if e is None:
        spec = replace(spec, end_ms=(s or 0) + 365 * DAY_MS)
    return spec.check()


async def build_model(spec: BacktestSpec, *, cache_dir: str | Path = "data/history",
                      deribit_url: str | None = None) -> tuple[PricePath, BacktestSpec]:
    """The market model of a run (and the spec with a csv's own window filled in)."""
    kind, arg = parse_market(spec.market)
    if kind == "synthetic":
        spot0 = spec.spot0 or DEFAULT_SPOT.get(spec.currency, 100.0)
        return synthetic(spec.currency, spec.seed, spec.start_ms, spot0, spec.vrp), spec
    if kind == "csv":
        from .market.csvfile import load_csv

        path = load_csv(arg or "", spec.currency, spec.vrp)
        start = spec.start_ms or path.start_ms
        end = spec.end_ms or (path.end_ms if not spec.start_ms else min(path.end_ms, start + 365 * DAY_MS))
        spec = replace(spec, start_ms=start, end_ms=end).check()
        if start < path.start_ms or end > path.end_ms:
            raise BacktestError(f"the csv covers {to_datetime(path.start_ms):%Y-%m-%d %H:%M} to "
                                f"{to_datetime(path.end_ms):%Y-%m-%d %H:%M} UTC: the run must fit inside it")
        return path, spec
    from .market.deribit_history import PRODUCTION_URL, load_deribit

    path = await load_deribit(spec.currency, spec.start_ms, spec.end_ms, base_url=deribit_url or PRODUCTION_URL,
                              cache_dir=cache_dir)
    if path.start_ms > spec.start_ms:
        raise BacktestError(f"Deribit's history starts at {to_datetime(path.start_ms):%Y-%m-%d %H:%M} UTC, after the "
                            f"requested start: pick a later --start")
    return path, spec


# --- the run ---------------------------------------------------------------------------------


class Driver(Protocol):
    """One bot over one paper account: started once, ticked, stopped."""

    async def start(self) -> None: ...

    async def tick(self) -> Decision | None: ...

    async def stop(self) -> None: ...


DriverFactory = Callable[[str, Settings, Exchange], Driver]


class ManualClock:
    """The backtest's clock: it moves only when the run says so."""

    def __init__(self, start_ms: int) -> None:
        self.ms = int(start_ms)

    def now_ms(self) -> int:
        return self.ms

    def set(self, ms: int) -> None:
        self.ms = int(ms)


@dataclass
class Sample:
    t_ms: int
    spot: float
    equity: float
    shorts: tuple[float, ...]  # strikes of the open short calls


@dataclass
class Book:
    """One paper account and the bot that trades it."""

    name: str  # "rules" | "llm"
    mode: str  # the bot's DECISION_MODE
    paper: PaperExchange
    client: InProcessClient
    driver: Driver
    samples: list[Sample] = field(default_factory=list)
    decisions: int = 0
    shadow_pairs: list[tuple[Action, Action]] = field(default_factory=list)  # (rules, LLM) on the same state
    failed_ticks: int = 0
    start_equity: float = 0.0
    final_account: dict[str, Any] = field(default_factory=dict)
    final_positions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class BacktestRun:
    spec: BacktestSpec
    model: PricePath
    books: list[Book]
    elapsed_s: float = 0.0


def book_modes(brain: str) -> list[tuple[str, str]]:
    if brain == "shadow":
        return [("rules", "shadow"), ("llm", "llm")]
    return [("rules" if brain == "rule" else "llm", brain)]


async def run_backtest(spec: BacktestSpec, settings: Settings, model: PricePath, driver_factory: DriverFactory, *,
                       progress: Callable[[int, int], None] | None = None) -> BacktestRun:
    """Tick every book from the start to the end (inclusive) and read each exchange back after each tick."""
    clock = ManualClock(spec.start_ms)
    books: list[Book] = []
    for name, mode in book_modes(spec.brain):
        # Tokens last 5 simulated days: 15-minute ones would be refreshed on every hourly tick.
        paper = PaperExchange(clock=clock, currency=spec.currency, state_path=None, seed=spec.seed,
                              initial_equity=spec.equity, models={spec.currency: model}, client_id=None,
                              client_secret=None, currencies=(spec.currency,), token_ttl_s=BACKTEST_TOKEN_TTL_S)
        # Instruments change once a day or when strikes are added (state.py refetches on a new
        # name), so the bot's client keeps them a day instead of an hour: the same instruments.
        client = InProcessClient(paper, instruments_ttl_s=86_400.0)
        book_settings = settings.model_copy(update={"decision_mode": mode})
        exchange = Exchange(client, clock, paper, f"paper exchange on the {model.kind} market (backtest)")
        books.append(Book(name, mode, paper, client, driver_factory(name, book_settings, exchange)))
    t0 = time.perf_counter()
    total = spec.ticks
    try:
        for b in books:
            await b.driver.start()
            b.start_equity = (await b.client.get_account_summary(spec.currency)).equity
        for n in range(total):
            t = spec.start_ms + n * spec.interval_ms
            for b in books:
                clock.set(t)  # each book decides at the tick's time (a book's order follow-up moves the clock on)
                decision = await b.driver.tick()
                if decision is None:
                    b.failed_ticks += 1
                else:
                    b.decisions += 1
                    if decision.shadow_action is not None:
                        b.shadow_pairs.append((decision.proposed_action, decision.shadow_action))
                b.samples.append(await _sample(b, spec.currency, clock.ms))
            if progress is not None:
                progress(n + 1, total)
        for b in books:
            b.final_account = await b.client.call("private/get_account_summary", {"currency": spec.currency})
            b.final_positions = await b.client.call("private/get_positions", {"currency": spec.currency, "kind": "option"})
    finally:
        for b in books:
            await b.driver.stop()
    return BacktestRun(spec, model, books, time.perf_counter() - t0)


async def _sample(b: Book, currency: str, t_ms: int) -> Sample:
    acct = await b.client.get_account_summary(currency)
    positions = await b.client.get_positions(currency, "option")
    index = b.paper.markets[currency].spot(t_ms)
    shorts = []
    for p in positions:
        if p.signed_size < 0 and p.instrument_name.endswith("-C"):
            shorts.append(float(p.instrument_name.split("-")[2]))
    return Sample(t_ms, index, acct.equity, tuple(sorted(shorts)))


def agreement(pairs: list[tuple[Action, Action]]) -> dict[str, Any]:
    """How often the LLM chose what the rules chose on the same state (action and instrument)."""
    same_kind = sum(1 for r, l in pairs if r.action == l.action)
    same = sum(1 for r, l in pairs if r.key() == l.key())
    acted = [(r, l) for r, l in pairs if r.action != ActionType.DO_NOTHING or l.action != ActionType.DO_NOTHING]
    acted_same = sum(1 for r, l in acted if r.key() == l.key())
    n = len(pairs)
    return {"ticks": n, "same_action_pct": _pct(same_kind, n), "same_action_and_instrument_pct": _pct(same, n),
            "ticks_where_either_acted": len(acted), "agreement_when_either_acted_pct": _pct(acted_same, len(acted))}


def _pct(a: int, b: int) -> float:
    return round(a / b * 100.0, 1) if b else math.nan
