"""Order endpoints of the paper exchange: place, match, edit, cancel, order state, user trades."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable

from ..pricing import is_on_grid
from .paper_market import (
    MIN_TRADE,
    TICK_SIZE,
    TICK_STEPS,
    OptionSpec,
    Quote,
)
from .paper_rpc import RpcError, _invalid, _opt, _req, _rpc
from .paper_records import OrderRec, PositionRec, TIME_IN_FORCE, _apply_fill, _r, fee_for, short_margin

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


class OrdersMixin:
    # --- orders -----------------------------------------------------------------------------

    _ORDER_PARAMS = dict(instrument_name=_req(str), amount=_req(float), type=_opt(str, "limit"), price=_opt(float),
                         label=_opt(str, ""), time_in_force=_opt(str, "good_til_cancelled"), post_only=_opt(bool, False),
                         reduce_only=_opt(bool, False), reject_post_only=_opt(bool, False), max_show=_opt(float))

    @_rpc("private/buy", **_ORDER_PARAMS)
    def _buy(self, p: dict[str, Any], now: int) -> dict[str, Any]:
        return self._place("buy", p, now)

    @_rpc("private/sell", **_ORDER_PARAMS)
    def _sell(self, p: dict[str, Any], now: int) -> dict[str, Any]:
        return self._place("sell", p, now)

    def _reducible(self, order: OrderRec | None, amount: float, *, name: str = "", direction: str = "",
                   currency: str = "") -> float:
        """How much of a reduce_only order may fill now: never more than the opposite position."""
        if order is not None:
            name, direction, currency = order.instrument_name, order.direction, order.currency
        size = self.accounts[currency].positions.get(name, PositionRec()).size
        opposite = -size if direction == "buy" else size
        return _r(min(amount, max(opposite, 0.0)), 8)

    def _place(self, direction: str, p: dict[str, Any], now: int) -> dict[str, Any]:
        name = p["instrument_name"]
        market, spec, expired = self._find_spec(name)
        if spec is None or expired:
            raise RpcError(10020, {"instrument_name": name, "reason": "instrument expired" if expired else "unknown instrument"})
        if p["type"] != "limit":
            raise RpcError(11050, {"param": "type", "reason": "the paper exchange accepts limit orders only"})
        label = p["label"] or ""
        if len(label) > 64:
            raise _invalid("label", "must be at most 64 characters")
        tif = p["time_in_force"]
        if tif not in TIME_IN_FORCE:
            raise _invalid("time_in_force", f"must be one of {', '.join(TIME_IN_FORCE)}")
        price = p["price"]
        if price is None:
            raise _invalid("price", "required for limit orders")
        if price <= 0:
            raise _invalid("price", "must be positive")
        if not is_on_grid(price, TICK_SIZE, TICK_STEPS):
            raise RpcError(10043, {"price": price, "tick_size": TICK_SIZE, "tick_size_steps": list(TICK_STEPS)})
        amount = p["amount"]
        min_amt = MIN_TRADE.get(spec.currency, 1.0)
        if amount <= 0:
            raise RpcError(10021, {"amount": amount, "reason": "must be positive"})
        if amount < min_amt - 1e-12:
            raise RpcError(10002, {"amount": amount, "min_trade_amount": min_amt})
        if Decimal(repr(amount)) % Decimal(repr(min_amt)) != 0:
            raise RpcError(10021, {"amount": amount, "reason": f"must be a multiple of {min_amt}"})
        cur = spec.currency
        if p["reduce_only"]:
            amount = self._reducible(None, amount, name=name, direction=direction, currency=cur)
            if amount <= 0:
                raise RpcError(11050, {"param": "reduce_only", "reason": "no opposite position to reduce"})

        q = market.quote(spec, now)
        crosses = (q.bid is not None and price <= q.bid) if direction == "sell" else price >= q.ask
        if p["post_only"] and crosses:
            raise RpcError(11054, {"price": price, "best_bid": q.bid, "best_ask": q.ask})
        self._check_funds(cur, spec, q, direction, amount, price, p["reduce_only"], now)

        self._order_seq += 1
        order = OrderRec(f"{cur}-{self._order_seq}", cur, name, direction, _r(amount, 8), price, label, tif,
                         p["post_only"], p["reduce_only"], now, now)
        self.orders[order.order_id] = order
        self._open[order.order_id] = order
        self._dirty = True
        trades: list[dict[str, Any]] = []
        take = self._take_depth(name, amount) if crosses else 0.0
        if take > 0:
            # The touch has unlimited depth unless a test limited it (limit_depth): then the order
            # fills what the touch holds and the rest rests at its limit, as on Deribit.
            trades.append(self._fill(order, q.bid if direction == "sell" else q.ask, take, "T", now, spec, q))  # type: ignore[arg-type]
        if order.order_state == "open" and tif in ("immediate_or_cancel", "fill_or_kill"):
            self._close_order(order, "cancelled", now, "immediate_or_cancel" if tif == "immediate_or_cancel" else "fill_or_kill")
        return {"order": order.to_wire(), "trades": trades}

    def limit_depth(self, instrument_name: str, amount: float | None) -> None:
        """Test hook: from now on the touch of `instrument_name` holds only `amount` contracts in
        all (fills use it up), so an order fills partly and rests; None lifts the limit."""
        if amount is None:
            self._depth.pop(instrument_name, None)
        else:
            self._depth[instrument_name] = float(amount)

    def _take_depth(self, name: str, want: float) -> float:
        left = self._depth.get(name)
        if left is None:
            return want
        got = _r(min(want, max(left, 0.0)), 8)
        self._depth[name] = _r(left - got, 8)
        return got

    @_rpc("private/edit", order_id=_req(str), amount=_req(float), price=_opt(float), post_only=_opt(bool, False),
          reduce_only=_opt(bool, False))
    def _edit(self, p: dict[str, Any], now: int) -> dict[str, Any]:
        """Change an open order's price (and amount) in place: same order id, same label. A new price
        that crosses the book fills at once, like a new order."""
        order = self._order(p["order_id"])
        if order.order_state != "open":
            raise RpcError(11044, {"order_id": order.order_id, "order_state": order.order_state},
                           "not_open_order")
        price = order.price if p["price"] is None else p["price"]
        if price <= 0:
            raise _invalid("price", "must be positive")
        if not is_on_grid(price, TICK_SIZE, TICK_STEPS):
            raise RpcError(10043, {"price": price, "tick_size": TICK_SIZE, "tick_size_steps": list(TICK_STEPS)})
        amount = p["amount"]
        if amount < order.filled_amount - 1e-12 or amount <= 0:
            raise RpcError(10021, {"amount": amount, "reason": "must be positive and not below the filled amount"})
        market, spec, expired = self._find_spec(order.instrument_name)
        if spec is None or expired:
            raise RpcError(10020, {"instrument_name": order.instrument_name, "reason": "instrument expired"})
        q = market.quote(spec, now)
        crosses = (q.bid is not None and price <= q.bid) if order.direction == "sell" else price >= q.ask
        if p["post_only"] and crosses:
            raise RpcError(11054, {"price": price, "best_bid": q.bid, "best_ask": q.ask})
        order.price, order.amount, order.last_update_timestamp = price, _r(amount, 8), now
        self._dirty = True
        trades: list[dict[str, Any]] = []
        if order.remaining <= 0:
            order.order_state = "filled"
            self._open.pop(order.order_id, None)
        elif crosses:
            want = self._reducible(order, order.remaining) if order.reduce_only else order.remaining
            take = self._take_depth(order.instrument_name, want)
            if take > 0:
                trades.append(self._fill(order, q.bid if order.direction == "sell" else q.ask, take, "T", now, spec, q))  # type: ignore[arg-type]
        return {"order": order.to_wire(), "trades": trades}

    def _check_funds(self, cur: str, spec: OptionSpec, q: Quote, direction: str, amount: float, price: float,
                     reduce_only: bool, now: int) -> None:
        acct = self.accounts[cur]
        if direction == "sell":
            if reduce_only:
                return
            long = max(acct.positions.get(spec.name, PositionRec()).size, 0.0)
            added = max(amount - long, 0.0) * short_margin(spec, q)[0]
            available = self._available_funds(cur, now)
            if added > available + 1e-12:
                raise RpcError(10009, {"required_margin": _r(added), "available_funds": _r(available)})
        else:
            cost = amount * price + fee_for(amount, price)
            free = acct.balance - self._figures(cur, now).buy_orders_reserve
            if cost > free + 1e-12:
                raise RpcError(10009, {"required": _r(cost), "balance_free": _r(free)})

    def _fill(self, order: OrderRec, price: float, amount: float, liquidity: str, now: int,
              spec: OptionSpec, q: Quote) -> dict[str, Any]:
        """Book one fill: position, premium and fee through the balance, the order, a trade."""
        acct = self.accounts[order.currency]
        signed = amount if order.direction == "buy" else -amount
        pos = acct.positions.setdefault(order.instrument_name, PositionRec())
        fee = fee_for(amount, price)
        realized = _apply_fill(pos, signed, price)
        if pos.size == 0:
            del acct.positions[order.instrument_name]
        acct.balance = _r(acct.balance - signed * price - fee)
        acct.fees_paid = _r(acct.fees_paid + fee)
        acct.realized_pl = _r(acct.realized_pl + realized)

        filled_before = order.filled_amount
        order.filled_amount = _r(filled_before + amount, 8)
        order.average_price = _r((order.average_price * filled_before + price * amount) / order.filled_amount, 8)
        order.last_update_timestamp = now
        if order.remaining <= 0:
            order.order_state = "filled"
            self._open.pop(order.order_id, None)

        trades = self.trades[order.currency]
        prev = next((t for t in reversed(trades) if t["instrument_name"] == order.instrument_name), None)
        if prev is None or price == prev["price"]:
            tick_dir = 1 if prev is None or prev["tick_direction"] in (0, 1) else 3
        else:
            tick_dir = 0 if price > prev["price"] else 2
        self._trade_seq += 1
        seq = self._instrument_trade_seq.get(order.instrument_name, 0) + 1
        self._instrument_trade_seq[order.instrument_name] = seq
        trade = {
            "trade_id": f"{order.currency}-{self._trade_seq}", "trade_seq": seq, "order_id": order.order_id,
            "instrument_name": order.instrument_name, "direction": order.direction, "amount": _r(amount, 8),
            "price": price, "fee": fee, "fee_currency": order.currency, "timestamp": now, "label": order.label,
            "state": order.order_state, "liquidity": liquidity, "index_price": q.spot, "mark_price": q.mark,
            "iv": round(q.iv * 100, 2), "underlying_price": q.forward, "order_type": "limit",
            "tick_direction": tick_dir, "reduce_only": order.reduce_only, "post_only": order.post_only,
            "matching_id": None, "api": True,
        }
        trades.append(trade)
        self._dirty = True
        return trade

    def _close_order(self, order: OrderRec, state: str, now: int, reason: str) -> None:
        order.order_state = state
        order.cancel_reason = reason
        order.last_update_timestamp = now
        self._open.pop(order.order_id, None)
        self._dirty = True

    def _order(self, order_id: str) -> OrderRec:
        order = self.orders.get(order_id)
        if order is None:
            raise RpcError(10004, {"order_id": order_id})
        return order

    @_rpc("private/get_order_state", order_id=_req(str))
    def _get_order_state(self, p: dict[str, Any], now: int) -> dict[str, Any]:
        return self._order(p["order_id"]).to_wire()

    def _by_label(self, currency: str, label: str, open_only: bool) -> list[dict[str, Any]]:
        cur = self._market(currency).currency
        source = self._open.values() if open_only else self.orders.values()
        hits = [o for o in source if o.currency == cur and o.label == label]
        hits.sort(key=lambda o: (o.creation_timestamp, int(o.order_id.rsplit("-", 1)[1])), reverse=True)
        return [o.to_wire() for o in hits]

    @_rpc("private/get_order_state_by_label", currency=_req(str), label=_req(str))
    def _get_order_state_by_label(self, p: dict[str, Any], now: int) -> list[dict[str, Any]]:
        return self._by_label(p["currency"], p["label"], open_only=False)

    @_rpc("private/get_open_orders_by_label", currency=_req(str), label=_req(str))
    def _get_open_orders_by_label(self, p: dict[str, Any], now: int) -> list[dict[str, Any]]:
        return self._by_label(p["currency"], p["label"], open_only=True)

    @_rpc("private/get_open_orders_by_currency", currency=_req(str), kind=_opt(str), type=_opt(str))
    def _get_open_orders_by_currency(self, p: dict[str, Any], now: int) -> list[dict[str, Any]]:
        cur = self._market(p["currency"]).currency
        return [o.to_wire() for o in self._open.values() if o.currency == cur]

    @_rpc("private/cancel", order_id=_req(str))
    def _cancel(self, p: dict[str, Any], now: int) -> dict[str, Any]:
        order = self._order(p["order_id"])
        if order.order_state != "open":
            raise RpcError(11050, {"order_id": order.order_id, "order_state": order.order_state,
                                   "reason": "only open orders can be cancelled"})
        self._close_order(order, "cancelled", now, "user_request")
        return order.to_wire()

    def _cancel_where(self, pred: Callable[[OrderRec], bool], now: int) -> int:
        hits = [o for o in self._open.values() if pred(o)]
        for o in hits:
            self._close_order(o, "cancelled", now, "user_request")
        return len(hits)

    @_rpc("private/cancel_all")
    def _cancel_all(self, p: dict[str, Any], now: int) -> int:
        return self._cancel_where(lambda o: True, now)

    @_rpc("private/cancel_all_by_currency", currency=_req(str), kind=_opt(str))
    def _cancel_all_by_currency(self, p: dict[str, Any], now: int) -> int:
        cur = self._market(p["currency"]).currency
        return self._cancel_where(lambda o: o.currency == cur, now)

    @_rpc("private/cancel_by_label", label=_req(str), currency=_opt(str))
    def _cancel_by_label(self, p: dict[str, Any], now: int) -> int:
        cur = self._market(p["currency"]).currency if p["currency"] else None
        return self._cancel_where(lambda o: o.label == p["label"] and cur in (None, o.currency), now)

    def _trades_page(self, rows: list[dict[str, Any]], count: int, sorting: str) -> dict[str, Any]:
        if not 1 <= count <= 1000:
            raise _invalid("count", "must be between 1 and 1000")
        if sorting not in ("asc", "desc", "default"):
            raise _invalid("sorting", "must be asc, desc or default")
        ordered = rows if sorting == "asc" else list(reversed(rows))
        return {"trades": ordered[:count], "has_more": len(rows) > count}

    @_rpc("private/get_user_trades_by_instrument", instrument_name=_req(str), count=_opt(int, 10),
          sorting=_opt(str, "default"))
    def _get_user_trades_by_instrument(self, p: dict[str, Any], now: int) -> dict[str, Any]:
        name = p["instrument_name"]
        rows = [t for t in self.trades.get(name.split("-", 1)[0], []) if t["instrument_name"] == name]
        return self._trades_page(rows, p["count"], p["sorting"])

    @_rpc("private/get_user_trades_by_currency", currency=_req(str), kind=_opt(str), count=_opt(int, 10),
          sorting=_opt(str, "default"))
    def _get_user_trades_by_currency(self, p: dict[str, Any], now: int) -> dict[str, Any]:
        cur = self._market(p["currency"]).currency
        return self._trades_page(self.trades[cur], p["count"], p["sorting"])

    @_rpc("private/get_user_trades_by_currency_and_time", currency=_req(str), start_timestamp=_req(int),
          end_timestamp=_req(int), kind=_opt(str), count=_opt(int, 10), sorting=_opt(str, "default"))
    def _get_user_trades_by_currency_and_time(self, p: dict[str, Any], now: int) -> dict[str, Any]:
        cur = self._market(p["currency"]).currency
        lo, hi = sorted((p["start_timestamp"], p["end_timestamp"]))
        rows = [t for t in self.trades[cur] if lo <= t["timestamp"] <= hi]
        return self._trades_page(rows, p["count"], p["sorting"])
