"""Keeps the stored ledger in step with the exchange, tick by tick, and says what changed.

On start-up: a full catch-up from the stored cursor, then the positions the records imply are
reconciled against the exchange's (a difference is told in chat and logged). Each tick: new fills
and settlements only when the state shows a change (`agent.ledger_feed`), the account snapshot,
and a notice per fill (partial or full) and per expiry (out of the money: premium kept; in the
money: the cash settlement paid).
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

from agent.clock import to_datetime
from agent.deribit.client import DeribitClient
from agent.ledger import Fill, Settlement, positions, reconcile
from agent.ledger_feed import Cursor, FeedResult, sync
from agent.models import AgentState

from .store import Store

log = logging.getLogger(__name__)

Notify = Callable[[str, str], Awaitable[None]]


class LedgerService:
    def __init__(self, store: Store, underlying: str, notify: Notify) -> None:
        self.store = store
        self.underlying = underlying
        self.notify = notify
        self.started = False
        self.last_requests = 0
        self.mismatches: list[str] = []

    async def update(self, client: DeribitClient, state: AgentState) -> FeedResult:
        """Read what is new (everything since the cursor on the first call), store it, tell chat."""
        cursor = Cursor.from_dict(self.store.ledger_cursor(self.underlying))
        first = not self.started
        result = await sync(client, state, cursor, force=first)
        self.last_requests = result.requests
        moved = result.cursor != cursor  # unchanged on most ticks: no cursor write then
        self.store.record_ledger(self.underlying, result.fills, result.settlements,
                                 result.cursor.to_dict() if moved else None, result.snapshot)
        if first:
            self.started = True
            await self._reconcile(state)
            if result.fills or result.settlements:
                log.info("ledger caught up: %d fills, %d settlements", len(result.fills), len(result.settlements))
            return result  # history read at start-up is recorded, not announced again
        for f in result.fills:
            await self.notify("fill", fill_text(f, self.underlying))
        for s in result.settlements:
            await self.notify("expiry", expiry_text(s, self.underlying, self.store))
        return result

    async def _reconcile(self, state: AgentState) -> None:
        fills = self.store.ledger_fills(self.underlying)
        settlements = self.store.ledger_settlements(self.underlying)
        base = self.store.snapshot_at(self.underlying, None, first=True)
        start = {m.instrument_name: m.size for m in base.marks} if base is not None else {}
        if base is not None:
            fills = [f for f in fills if f.timestamp > base.timestamp]
            settlements = [s for s in settlements if s.timestamp > base.timestamp]
        implied = positions(fills, settlements, start)
        held = {p.instrument_name: p.size for p in state.positions}
        self.mismatches = reconcile(implied, held)
        if self.mismatches:
            text = ("Ledger and exchange disagree on positions at start-up (the exchange's figures are used for "
                    "trading; P&L may be off until the records catch up): " + "; ".join(self.mismatches))
            log.warning(text)
            await self.notify("failure", text)


def fill_text(f: Fill, underlying: str) -> str:
    side = "Sold" if f.direction == "sell" else "Bought"
    kind = "Partial fill" if f.order_state == "open" else "Fill"
    usd = f" (${f.amount * f.price * f.index_price:,.2f})" if f.index_price else ""
    return (f"{kind}: {side} {f.amount:g} {f.instrument_name} at {f.price:.4f} {underlying}{usd}, fee {f.fee:.6f}; "
            f"order {f.order_id or '?'}{f' [{f.label}]' if f.label else ''} at {to_datetime(f.timestamp):%H:%M:%S} UTC.")


def expiry_text(s: Settlement, underlying: str, store: Store) -> str:
    sold = [f for f in store.ledger_fills(underlying) if f.instrument_name == s.instrument_name]
    premium = sum(f.amount * f.price for f in sold if f.direction == "sell")
    fees = sum(f.fee for f in sold)
    pnl = premium - sum(f.amount * f.price for f in sold if f.direction == "buy") - fees + s.cash_flow
    if not s.in_the_money:
        return (f"Expired out of the money: {s.instrument_name} ({s.position:+g}) at a delivery price of "
                f"{s.delivery_price:,.2f}. Premium kept: {premium:.6f} {underlying} less {fees:.6f} fees; "
                f"cycle P&L {pnl:+.6f} {underlying}.")
    return (f"Expired in the money: {s.instrument_name} ({s.position:+g}) at a delivery price of {s.delivery_price:,.2f}. "
            f"Cash settlement {'paid' if s.cash_flow < 0 else 'received'}: {abs(s.cash_flow):.6f} {underlying} "
            f"(${abs(s.cash_flow) * s.delivery_price:,.2f}, {s.payoff:.6f} per contract) against {premium:.6f} premium; "
            f"cycle P&L {pnl:+.6f} {underlying}.")
