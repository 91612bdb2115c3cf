"""The ledger: what the strategy earned, from the exchange's own records (pure).

Inputs are the exchange's fills (`private/get_user_trades_*`), its settlements
(`private/get_settlement_history_by_currency`) and account snapshots (equity, spot and the marks of
the open positions at one instant). No network, no clock reads, no database: the caller (the store,
a backtest) supplies the rows; every function here is a plain computation over them.

Conventions (coin = the underlying, BTC or ETH; options are inverse: priced and settled in coin):
- A fill's cash flow is `-signed_amount * price - fee` (a sale brings the premium in).
- A settlement's cash flow is `position * payoff`, payoff = Deribit's `mark_price` of the delivery
  (`max(S - K, 0) / S` for a call); a short call in the money pays it.
- Option P&L over a window = cash flows inside it + (value of the open options at its end - at its
  start), value = sum(size * mark). With no deposit or transfer, it equals the change of the
  account's equity (`equity = balance + options value`): `Pnl.check_diff` shows the difference.
- Realized: legs closed in the window (bought back or settled). Unrealized: legs still open, at mark.
- USD: each cash flow at the index of its own moment (the fill's `index_price`, the delivery
  price); open values at the snapshot's spot.
- HODL: the starting equity simply held in coin; the strategy's edge over it is `pnl_coin * spot`.
- A cycle is one leg from open (position leaves 0) to close, roll or expiry (back to 0); a close is
  a roll when a sale of another call goes with it (labels `X-close`/`X-open`, or within
  ROLL_LINK_MS).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

EQUITY_TOLERANCE = 1e-8  # coin; the check of option P&L against the equity change
ROLL_LINK_MS = 15 * 60 * 1000  # a buy-back and a sale this close together are one roll
EPS = 1e-12


@dataclass(frozen=True)
class Fill:
    """One trade of ours, as the exchange reports it."""

    trade_id: str
    timestamp: int  # ms
    instrument_name: str
    direction: str  # buy | sell
    amount: float  # contracts (coin), positive
    price: float  # coin per contract
    fee: float  # coin (negative for a rebate)
    order_id: str | None = None
    label: str = ""
    index_price: float | None = None  # USD, at the fill
    order_state: str | None = None  # the order's state after this fill ("open": a partial fill)

    @property
    def signed_amount(self) -> float:
        return self.amount if self.direction == "buy" else -self.amount

    @property
    def cash_flow(self) -> float:
        """Coin into the account: the premium of a sale, minus what a buy costs, minus the fee."""
        return -self.signed_amount * self.price - self.fee


@dataclass(frozen=True)
class Settlement:
    """One position delivered at expiry (cash-settled)."""

    instrument_name: str
    timestamp: int  # ms
    position: float  # signed contracts at delivery (negative: short)
    payoff: float  # coin per contract (Deribit's `mark_price` of the delivery)
    delivery_price: float  # USD, the index settlement price
    type: str = "delivery"

    @property
    def cash_flow(self) -> float:
        return self.position * self.payoff

    @property
    def in_the_money(self) -> bool:
        return self.payoff > EPS


@dataclass(frozen=True)
class Mark:
    """An open position at one instant."""

    instrument_name: str
    size: float  # signed
    mark: float  # coin per contract

    @property
    def value(self) -> float:
        return self.size * self.mark


@dataclass(frozen=True)
class Snapshot:
    """The account at one instant: equity (coin), the index (USD) and the open positions' marks."""

    timestamp: int  # ms
    equity: float
    spot: float
    marks: tuple[Mark, ...] = ()

    @property
    def options_value(self) -> float:
        return sum(m.value for m in self.marks)

    def mark_of(self, name: str) -> Mark | None:
        return next((m for m in self.marks if m.instrument_name == name), None)


@dataclass(frozen=True)
class Cycle:
    """One leg from open to close, roll or expiry (or still open at the snapshot)."""

    instrument_name: str
    opened_at: int  # ms
    closed_at: int | None  # ms; None while open
    end: str  # open | close | roll | expiry_otm | expiry_itm
    size: float  # largest short (or long) size during the leg, signed
    premium: float  # coin received from sales
    buyback: float  # coin paid for buys
    fees: float
    settlement_cash: float  # coin (negative: paid out on an ITM short)
    open_value: float  # size * mark at the snapshot, 0 once closed
    pnl_coin: float
    pnl_usd: float
    fills: tuple[str, ...] = ()  # trade ids

    @property
    def is_open(self) -> bool:
        return self.closed_at is None


@dataclass(frozen=True)
class Pnl:
    """P&L over [start, end] in coin and USD, its parts, the equity check and the HODL benchmark."""

    start: Snapshot
    end: Snapshot
    premium: float
    buyback: float
    fees: float
    settlement_cash: float
    realized_coin: float
    unrealized_coin: float
    pnl_coin: float
    realized_usd: float
    unrealized_usd: float
    pnl_usd: float
    equity_change: float  # end.equity - start.equity
    check_diff: float  # pnl_coin - equity_change (deposits, transfers, futures, timing)
    hodl_usd: float  # the starting equity held in coin, valued at the end
    strategy_usd: float  # the ending equity, valued at the end
    vs_hodl_usd: float  # strategy_usd - hodl_usd = pnl_coin * end.spot
    fills: int
    settlements: int
    cycles: tuple[Cycle, ...] = field(default_factory=tuple)

    @property
    def check_ok(self) -> bool:
        return abs(self.check_diff) <= EQUITY_TOLERANCE

    @property
    def premium_net(self) -> float:
        """Premium collected net of buy-backs and fees."""
        return self.premium - self.buyback - self.fees

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the equity check spelled out."""
        out = asdict(self)
        out["premium_net"] = self.premium_net
        out["check"] = {"option_pnl_coin": self.pnl_coin, "equity_start": self.start.equity,
                        "equity_end": self.end.equity, "equity_change": self.equity_change,
                        "difference": self.check_diff, "tolerance": EQUITY_TOLERANCE, "ok": self.check_ok}
        return out


# --- from the wire -----------------------------------------------------------------------------


def fill_from_trade(t: Mapping[str, Any]) -> Fill:
    """A Fill from one entry of `private/get_user_trades_*` (or `result.trades` of buy/sell)."""
    return Fill(
        trade_id=str(t["trade_id"]), timestamp=int(t["timestamp"]), instrument_name=str(t["instrument_name"]),
        direction=str(t["direction"]), amount=float(t["amount"]), price=float(t["price"]),
        fee=float(t.get("fee") or 0.0), order_id=None if t.get("order_id") is None else str(t["order_id"]),
        label=str(t.get("label") or ""), index_price=_float(t.get("index_price")),
        order_state=None if t.get("state") is None else str(t["state"]),
    )


def settlement_from_wire(s: Mapping[str, Any]) -> Settlement | None:
    """A Settlement from one entry of `private/get_settlement_history_by_currency`; None unless a delivery."""
    if s.get("type") != "delivery" or not s.get("instrument_name"):
        return None
    return Settlement(
        instrument_name=str(s["instrument_name"]), timestamp=int(s["timestamp"]), position=float(s.get("position") or 0.0),
        payoff=float(s.get("mark_price") or 0.0), delivery_price=float(s.get("index_price") or 0.0),
    )


def _float(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


# --- positions and cycles ----------------------------------------------------------------------


def _events(fills: Iterable[Fill], settlements: Iterable[Settlement]) -> list[Fill | Settlement]:
    """Fills and settlements in time order; at the same instant a settlement comes first."""
    evs: list[Fill | Settlement] = [*fills, *settlements]
    evs.sort(key=lambda e: (e.timestamp, 0 if isinstance(e, Settlement) else 1, getattr(e, "trade_id", "")))
    return evs


def positions(fills: Iterable[Fill], settlements: Iterable[Settlement],
              start: Mapping[str, float] | None = None) -> dict[str, float]:
    """The positions the records imply: `start` plus fills, minus what was delivered (non-zero only)."""
    pos: dict[str, float] = dict(start or {})
    for e in _events(fills, settlements):
        if isinstance(e, Fill):
            pos[e.instrument_name] = round(pos.get(e.instrument_name, 0.0) + e.signed_amount, 8)
        else:
            pos[e.instrument_name] = 0.0
    return {k: v for k, v in pos.items() if abs(v) > EPS}


def reconcile(implied: Mapping[str, float], exchange: Mapping[str, float]) -> list[str]:
    """Differences between the positions the ledger implies and those the exchange reports (empty: agree)."""
    out = []
    for name in sorted(set(implied) | set(exchange)):
        a, b = implied.get(name, 0.0), exchange.get(name, 0.0)
        if abs(a - b) > 1e-8:
            out.append(f"{name}: ledger {a:+g}, exchange {b:+g}")
    return out


@dataclass
class _Open:
    name: str
    opened_at: int
    size: float = 0.0
    peak: float = 0.0
    premium: float = 0.0
    buyback: float = 0.0
    fees: float = 0.0
    settlement_cash: float = 0.0
    usd: float = 0.0
    fills: list[str] = field(default_factory=list)
    last_label: str = ""


def cycles(fills: Sequence[Fill], settlements: Sequence[Settlement], at: Snapshot | None = None,
           start: Snapshot | None = None) -> list[Cycle]:
    """Every leg in the records, oldest first; legs still open are valued at `at`'s marks.

    A position already open at `start` begins a leg at `start`, valued at its mark then (what it
    was worth is the cost of carrying it into the window).
    """
    legs: dict[str, _Open] = {}
    done: list[tuple[_Open, int, str]] = []
    if start is not None:
        for m in start.marks:
            if abs(m.size) > EPS:
                legs[m.instrument_name] = _Open(m.instrument_name, start.timestamp, size=m.size, peak=m.size,
                                                premium=max(-m.value, 0.0), buyback=max(m.value, 0.0),
                                                usd=-m.value * start.spot)
    for e in _events(fills, settlements):
        name = e.instrument_name
        if isinstance(e, Fill):
            leg = legs.get(name)
            if leg is None:
                leg = legs[name] = _Open(name, e.timestamp)
            leg.size = round(leg.size + e.signed_amount, 8)
            if abs(leg.size) > abs(leg.peak):
                leg.peak = leg.size
            if e.direction == "sell":
                leg.premium += e.amount * e.price
            else:
                leg.buyback += e.amount * e.price
            leg.fees += e.fee
            leg.usd += e.cash_flow * (e.index_price or 0.0)
            leg.fills.append(e.trade_id)
            leg.last_label = e.label
            if abs(leg.size) <= EPS:
                done.append((legs.pop(name), e.timestamp, "close"))
        else:
            leg = legs.pop(name, None)
            if leg is None:
                leg = _Open(name, e.timestamp, size=e.position, peak=e.position)
            leg.settlement_cash += e.cash_flow
            leg.usd += e.cash_flow * e.delivery_price
            done.append((leg, e.timestamp, "expiry_itm" if e.in_the_money else "expiry_otm"))
    out = []
    sales = [f for f in fills if f.direction == "sell"]
    for leg, closed, end in done:
        if end == "close" and _is_roll(leg, closed, sales):
            end = "roll"
        out.append(_cycle(leg, closed, end, 0.0, 0.0))
    for leg in legs.values():
        m = at.mark_of(leg.name) if at is not None else None
        value = leg.size * m.mark if m is not None else 0.0
        out.append(_cycle(leg, None, "open", value, value * (at.spot if at is not None else 0.0)))
    out.sort(key=lambda c: (c.opened_at, c.instrument_name))
    return out


def _is_roll(leg: _Open, closed: int, sales: Sequence[Fill]) -> bool:
    stem = leg.last_label[: -len("-close")] if leg.last_label.endswith("-close") else None
    for f in sales:
        if f.instrument_name == leg.name:
            continue
        if stem is not None and f.label == f"{stem}-open":
            return True
        if abs(f.timestamp - closed) <= ROLL_LINK_MS:
            return True
    return False


def _cycle(leg: _Open, closed: int | None, end: str, value: float, value_usd: float) -> Cycle:
    pnl = leg.premium - leg.buyback - leg.fees + leg.settlement_cash + value
    return Cycle(instrument_name=leg.name, opened_at=leg.opened_at, closed_at=closed, end=end, size=leg.peak,
                 premium=leg.premium, buyback=leg.buyback, fees=leg.fees, settlement_cash=leg.settlement_cash,
                 open_value=value, pnl_coin=pnl, pnl_usd=leg.usd + value_usd, fills=tuple(leg.fills))


# --- P&L ---------------------------------------------------------------------------------------


def pnl(fills: Sequence[Fill], settlements: Sequence[Settlement], start: Snapshot, end: Snapshot) -> Pnl:
    """P&L of the records between two snapshots, checked against the equity change.

    At a snapshot's own millisecond, a fill counts as after it (the bot reads the account, then
    trades) and a settlement as before it (expiry happens first at its instant): fills in
    [start, end), settlements in (start, end]."""
    fs = [f for f in fills if start.timestamp <= f.timestamp < end.timestamp]
    ss = [s for s in settlements if start.timestamp < s.timestamp <= end.timestamp]
    legs = cycles(fs, ss, at=end, start=start)
    premium = sum(f.amount * f.price for f in fs if f.direction == "sell")
    buyback = sum(f.amount * f.price for f in fs if f.direction == "buy")
    fees = sum(f.fee for f in fs)
    settlement_cash = sum(s.cash_flow for s in ss)
    cash = sum(f.cash_flow for f in fs) + settlement_cash
    pnl_coin = cash + end.options_value - start.options_value
    realized = sum(c.pnl_coin for c in legs if not c.is_open)
    unrealized = sum(c.pnl_coin for c in legs if c.is_open)
    realized_usd = sum(c.pnl_usd for c in legs if not c.is_open)
    unrealized_usd = sum(c.pnl_usd for c in legs if c.is_open)
    equity_change = end.equity - start.equity
    return Pnl(
        start=start, end=end, premium=premium, buyback=buyback, fees=fees, settlement_cash=settlement_cash,
        realized_coin=realized, unrealized_coin=unrealized, pnl_coin=pnl_coin,
        realized_usd=realized_usd, unrealized_usd=unrealized_usd, pnl_usd=realized_usd + unrealized_usd,
        equity_change=equity_change, check_diff=pnl_coin - equity_change,
        hodl_usd=start.equity * end.spot, strategy_usd=end.equity * end.spot, vs_hodl_usd=pnl_coin * end.spot,
        fills=len(fs), settlements=len(ss), cycles=tuple(legs),
    )


def snapshot_before(snapshots: Sequence[Snapshot], ts: int) -> Snapshot | None:
    """The latest snapshot at or before `ts`, else the earliest one (the ledger's baseline)."""
    before = [s for s in snapshots if s.timestamp <= ts]
    if before:
        return max(before, key=lambda s: s.timestamp)
    return min(snapshots, key=lambda s: s.timestamp) if snapshots else None


def with_marks(snap: Snapshot, marks: Iterable[Mark]) -> Snapshot:
    return replace(snap, marks=tuple(marks))


__all__ = ["Cycle", "EQUITY_TOLERANCE", "Fill", "Mark", "Pnl", "ROLL_LINK_MS", "Settlement", "Snapshot", "cycles",
           "fill_from_trade", "pnl", "positions", "reconcile", "settlement_from_wire", "snapshot_before", "with_marks"]
