"""Feed the ledger from the exchange, incrementally and within the request budget.

The state read already returns the balance and the positions. Fills move the balance (premium or
cost, and a fee) and settlements move a position to zero, so new records are fetched only when
one of them changed since the cursor: a steady tick adds no request. Fills come from
`private/get_user_trades_by_currency_and_time` from the cursor's time on (a page of 100 at a time,
ids already seen at that instant skipped), settlements from
`private/get_settlement_history_by_currency` when a position went away (bought back or delivered).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .deribit.client import DeribitClient
from .ledger import Fill, Mark, Settlement, Snapshot, fill_from_trade, settlement_from_wire
from .models import AgentState

PAGE = 100
SETTLEMENT_PAGE = 50


@dataclass(frozen=True)
class Cursor:
    """Where the ledger stands: the last fill's time and ids at it, the last settlement, the account seen."""

    trades_ms: int = 0
    seen_ids: tuple[str, ...] = ()  # trade ids at trades_ms (the next read starts there, inclusive)
    settlements_ms: int = 0
    seen_settlements: tuple[str, ...] = ()  # "instrument@ts" at settlements_ms
    balance: float | None = None
    positions: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict:
        return {"trades_ms": self.trades_ms, "seen_ids": list(self.seen_ids), "settlements_ms": self.settlements_ms,
                "seen_settlements": list(self.seen_settlements), "balance": self.balance,
                "positions": [list(p) for p in self.positions]}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Cursor":
        if not d:
            return cls()
        return cls(trades_ms=int(d.get("trades_ms", 0)), seen_ids=tuple(d.get("seen_ids", ())),
                   settlements_ms=int(d.get("settlements_ms", 0)), seen_settlements=tuple(d.get("seen_settlements", ())),
                   balance=d.get("balance"), positions=tuple((str(n), float(s)) for n, s in d.get("positions", ())))


@dataclass(frozen=True)
class FeedResult:
    fills: tuple[Fill, ...]
    settlements: tuple[Settlement, ...]
    cursor: Cursor
    requests: int
    reason: str  # why it read (or "unchanged")
    snapshot: Snapshot | None = None
    extra: dict = field(default_factory=dict)


def snapshot_of(state: AgentState) -> Snapshot:
    """The account in a state: equity, spot and the marks of the open positions, at the state's time."""
    return Snapshot(timestamp=int(state.timestamp.timestamp() * 1000), equity=state.account.equity, spot=state.spot,
                    marks=tuple(Mark(p.instrument_name, p.size, p.mark) for p in state.positions))


def _positions(state: AgentState) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((p.instrument_name, round(p.size, 8)) for p in state.positions))


async def sync(client: DeribitClient, state: AgentState, cursor: Cursor, *, force: bool = False) -> FeedResult:
    """New fills and settlements since `cursor`, read only when the state says something changed."""
    now_ms = int(state.timestamp.timestamp() * 1000)
    cur = state.underlying
    held = _positions(state)
    gone = {n for n, _ in cursor.positions} - {n for n, _ in held}
    changed_balance = cursor.balance is None or abs(cursor.balance - state.account.balance) > 1e-12
    if not (force or changed_balance or held != cursor.positions):
        return FeedResult((), (), cursor, 0, "unchanged", snapshot_of(state))
    reason = "start-up" if force else "balance changed" if changed_balance else "positions changed"
    requests = 0
    fills: list[Fill] = []
    start, seen = cursor.trades_ms, set(cursor.seen_ids)
    while True:
        page = await client.get_user_trades_by_currency_and_time(cur, start, now_ms, count=PAGE, sorting="asc")
        requests += 1
        new = [fill_from_trade(t.model_dump()) for t in page.trades if str(t.trade_id) not in seen]
        fills.extend(new)
        if page.trades:
            last = max(int(t.timestamp or 0) for t in page.trades)
            if last > start:
                start, seen = last, set()
            seen |= {str(t.trade_id) for t in page.trades if int(t.timestamp or 0) == start}
        if not page.has_more or not new:
            break
    settlements: list[Settlement] = []
    s_ms, s_seen = cursor.settlements_ms, set(cursor.seen_settlements)
    # A leg the records imply that the exchange no longer shows was bought back or delivered.
    implied = dict(cursor.positions)
    for f in fills:
        implied[f.instrument_name] = round(implied.get(f.instrument_name, 0.0) + f.signed_amount, 8)
    gone |= {n for n, size in implied.items() if abs(size) > 1e-12} - {n for n, _ in held}
    if force or gone:
        hist = await client.get_settlement_history_by_currency(cur, type="delivery", count=SETTLEMENT_PAGE)
        requests += 1
        for entry in hist.settlements:
            s = settlement_from_wire(entry.model_dump())
            if s is None or s.timestamp < s_ms or f"{s.instrument_name}@{s.timestamp}" in s_seen:
                continue
            settlements.append(s)
        settlements.sort(key=lambda s: (s.timestamp, s.instrument_name))
        if settlements:
            top = settlements[-1].timestamp
            if top > s_ms:
                s_ms, s_seen = top, set()
            s_seen |= {f"{s.instrument_name}@{s.timestamp}" for s in settlements if s.timestamp == s_ms}
    fills.sort(key=lambda f: (f.timestamp, f.trade_id))
    new_cursor = replace(cursor, trades_ms=start, seen_ids=tuple(sorted(seen)), settlements_ms=s_ms,
                         seen_settlements=tuple(sorted(s_seen)), balance=state.account.balance, positions=held)
    return FeedResult(tuple(fills), tuple(settlements), new_cursor, requests, reason, snapshot_of(state))


__all__ = ["Cursor", "FeedResult", "snapshot_of", "sync"]
