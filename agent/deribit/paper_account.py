"""Account endpoints of the paper exchange: summary, positions, settlement history."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .paper_market import (
    Market,
    OptionSpec,
)
from .paper_rpc import RpcError, _opt, _req, _rpc
from .paper_records import LIMITS, PositionRec, _Figures, _r, fee_for, short_margin

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


class AccountMixin:
    # --- account ----------------------------------------------------------------------------

    def _figures(self, cur: str, now: int) -> _Figures:
        market, acct, f = self.markets[cur], self.accounts[cur], _Figures()
        for name, pos in acct.positions.items():
            spec = market.options.get(name)
            if spec is None or pos.size == 0:
                continue
            q = market.quote(spec, now)
            g = market.greeks(spec, q)
            f.options_value += pos.size * q.mark
            f.options_pl += pos.size * (q.mark - pos.average_price)
            f.options_delta += pos.size * (g["delta"] - q.mark)  # premium-adjusted, as Deribit's options_delta
            f.options_gamma += pos.size * g["gamma"]
            f.options_vega += pos.size * g["vega"]
            f.options_theta += pos.size * g["theta"]
            if pos.size < 0:
                im, mm = short_margin(spec, q)
                f.position_im += -pos.size * im
                f.position_mm += -pos.size * mm
        open_sells: dict[str, float] = {}
        for o in self._open.values():
            if o.currency != cur:
                continue
            if o.direction == "buy":
                f.buy_orders_reserve += o.remaining * o.price + fee_for(o.remaining, o.price)
            elif not o.reduce_only:
                open_sells[o.instrument_name] = open_sells.get(o.instrument_name, 0.0) + o.remaining
        for name, amount in open_sells.items():
            spec = market.options.get(name)
            if spec is None:
                continue
            long = max(acct.positions.get(name, PositionRec()).size, 0.0)
            f.sell_orders_im += max(amount - long, 0.0) * short_margin(spec, market.quote(spec, now))[0]
        return f

    def _available_funds(self, cur: str, now: int) -> float:
        f = self._figures(cur, now)
        return self.accounts[cur].balance + f.options_value - f.position_im - f.orders_margin

    @_rpc("private/get_account_summary", currency=_req(str), extended=_opt(bool, False))
    def _get_account_summary(self, p: dict[str, Any], now: int) -> dict[str, Any]:
        cur = self._market(p["currency"]).currency
        acct, f = self.accounts[cur], self._figures(cur, now)
        equity = acct.balance + f.options_value
        im = f.position_im + f.orders_margin
        available = equity - im
        return {
            "currency": cur, "equity": _r(equity), "balance": _r(acct.balance), "margin_balance": _r(equity),
            "initial_margin": _r(im), "maintenance_margin": _r(f.position_mm),
            "projected_initial_margin": _r(im), "projected_maintenance_margin": _r(f.position_mm),
            "available_funds": _r(available), "available_withdrawal_funds": _r(max(min(available, acct.balance), 0.0)),
            "delta_total": _r(f.options_delta, 8), "projected_delta_total": _r(f.options_delta, 8),
            "delta_total_map": {f"{cur.lower()}_usd": _r(f.options_delta, 8)},
            "options_delta": _r(f.options_delta, 8), "options_gamma": _r(f.options_gamma, 10),
            "options_vega": _r(f.options_vega, 5), "options_theta": _r(f.options_theta, 5),
            "options_value": _r(f.options_value), "options_pl": _r(f.options_pl),
            "options_session_upl": _r(f.options_pl), "options_session_rpl": _r(acct.realized_pl),
            "session_upl": _r(f.options_pl), "session_rpl": _r(acct.realized_pl),
            "futures_pl": 0.0, "futures_session_upl": 0.0, "futures_session_rpl": 0.0,
            "total_pl": _r(acct.realized_pl + f.options_pl), "fee_balance": 0.0, "spot_reserve": 0.0,
            "portfolio_margining_enabled": False, "cross_collateral_enabled": False, "margin_model": "segregated_sm",
            "limits": LIMITS, "creation_timestamp": acct.creation_timestamp, "type": "main",
            "username": "paper", "system_name": "paper", "id": 1, "estimated_liquidation_ratio": 0.0,
        }

    def _position_wire(self, market: Market, spec: OptionSpec, pos: PositionRec, now: int) -> dict[str, Any]:
        q = market.quote(spec, now)
        g = market.greeks(spec, q)
        im, mm = short_margin(spec, q) if pos.size < 0 else (0.0, 0.0)
        floating = pos.size * (q.mark - pos.average_price)
        return {
            "instrument_name": spec.name, "kind": "option", "size": _r(pos.size, 8),
            "direction": "buy" if pos.size > 0 else "sell" if pos.size < 0 else "zero",
            "average_price": _r(pos.average_price, 8), "average_price_usd": _r(pos.average_price * q.forward, 2),
            "mark_price": q.mark, "index_price": q.spot, "settlement_price": q.mark,
            "delta": _r(pos.size * (g["delta"] - q.mark), 8),  # premium-adjusted, like options_delta "gamma": _r(pos.size * g["gamma"], 10),
            "vega": _r(pos.size * g["vega"], 5), "theta": _r(pos.size * g["theta"], 5),
            "floating_profit_loss": _r(floating), "floating_profit_loss_usd": _r(floating * q.forward, 2),
            "realized_profit_loss": _r(pos.realized_pl), "total_profit_loss": _r(floating + pos.realized_pl),
            "initial_margin": _r(-pos.size * im) if pos.size < 0 else 0.0,
            "maintenance_margin": _r(-pos.size * mm) if pos.size < 0 else 0.0,
            "size_currency": _r(pos.size, 8), "open_orders_margin": 0.0,
        }

    @_rpc("private/get_positions", currency=_req(str), kind=_opt(str))
    def _get_positions(self, p: dict[str, Any], now: int) -> list[dict[str, Any]]:
        market = self._market(p["currency"])
        if p["kind"] not in (None, "option"):
            return []
        acct = self.accounts[market.currency]
        return [self._position_wire(market, market.options[n], pos, now)
                for n, pos in sorted(acct.positions.items()) if pos.size != 0 and n in market.options]

    @_rpc("private/get_position", instrument_name=_req(str))
    def _get_position(self, p: dict[str, Any], now: int) -> dict[str, Any]:
        market, spec, expired = self._find_spec(p["instrument_name"])
        if spec is None or expired:
            raise RpcError(13020, {"instrument_name": p["instrument_name"]})
        pos = self.accounts[market.currency].positions.get(spec.name, PositionRec())
        return self._position_wire(market, spec, pos, now)

    @_rpc("private/get_settlement_history_by_currency", currency=_req(str), type=_opt(str), count=_opt(int, 20))
    def _get_settlements(self, p: dict[str, Any], now: int) -> dict[str, Any]:
        cur = self._market(p["currency"]).currency
        rows = [s for s in reversed(self.settlements[cur]) if p["type"] in (None, s["type"])]
        return {"settlements": rows[: max(p["count"], 1)], "continuation": None}
