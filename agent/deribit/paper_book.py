"""The paper exchange's book summary: one entry's wire dict, and a whole book read lazily.

`book_row` is the one place an entry of `public/get_book_summary_by_currency` is written.
`BookView` is the same book at one instant for a caller in the same process (the backtest): it
knows every name at once (its index is built once per listing), but writes an entry's dict only
when that entry is read, so a tick that reads a few expiries of a dozen never builds the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .paper_chain import ExpiryTable

if TYPE_CHECKING:
    from .paper_market import Market

# name -> (expiry ms, strike row i, row j among calls then puts, open interest, volume)
BookIndex = dict[str, tuple[int, int, int, float, float]]


def book_row(cur: str, name: str, tab: ExpiryTable, u_index: str, i: int, j: int, oi: float, vol: float,
             index_price: float, now_ms: int) -> dict[str, Any]:
    n = len(tab.call_mark)
    if j < n:
        mark, bid, ask, mid = tab.call_mark[j], tab.call_bid[j], tab.call_ask[j], tab.call_mid[j]
    else:
        k = j - n
        mark, bid, ask, mid = tab.put_mark[k], tab.put_bid[k], tab.put_ask[k], tab.put_mid[k]
    return {
        "instrument_name": name, "base_currency": cur, "quote_currency": cur,
        "bid_price": bid, "ask_price": ask, "mid_price": mid, "mark_price": mark, "mark_iv": tab.iv_pct[i],
        "underlying_price": tab.forward, "underlying_index": u_index, "estimated_delivery_price": index_price,
        "interest_rate": 0.0, "open_interest": oi, "volume": vol, "creation_timestamp": now_ms,
    }


class BookView:
    """The book summary of one market at one instant: `names` (every entry, in the wire's order),
    `len()`, and `row(name)`, the entry's wire dict, written when asked for."""

    def __init__(self, market: "Market", now_ms: int, index_price: float) -> None:
        self.currency = market.currency
        self.now_ms = now_ms
        self.index_price = index_price
        self.index: BookIndex = market.book_index(now_ms)
        spot = market.spot(now_ms)
        self._tabs: dict[int, tuple[ExpiryTable, str]] = {}
        self._market = market
        self._spot = spot
        self._version = market.version  # the listing the index describes

    @property
    def names(self):
        return self.index.keys()

    def __len__(self) -> int:
        return len(self.index)

    def row(self, name: str) -> dict[str, Any]:
        if self._market.version != self._version:
            # Strikes listed or an expiry gone since: the rows the index points at have moved.
            raise RuntimeError("book view read after the market's listing changed: read the book again")
        exp_ms, i, j, oi, vol = self.index[name]
        got = self._tabs.get(exp_ms)
        if got is None:
            m = self._market
            got = self._tabs[exp_ms] = (m._table(m.expiries[exp_ms], self.now_ms, self._spot), m.book_rows(exp_ms)[0])
        tab, u_index = got
        return book_row(self.currency, name, tab, u_index, i, j, oi, vol, self.index_price, self.now_ms)


__all__ = ["BookIndex", "BookView", "book_row"]
