"""The simulated option market behind the paper exchange.

A seeded spot path per currency, Deribit's expiry calendar, strike grids fixed when an expiry is
listed, and Black-76 marks with a volatility smile, quoted onto Deribit's tick grid. Everything here
is a pure function of (market parameters, time): no I/O, no wall clock. The exchange in `paper.py`
owns the accounts and the order book and asks this module for prices.
"""

from __future__ import annotations

import hashlib
import math
import random
from array import array
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Iterable

from ..market.base import PricePath
from ..market.base import smile_iv as _smile_iv
from ..pricing import call_price_coin
from .paper_book import BookIndex, BookView, book_row
from .paper_chain import ExpiryTable, price_chain

from .paper_calendar import (  # noqa: F401  (re-exported: the market's public names)
    DAY_MS, EXPIRY_HOUR_UTC, GRID, HOUR_MS, YEAR_MS, Kind, _date, _MONTHS, _ms, calendar, expiry_code, expiry_kind,
    format_strike, grid_spacing, instrument_name, missing_strikes, next_boundary, nice_spacing, settlement_period,
    strike_grid,
)

CARRY = 0.05  # forward = spot * exp(CARRY * T): a small contango, as on Deribit
BLOCK = 1024  # spot-path steps drawn per RNG block
SETTLEMENT_WINDOW_MS = 30 * 60_000

TICK_SIZE = 0.0001
TICK_STEPS: tuple[dict[str, float], ...] = ({"above_price": 0.005, "tick_size": 0.0005},)
MIN_TRADE = {"BTC": 0.1, "ETH": 1.0}
DEFAULT_SPOT = {"BTC": 95_000.0, "ETH": 3_500.0}
MAX_OPEN_INTEREST = {"BTC": 1_200.0, "ETH": 15_000.0}
NO_BID_BELOW = 0.0002  # marks under this quote no bid (deep out of the money)
HALF_SPREAD = 0.035  # of mark; the spread is rounded outward to whole ticks
_N = NormalDist()


# --- tick grid -------------------------------------------------------------------------------
# Quotes are computed in whole "pips" of the base tick (0.0001): integer arithmetic is exact and
# several times faster than Decimal rounding, which matters when the whole chain is quoted per call.
# Tests check every quote with agent.pricing.is_on_grid.

_PIP = TICK_SIZE
_COARSE_ABOVE_PIPS = round(TICK_STEPS[0]["above_price"] / _PIP)  # 50: above 0.005 ...
_COARSE_PIPS = round(TICK_STEPS[0]["tick_size"] / _PIP)  # ... the tick is 5 pips (0.0005)
_PIPS_PER_COIN = round(1 / _PIP)  # dividing by an integer gives the shortest repr (0.0085, not 0.00850000001)


def bid_ask(mark: float) -> tuple[float | None, float]:
    """Quotes around a mark: a spread of 2 x 3.5 % of it, in whole ticks (at least one).

    bid <= mark <= ask always, both on the grid; no bid under NO_BID_BELOW. The spread is counted
    in ticks rather than rounded outward on each side, so a near-the-money weekly is one tick wide
    (under 10 % of mid) as on Deribit, not two.
    """
    pips = mark * _PIPS_PER_COIN
    tick = _COARSE_PIPS if pips > _COARSE_ABOVE_PIPS else 1
    n = max(1, round(2 * HALF_SPREAD * pips / tick))
    lo = pips - (n - 1) * tick / 2
    t_lo = _COARSE_PIPS if lo > _COARSE_ABOVE_PIPS else 1
    bid = math.floor(lo / t_lo + 1e-9) * t_lo
    hi = max(bid + n * tick, pips)
    t_hi = _COARSE_PIPS if hi > _COARSE_ABOVE_PIPS else 1
    ask = math.ceil(hi / t_hi - 1e-9) * t_hi
    if mark < NO_BID_BELOW or bid <= 0:
        return None, max(ask, 1) / _PIPS_PER_COIN
    return bid / _PIPS_PER_COIN, ask / _PIPS_PER_COIN


# --- volatility ------------------------------------------------------------------------------


def atm_iv(vol: float, t_years: float) -> float:
    """At-the-money implied vol: a gentle upward term structure around the path's own volatility."""
    return vol * (0.95 + 0.15 * (1.0 - math.exp(-t_years / 0.25)))


def smile_iv(atm: float, forward: float, strike: float, t_years: float) -> float:
    """iv = atm * (1 + a*m + b*m^2), m = ln(K/F)/sqrt(T): a smile with out-of-the-money calls slightly bid."""
    return _smile_iv(atm, forward, strike, t_years)


# --- deterministic randomness ----------------------------------------------------------------


def unit_hash(*parts: Any) -> float:
    """A uniform number in [0, 1) from its arguments: the same on every run and machine."""
    h = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


@dataclass(frozen=True)
class MarketParams:
    """What fixes a currency's price path; stored with the state so a restart continues the path."""

    currency: str
    seed: int
    start_ms: int
    spot0: float
    vol: float = 0.5
    step_ms: int = 60_000
    model: dict[str, Any] | None = None  # another market model (agent.market), as its to_dict(); None: this GBM

    def to_dict(self) -> dict[str, Any]:
        out = {"currency": self.currency, "seed": self.seed, "start_ms": self.start_ms, "spot0": self.spot0,
               "vol": self.vol, "step_ms": self.step_ms}
        if self.model is not None:
            out["model"] = self.model
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MarketParams":
        return cls(str(d["currency"]), int(d["seed"]), int(d["start_ms"]), float(d["spot0"]), float(d["vol"]),
                   int(d["step_ms"]), d.get("model"))


class SpotPath(PricePath):
    """Geometric Brownian motion (zero drift in price) on a fixed step, plus test shocks.

    Increments come in blocks of BLOCK normals, each block from an RNG keyed on (seed, currency,
    block index), so the value at a time does not depend on how often or in which order the path is
    sampled. Block totals are summed incrementally and kept; the per-step prefix sums of a block are
    kept for a bounded number of blocks (regenerating one costs well under a millisecond).
    """

    _KEEP_BLOCKS = 64
    kind = "gbm"

    def __init__(self, params: MarketParams, shocks: Iterable[tuple[int, float]] = ()) -> None:
        super().__init__(params.currency, params.start_ms, params.step_ms, shocks)
        self.params = params
        self._sd = params.vol * math.sqrt(params.step_ms / YEAR_MS)
        self._drift = -0.5 * self._sd * self._sd  # E[S] stays constant: drift 0 in price terms
        self._log_spot0 = math.log(params.spot0)
        self._block_start: list[float] = [0.0]  # sum of all increments before block i
        self._inner: dict[int, array] = {}

    def _rng(self, b: int, part: str) -> random.Random:
        return random.Random(f"paper-spot:{self.params.seed}:{self.params.currency}:{b}:{part}")

    def _block_total(self, b: int) -> float:
        # A block's sum of BLOCK standard normals is N(0, BLOCK): drawn directly, so the path a
        # year out costs one draw per block, not one per step.
        return math.sqrt(BLOCK) * self._rng(b, "total").gauss(0.0, 1.0)

    def _block(self, b: int) -> array:
        """Prefix sums of block b's increments: a random walk bridged onto the block's total."""
        blk = self._inner.get(b)
        if blk is not None:
            return blk
        if len(self._inner) >= self._KEEP_BLOCKS:
            self._inner.pop(next(iter(self._inner)))
        rng = self._rng(b, "steps")
        raw = [0.0] * (BLOCK + 1)
        s = 0.0
        for i in range(1, BLOCK + 1):
            s += rng.gauss(0.0, 1.0)
            raw[i] = s
        # Brownian bridge: remove the walk's own end point, put the block's total in its place.
        shift = (self._block_total(b) - s) / BLOCK
        blk = self._inner[b] = array("d", (raw[i] + shift * i for i in range(BLOCK + 1)))
        return blk

    def _cum(self, k: int) -> float:
        """Sum of the first k standard-normal increments."""
        b, j = divmod(k, BLOCK)
        while len(self._block_start) <= b:
            self._block_start.append(self._block_start[-1] + self._block_total(len(self._block_start) - 1))
        return self._block_start[b] + (self._block(b)[j] if j else 0.0)

    def raw_log_spot(self, step: int) -> float:
        return self._log_spot0 + self._sd * self._cum(step) + self._drift * step

    def atm_vol(self, t_ms: int, t_years: float) -> float:
        return atm_iv(self.params.vol, t_years)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vol": self.params.vol}

    def describe(self) -> str:
        return f"random walk at a constant {self.params.vol:.0%} vol (implied = realized)"


# --- instruments and quotes --------------------------------------------------------------------


@dataclass(frozen=True)
class OptionSpec:
    """A listed option: everything static about it."""

    name: str
    currency: str
    expiry_ms: int
    strike: float
    option_type: str  # "call" | "put"
    kind: Kind
    listed_ms: int
    instrument_id: int
    open_interest: float
    volume: float

    @property
    def min_trade_amount(self) -> float:
        return MIN_TRADE.get(self.currency, 1.0)


@dataclass
class Expiry:
    """One listed expiry: its strike spacing is fixed at listing time around the then forward;
    strikes are added (never removed) as the forward moves, each with when and where it listed."""

    expiry_ms: int
    kind: Kind
    listed_ms: int
    listing_forward: float
    strikes: tuple[float, ...]
    added: dict[float, tuple[int, float]] = field(default_factory=dict)  # strike -> (listed ms, forward then)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"expiry_ms": self.expiry_ms, "kind": self.kind, "listed_ms": self.listed_ms,
                               "listing_forward": self.listing_forward, "strikes": list(self.strikes)}
        if self.added:
            out["added"] = [[k, ms, f] for k, (ms, f) in sorted(self.added.items())]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Expiry":
        return cls(int(d["expiry_ms"]), d["kind"], int(d["listed_ms"]), float(d["listing_forward"]),
                   tuple(float(s) for s in d["strikes"]),
                   {float(k): (int(ms), float(f)) for k, ms, f in d.get("added", [])})


@dataclass(frozen=True)
class Quote:
    """An option's price at one instant. Marks are in coin and need not be on the tick grid."""

    mark: float
    iv: float  # fraction, rounded so that Black-76(underlying, strike, iv) reproduces the mark
    forward: float
    spot: float
    t_years: float
    bid: float | None
    ask: float

    def d1(self, strike: float) -> float:
        sd = self.iv * math.sqrt(self.t_years)
        return (math.log(self.forward / strike) + 0.5 * sd * sd) / sd if sd > 0 else (math.inf if self.forward > strike else -math.inf)


def _forward(spot: float, t_years: float) -> float:
    return round(spot * math.exp(CARRY * t_years), 2)


def underlying_index(currency: str, expiry: Expiry) -> str:
    """Dailies price off the index; longer expiries off their future, named like Deribit's."""
    return "index_price" if expiry.kind == "day" else f"{currency}-{expiry_code(expiry.expiry_ms)}"


@dataclass
class Market:
    """One currency's option market: its path, its listed expiries and the instruments on them."""

    params: MarketParams
    path: PricePath
    expiries: dict[int, Expiry] = field(default_factory=dict)
    settled: list[Expiry] = field(default_factory=list)  # most recent last, bounded
    options: dict[str, OptionSpec] = field(default_factory=dict)
    expired_options: dict[str, OptionSpec] = field(default_factory=dict)
    by_expiry: dict[int, list[OptionSpec]] = field(default_factory=dict)
    _expired_specs: dict[int, list[OptionSpec]] = field(default_factory=dict, repr=False)
    version: int = 0
    _summary_cache: tuple[tuple[int, int], list[dict[str, Any]]] | None = field(default=None, repr=False)
    _tables: tuple[tuple[int, int], dict[int, ExpiryTable]] | None = field(default=None, repr=False)
    _extended_at: tuple[int, int] | None = field(default=None, repr=False)
    _book_rows_cache: dict[int, tuple[list[OptionSpec], tuple[str, list]]] = field(default_factory=dict, repr=False)
    _book_index: tuple[int, list[int], BookIndex] | None = field(default=None, repr=False)

    MAX_SETTLED = 60

    @classmethod
    def create(cls, params: MarketParams, shocks: Iterable[tuple[int, float]] = ()) -> "Market":
        if params.model is not None:
            from ..market import model_from_dict

            return cls(params=params, path=model_from_dict(params.model, shocks))
        return cls(params=params, path=SpotPath(params, shocks))

    @classmethod
    def on_model(cls, params: MarketParams, path: PricePath) -> "Market":
        """A market on a model built elsewhere (agent.market); its to_dict() is kept in the params."""
        return cls(params=params, path=path)

    @property
    def currency(self) -> str:
        return self.params.currency

    def spot(self, t_ms: int) -> float:
        return round(self.path.spot(t_ms), 2)

    # -- listing and expiry --

    def list_due(self, now_ms: int) -> list[Expiry]:
        """List the calendar's expiries that are not listed yet, around the forward at `now_ms`."""
        added = []
        settled_ms = {e.expiry_ms for e in self.settled}
        spot = self.spot(now_ms)
        for exp_ms in calendar(now_ms):
            if exp_ms in self.expiries or exp_ms in settled_ms:
                continue
            kind = expiry_kind(exp_ms)
            fwd = _forward(spot, (exp_ms - now_ms) / YEAR_MS)
            e = Expiry(exp_ms, kind, now_ms, fwd, strike_grid(fwd, kind))
            self.expiries[exp_ms] = e
            added.append(e)
        if added:
            self._reindex()
        return added

    def extend_strikes(self, now_ms: int) -> list[int]:
        """List new strikes where the forward has moved towards the edge of an expiry's grid, as
        Deribit does intraday; returns the expiries that grew."""
        key = (now_ms, self.version * 1_000_003 + self.path.version)
        if key == self._extended_at:
            return []
        spot = self.spot(now_ms)
        grown = []
        for exp_ms, e in self.expiries.items():
            t = (exp_ms - now_ms) / YEAR_MS
            if t <= 0:
                continue
            fwd = _forward(spot, t)
            new = missing_strikes(e.strikes, e.listing_forward, e.kind, fwd)
            if new:
                for k in new:
                    e.added[k] = (now_ms, fwd)
                e.strikes = tuple(sorted(set(e.strikes) | set(new)))
                self.by_expiry.pop(exp_ms, None)
                grown.append(exp_ms)
        if grown:
            self._reindex()
        self._extended_at = (now_ms, self.version * 1_000_003 + self.path.version)
        return grown

    def pop_expired(self, upto_ms: int) -> list[Expiry]:
        """Unlist the expiries at or before `upto_ms` (the caller settles them)."""
        gone = [e for ms, e in sorted(self.expiries.items()) if ms <= upto_ms]
        for e in gone:
            del self.expiries[e.expiry_ms]
            self.settled.append(e)
            self._expired_specs[e.expiry_ms] = self.by_expiry.get(e.expiry_ms) or self._specs(e)
            for spec in self._expired_specs[e.expiry_ms]:
                self.expired_options[spec.name] = spec
        if gone:
            for old in self.settled[: -self.MAX_SETTLED]:
                for spec in self._expired_specs.pop(old.expiry_ms, ()):
                    self.expired_options.pop(spec.name, None)
            del self.settled[: -self.MAX_SETTLED]
            self._reindex()
        return gone

    def restore(self, expiries: Iterable[Expiry], settled: Iterable[Expiry]) -> None:
        self.expiries = {e.expiry_ms: e for e in expiries}
        self.settled = list(settled)
        self._expired_specs = {e.expiry_ms: self._specs(e) for e in self.settled}
        self.expired_options = {s.name: s for specs in self._expired_specs.values() for s in specs}
        self._reindex()

    def _specs(self, e: Expiry) -> list[OptionSpec]:
        cur, seed = self.currency, self.params.seed
        max_oi = MAX_OPEN_INTEREST.get(cur, 1_000.0)
        width = GRID[e.kind][1] / 2.5
        out = []
        for strike in e.strikes:
            listed_ms, ref_fwd = e.added.get(strike, (e.listed_ms, e.listing_forward))
            # Open interest peaks near where the money was when the strike listed, thinner in the wings.
            closeness = math.exp(-0.5 * (math.log(strike / ref_fwd) / width) ** 2)
            for ot in ("call", "put"):
                name = instrument_name(cur, e.expiry_ms, strike, ot)
                oi = round(max_oi * closeness * (0.35 + 0.65 * unit_hash(seed, name, "oi")), 1)
                vol = round(oi * 0.05 * unit_hash(seed, name, "volume"), 1)
                iid = 100_000 + int(unit_hash(seed, name, "id") * 900_000)
                out.append(OptionSpec(name, cur, e.expiry_ms, strike, ot, e.kind, listed_ms, iid, oi, vol))
        return out

    def _reindex(self) -> None:
        # Specs of an expiry never change once listed: keep them, build only the new ones.
        self.by_expiry = {ms: self.by_expiry.get(ms) or self._specs(self.expiries[ms]) for ms in sorted(self.expiries)}
        self.options = {s.name: s for specs in self.by_expiry.values() for s in specs}
        self.version += 1
        self._summary_cache = None

    def settlement_price(self, expiry_ms: int) -> float:
        return round(self.path.average(expiry_ms), 2)

    # -- pricing --

    def quote(self, spec: OptionSpec, now_ms: int) -> Quote:
        """Mark, iv and quotes of one option at `now_ms` (intrinsic once expired)."""
        spot = self.spot(now_ms)
        t = max((spec.expiry_ms - now_ms) / YEAR_MS, 0.0)
        fwd = _forward(spot, t)
        if t <= 0:
            intrinsic = max(fwd - spec.strike, 0.0) if spec.option_type == "call" else max(spec.strike - fwd, 0.0)
            mark = intrinsic / fwd
            bid, ask = bid_ask(mark) if mark > 0 else (None, TICK_SIZE)
            return Quote(mark, 0.0, fwd, spot, 0.0, bid, ask)
        e = self.expiries.get(spec.expiry_ms)
        if e is None or spec.strike not in e.strikes:  # not listed (a test's own spec): price it alone
            iv = round(self.path.smile_iv(self.path.atm_vol(now_ms, t), fwd, spec.strike, t) * 100.0, 2) / 100.0
            call = call_price_coin(fwd, spec.strike, iv, t)
            mark = call if spec.option_type == "call" else call - (fwd - spec.strike) / fwd
            mark = round(max(mark, 0.0), 8)
            bid, ask = bid_ask(mark)
            return Quote(mark, iv, fwd, spot, t, bid, ask)
        tab = self._table(e, now_ms, spot)
        i = tab.index[spec.strike]
        if spec.option_type == "call":
            mark, bid, ask = tab.call_mark[i], tab.call_bid[i], tab.call_ask[i]
        else:
            mark, bid, ask = tab.put_mark[i], tab.put_bid[i], tab.put_ask[i]
        return Quote(mark, tab.iv_pct[i] / 100.0, tab.forward, spot, tab.t_years, bid, ask)

    def _table(self, e: Expiry, now_ms: int, spot: float, *, whole: bool = False) -> ExpiryTable:
        """An expiry's options priced at `now_ms`, cached for this instant and market version.
        With `whole`, every live expiry not priced yet is priced with it in one pass (the book
        summary reads them all); else this one alone (an order's matching, an account's marks,
        a backtest tick reading its DTE windows). Pricing is elementwise: the same figures
        either way."""
        key = (now_ms, self.version * 1_000_003 + self.path.version)
        if self._tables is None or self._tables[0] != key:
            self._tables = (key, {})
        tabs = self._tables[1]
        got = tabs.get(e.expiry_ms)
        if got is None:
            todo = [ms for ms in sorted(self.expiries) if ms not in tabs] if whole else [e.expiry_ms]
            live = []
            for exp_ms in todo:
                t = (exp_ms - now_ms) / YEAR_MS
                if t > 0:
                    live.append((exp_ms, self.expiries[exp_ms].strikes, _forward(spot, t), t, self.path.atm_vol(now_ms, t)))
            tabs.update(price_chain(live, self.path.skew, self.path.curvature))
            got = tabs[e.expiry_ms]
        return got

    def greeks(self, spec: OptionSpec, q: Quote) -> dict[str, float]:
        """Black-76 greeks as Deribit shows them: delta N(d1) (minus 1 for puts), vega and theta in USD."""
        if q.t_years <= 0 or q.iv <= 0:
            itm = q.forward > spec.strike if spec.option_type == "call" else q.forward < spec.strike
            d = (1.0 if itm else 0.0) * (1 if spec.option_type == "call" else -1)
            return {"delta": d, "gamma": 0.0, "vega": 0.0, "theta": 0.0, "rho": 0.0}
        d1 = q.d1(spec.strike)
        pdf = math.exp(-0.5 * d1 * d1) / math.sqrt(2 * math.pi)
        sqrt_t = math.sqrt(q.t_years)
        delta = _N.cdf(d1) - (0.0 if spec.option_type == "call" else 1.0)
        return {
            "delta": round(delta, 5),
            "gamma": round(pdf / (q.forward * q.iv * sqrt_t), 8),
            "vega": round(q.forward * pdf * sqrt_t / 100.0, 5),
            "theta": round(-q.forward * pdf * q.iv / (2 * sqrt_t) / 365.0, 5),
            "rho": 0.0,
        }

    def summaries(self, now_ms: int, index_price: float) -> list[dict[str, Any]]:
        """The whole chain's book summary at `now_ms`, cached per (ms, market version)."""
        key = (now_ms, self.version * 1_000_003 + self.path.version)
        if self._summary_cache is not None and self._summary_cache[0] == key:
            return self._summary_cache[1]
        cur = self.currency
        spot = self.spot(now_ms)
        out: list[dict[str, Any]] = []
        for exp_ms in sorted(self.expiries):
            if exp_ms <= now_ms:
                continue
            tab = self._table(self.expiries[exp_ms], now_ms, spot, whole=True)
            u_index, rows = self.book_rows(exp_ms)
            out += [book_row(cur, name, tab, u_index, i, j, oi, vol, index_price, now_ms) for name, i, j, oi, vol in rows]
        self._summary_cache = (key, out)
        return out

    def book_view(self, now_ms: int, index_price: float) -> BookView:
        """The same book at `now_ms`, each entry written only when read (paper_book.BookView)."""
        return BookView(self, now_ms, index_price)

    def book_index(self, now_ms: int) -> BookIndex:
        """Every entry of the book at `now_ms` by name, in the book's order (cached per listing)."""
        key = self.version
        live = [e for e in sorted(self.expiries) if e > now_ms]
        if self._book_index is not None and self._book_index[0] == key and self._book_index[1] == live[:1]:
            return self._book_index[2]
        index: BookIndex = {}
        for exp_ms in live:
            for name, i, j, oi, vol in self.book_rows(exp_ms)[1]:
                index[name] = (exp_ms, i, j, oi, vol)
        self._book_index = (key, live[:1], index)
        return index

    def book_rows(self, exp_ms: int) -> tuple[str, list[tuple[str, int, int, float, float]]]:
        """What the book summary needs of an expiry's options that does not move with the market:
        (underlying index, [(name, strike row i, row j among calls then puts, open interest, volume)]),
        cached per listing (the specs list is replaced when strikes are added)."""
        specs = self.by_expiry[exp_ms]
        cache = self._book_rows_cache
        hit = cache.get(exp_ms)
        if hit is not None and hit[0] is specs:
            return hit[1]
        e = self.expiries[exp_ms]
        index = {k: n for n, k in enumerate(e.strikes)}
        n = len(e.strikes)
        rows = [(sp.name, index[sp.strike], index[sp.strike] + (0 if sp.option_type == "call" else n),
                 sp.open_interest, sp.volume) for sp in specs]
        cache[exp_ms] = (specs, (underlying_index(self.currency, e), rows))
        if len(cache) > 4 * len(self.expiries) + 16:
            for old in [k for k in cache if k not in self.by_expiry]:
                del cache[old]
        return cache[exp_ms][1]
