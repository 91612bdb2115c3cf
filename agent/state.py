"""Build the agent's view of the world from the exchange in a handful of requests.

Index price, instruments (cached), the whole option book in one `get_book_summary_by_currency`,
the account summary, the positions and the open orders: at most 5 requests whatever the chain's
size (6 when the instruments cache is refreshed). Deltas are
computed locally (Black-76 from mark_iv and the forward) instead of one `ticker` per option.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from datetime import datetime, timezone

from .clock import Clock, WallClock, to_datetime
from .config import Settings
from .deribit.client import DeribitClient, InstrumentList
from .deribit.types import BookSummary, Instrument
from .models import AccountState, AgentState, Candidate, OptionPosition, PositionHistory, WorkingOrder
from .policy import distance
from .pricing import YEAR_SECONDS, call_delta, years_between

DAY_MS = 86_400_000
_NAME = re.compile(r"^(?P<cur>[A-Z]+)-(?P<day>\d{1,2})(?P<mon>[A-Z]{3})(?P<yy>\d{2})-(?P<strike>[\d.]+)-(?P<cp>[CP])$")
_MONTHS = {m: i for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), start=1)}


async def build_agent_state(
    client: DeribitClient,
    settings: Settings,
    *,
    clock: Clock | None = None,
    history: PositionHistory | None = None,
) -> AgentState:
    """Read the exchange once and return an immutable AgentState stamped with its time."""
    clock = clock or WallClock()
    cur = settings.underlying
    with client.measure() as counter:
        index, instruments, book, account, positions, orders = await asyncio.gather(
            client.get_index_price(settings.index_name),
            client.get_instruments(cur, "option"),
            client.get_book_summary_by_currency(cur, "option"),
            client.get_account_summary(cur),
            client.get_positions(cur, "option"),
            client.get_open_orders_by_currency(cur, "option"),
        )
    now_ms = clock.now_ms()
    listed = instruments if isinstance(instruments, InstrumentList) else InstrumentList(instruments)
    by_name = listed.by_name
    books = book_index(book)
    if not books.keys() <= by_name.keys():
        client.invalidate_instruments()  # a new expiry was listed: refetch (the 10 s limit permitting)
    chain = Chain(listed, books)
    near = _nearest_expiries(chain, now_ms, settings.target_dte or 7.0)
    spot = index.index_price

    candidates = select_candidates(chain, settings, now_ms)
    pos_values = []
    for n, p in enumerate((p for p in positions if abs(p.signed_size) > 0), start=1):
        pos_values.append(_enrich_position(f"p{n}", p, by_name.get(p.instrument_name), books.get(p.instrument_name), spot, now_ms))
    # Where a short call may roll: its own window over the whole chain (no request of its own).
    rolls = select_candidates(chain, settings, now_ms, roll=True) \
        if any(p.is_short_call for p in pos_values) else []

    equity = account.equity
    im = account.initial_margin
    margin_pct = (im / equity * 100.0) if equity > 0 else (100.0 if im > 0 else 0.0)
    return AgentState(
        timestamp=to_datetime(now_ms),
        underlying=cur,
        spot=spot,
        forward=_forward_near(chain, near) or spot,
        account=AccountState(
            currency=cur,
            equity=equity,
            balance=account.balance if account.balance is not None else equity,
            available_funds=account.available_funds if account.available_funds is not None else equity - im,
            initial_margin=im,
            maintenance_margin=account.maintenance_margin,
            margin_used_pct=round(margin_pct, 4),
            options_delta=account.options_delta,
        ),
        positions=tuple(pos_values),
        open_orders=tuple(
            WorkingOrder(order_id=o.order_id, instrument_name=o.instrument_name, direction=o.direction, amount=o.amount,
                         filled_amount=o.filled_amount, price=o.price if isinstance(o.price, float) else None,
                         label=o.label, expiration_timestamp=by_name[o.instrument_name].expiration_timestamp
                         if o.instrument_name in by_name else None)
            for o in orders if o.order_state == "open"
        ),
        candidates=tuple(candidates),
        roll_candidates=tuple(rolls),
        chain_size=len(book),
        **_atm_iv(chain, near, now_ms),
        history=history or PositionHistory(),
        requests=counter.requests,
        credits=counter.credits,
    )


Pairs = list[tuple[Instrument, BookSummary]]


def book_index(book: list[BookSummary]) -> Mapping[str, BookSummary]:
    """Book entries by name: a book that carries its own index (the backtest's, validated as
    read) gives it; a list is indexed here."""
    index = getattr(book, "by_name", None)
    return index if index is not None else {b.instrument_name: b for b in book}


class Chain:
    """The chain's calls by expiry, each expiry's paired with this tick's book entries when first
    asked for: a tick reads a few expiries of a dozen (the DTE windows, the one nearest the
    target), so the rest of a book of thousands is never walked in Python."""

    def __init__(self, instruments: InstrumentList, books: Mapping[str, BookSummary]) -> None:
        self._by_expiry = instruments.by_expiry
        self._books = books
        self._pairs: dict[int, Pairs] = {}

    def expiries(self) -> list[int]:
        return list(self._by_expiry)

    def pairs(self, expiry_ms: int) -> Pairs:
        """(instrument, book entry) of the expiry's calls that have a book entry (what is sold,
        what sets the ATM vol and the forward; a put's entry is never read)."""
        got = self._pairs.get(expiry_ms)
        if got is None:
            books = self._books
            got = self._pairs[expiry_ms] = [(i, books[i.instrument_name]) for i in self._by_expiry.get(expiry_ms, ())
                                            if i.option_type == "call" and i.instrument_name in books]
        return got


def select_candidates(chain: Chain, settings: Settings, now_ms: int, *, roll: bool = False) -> list[Candidate]:
    """Calls inside the profile's DTE window and delta band that pass the liquidity filters, nearest
    the targets first. With `roll`, the roll window instead (ROLL_MIN_DTE..ROLL_MAX_DTE, delta up to
    ROLL_MAX_DELTA, nearest ROLL_TARGET_DELTA), ids "r1", "r2", ..."""
    if roll:
        min_dte, max_dte, min_delta, max_delta = (settings.roll_min_dte, settings.roll_max_dte, 0.01,
                                                  settings.roll_max_delta)
        target_delta = settings.roll_target_delta
        target_dte = min(max(settings.target_dte, min_dte), max_dte)  # type: ignore[type-var]
    else:
        min_dte, max_dte, min_delta, max_delta = settings.min_dte, settings.max_dte, settings.min_delta, settings.max_delta
        target_delta, target_dte = settings.target_delta, settings.target_dte
    found: list[tuple[tuple, dict]] = []
    max_spread, min_oi = settings.max_spread_pct, settings.min_open_interest
    pairs = [p for exp_ms in chain.expiries()
             if min_dte <= (exp_ms - now_ms) / DAY_MS <= max_dte for p in chain.pairs(exp_ms)]  # type: ignore[operator]
    for inst, b in pairs:
        if not inst.is_active or inst.strike is None:  # pairs are calls only
            continue
        dte = (inst.expiration_timestamp - now_ms) / DAY_MS
        if not b.bid_price or not b.ask_price or not b.mark_iv or not b.underlying_price:
            continue  # no bid (or no ask to judge the spread): not liquid enough to sell into
        mid = (b.bid_price + b.ask_price) / 2
        spread_pct = (b.ask_price - b.bid_price) / mid * 100.0
        if spread_pct > max_spread:  # type: ignore[operator]
            continue
        if (b.open_interest or 0.0) < min_oi:  # type: ignore[operator]
            continue
        fwd = b.underlying_price
        t = years_between(now_ms, inst.expiration_timestamp)
        delta = call_delta(fwd, inst.strike, b.mark_iv / 100.0, t)
        if not (min_delta <= delta <= max_delta):  # type: ignore[operator]
            continue
        mark = b.mark_price if b.mark_price is not None else mid
        annual_yield = round(b.bid_price * (365.0 / dte) * 100.0 if dte > 0 else 0.0, 3)
        score = round(candidate_score(delta, dte, settings, target_delta=target_delta, target_dte=target_dte), 4)
        found.append(((-score, -annual_yield, inst.expiration_timestamp, inst.strike), dict(
            instrument_name=inst.instrument_name,
            strike=inst.strike,
            expiration_timestamp=inst.expiration_timestamp,
            dte=round(dte, 4),
            delta=round(delta, 4),
            mark_iv=b.mark_iv,
            forward=fwd,
            bid=b.bid_price,
            ask=b.ask_price,
            mark=mark,
            bid_usd=round(b.bid_price * fwd, 2),
            ask_usd=round(b.ask_price * fwd, 2),
            mark_usd=round(mark * fwd, 2),
            otm_pct=round((inst.strike / fwd - 1.0) * 100.0, 3),
            annualized_yield_pct=annual_yield,
            open_interest=b.open_interest or 0.0,
            spread_pct=round(spread_pct, 3),
            score=score,
            min_trade_amount=inst.min_trade_amount,
            tick_size=inst.tick_size,
            tick_size_steps=tuple((s.above_price, s.tick_size) for s in inst.tick_size_steps),
        )))
    # Best first; the ids follow the order (Candidate is immutable: built once, with its id).
    found.sort(key=lambda f: f[0])
    prefix = "r" if roll else "c"
    return [Candidate(id=f"{prefix}{n}", **fields) for n, (_, fields) in enumerate(found, start=1)]


def candidate_score(delta: float, dte: float, settings: Settings, *, target_delta: float | None = None,
                    target_dte: float | None = None) -> float:
    """Minus the distance from the targets (policy.distance: 1 point per 0.01 delta, 2 per day): the
    targets steer; yield is only a floor, applied by the policy. Higher is better."""
    return -distance(delta, dte, target_delta if target_delta is not None else settings.target_delta,  # type: ignore[arg-type]
                     target_dte if target_dte is not None else settings.target_dte)  # type: ignore[arg-type]


def _enrich_position(pid, p, inst: Instrument | None, b: BookSummary | None, spot: float, now_ms: int) -> OptionPosition:
    parsed = parse_option_name(p.instrument_name)
    strike = inst.strike if inst and inst.strike else parsed["strike"]
    expiry = inst.expiration_timestamp if inst else parsed["expiration_timestamp"]
    option_type = inst.option_type if inst and inst.option_type else parsed["option_type"]
    fwd = (b.underlying_price if b and b.underlying_price else None) or spot
    iv = b.mark_iv if b and b.mark_iv else None
    mark = (b.mark_price if b and b.mark_price is not None else None) or p.mark_price or 0.0
    t = years_between(now_ms, expiry)
    if iv:
        d = call_delta(fwd, strike, iv / 100.0, t)
        delta = d if option_type == "call" else d - 1.0
    else:
        size = abs(p.signed_size) or 1.0
        delta = (p.delta or 0.0) / size * (-1 if p.signed_size < 0 else 1)
    return OptionPosition(
        id=pid,
        instrument_name=p.instrument_name,
        option_type=option_type,
        strike=strike,
        expiration_timestamp=expiry,
        dte=round((expiry - now_ms) / DAY_MS, 4),
        size=p.signed_size,
        average_price=p.average_price or 0.0,
        mark=mark,
        bid=b.bid_price if b else None,
        ask=b.ask_price if b else None,
        delta=round(delta, 4),
        mark_iv=iv,
        forward=fwd,
        min_trade_amount=inst.min_trade_amount if inst else 0.1,
        tick_size=inst.tick_size if inst else 0.0001,
        tick_size_steps=tuple((s.above_price, s.tick_size) for s in inst.tick_size_steps) if inst else ((0.005, 0.0005),),
    )


def _nearest_expiries(chain: Chain, now_ms: int, target_dte: float) -> list[int]:
    """The live expiries, nearest `target_dte` first (ties: the earlier): _atm_iv and
    _forward_near pair only the first one or two of them with the book."""
    live = [e for e in chain.expiries() if e > now_ms]
    live.sort(key=lambda e: (round(abs((e - now_ms) / DAY_MS - target_dte), 6), e))
    return live


def _atm_iv(chain: Chain, near: list[int], now_ms: int) -> dict:
    """The volatility the chain prices at: the call nearest the forward at the expiry nearest the
    target DTE (from the book already read: no request of its own)."""
    for e in near:
        best: tuple[float, float, float] | None = None  # (strike gap %, iv, dte)
        for inst, b in chain.pairs(e):
            if not b.mark_iv or not b.underlying_price or inst.strike is None:
                continue
            gap = abs(inst.strike / b.underlying_price - 1.0)
            if best is None or gap < best[0]:
                best = (gap, b.mark_iv, (inst.expiration_timestamp - now_ms) / DAY_MS)
        if best is not None:
            return {"atm_iv": round(best[1], 2), "atm_iv_dte": round(best[2], 2)}
    return {}


def _forward_near(chain: Chain, near: list[int]) -> float | None:
    """The forward (underlying_price) of the expiry nearest the target DTE."""
    for e in near:
        for _, b in chain.pairs(e):
            if b.underlying_price:
                return b.underlying_price
    return None


def parse_option_name(name: str) -> dict:
    """Strike, expiry (08:00 UTC) and type from a Deribit option name such as BTC-4DEC26-97000-C."""
    m = _NAME.match(name)
    if not m:
        raise ValueError(f"not a Deribit option name: {name!r}")
    expiry = datetime(2000 + int(m["yy"]), _MONTHS[m["mon"]], int(m["day"]), 8, tzinfo=timezone.utc)
    return {
        "currency": m["cur"],
        "strike": float(m["strike"]),
        "expiration_timestamp": int(expiry.timestamp() * 1000),
        "option_type": "call" if m["cp"] == "C" else "put",
    }


__all__ = ["build_agent_state", "Chain", "select_candidates", "candidate_score", "parse_option_name", "YEAR_SECONDS"]
