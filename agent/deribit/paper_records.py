"""The paper exchange's constants and account records: orders, positions, accounts, fees, margin."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..pricing import call_price_coin
from .paper_market import (
    OptionSpec,
    Quote,
)


if TYPE_CHECKING:
    pass

STATE_VERSION = 1
FEE_PER_CONTRACT = 0.0003
FEE_CAP = 0.125  # of the premium of the fill
SCOPE = "connection mainaccount trade:read_write account:read"
REFRESH_TTL_S = 7 * 86_400
TIME_IN_FORCE = ("good_til_cancelled", "good_til_day", "fill_or_kill", "immediate_or_cancel")
LIMITS = {"limits_per_currency": False, "non_matching_engine": {"rate": 20, "burst": 100},
          "matching_engine": {"trading": {"total": {"rate": 5, "burst": 20}}}}
_DEFAULT = object()  # "not given": default state path, credentials from the environment


# --- account records ----------------------------------------------------------------------------


def _r(x: float, nd: int = 10) -> float:
    return round(x, nd) + 0.0  # + 0.0 turns -0.0 into 0.0


@dataclass
class OrderRec:
    order_id: str
    currency: str
    instrument_name: str
    direction: str
    amount: float
    price: float
    label: str
    time_in_force: str
    post_only: bool
    reduce_only: bool
    creation_timestamp: int
    last_update_timestamp: int
    order_state: str = "open"
    filled_amount: float = 0.0
    average_price: float = 0.0
    cancel_reason: str | None = None

    @property
    def remaining(self) -> float:
        return _r(self.amount - self.filled_amount, 8)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "order_id": self.order_id,
            "instrument_name": self.instrument_name,
            "direction": self.direction,
            "amount": self.amount,
            "filled_amount": _r(self.filled_amount, 8),
            "price": self.price,
            "average_price": _r(self.average_price, 8),
            "order_state": self.order_state,
            "order_type": "limit",
            "label": self.label,
            "time_in_force": self.time_in_force,
            "post_only": self.post_only,
            "reduce_only": self.reduce_only,
            "creation_timestamp": self.creation_timestamp,
            "last_update_timestamp": self.last_update_timestamp,
            "api": True,
            "web": False,
            "max_show": self.amount,
            "is_liquidation": False,
            "is_rebalance": False,
            "replaced": False,
            "mmp": False,
            "risk_reducing": False,
        }
        if self.cancel_reason:
            out["cancel_reason"] = self.cancel_reason
        return out


@dataclass
class PositionRec:
    size: float = 0.0  # coin; negative for shorts
    average_price: float = 0.0
    realized_pl: float = 0.0


@dataclass
class AccountRec:
    currency: str
    balance: float
    deposit: float
    creation_timestamp: int
    realized_pl: float = 0.0
    fees_paid: float = 0.0
    positions: dict[str, PositionRec] = field(default_factory=dict)


@dataclass
class _Figures:
    """An account's derived numbers at one instant."""

    options_value: float = 0.0
    options_pl: float = 0.0
    options_delta: float = 0.0
    options_gamma: float = 0.0
    options_vega: float = 0.0
    options_theta: float = 0.0
    position_im: float = 0.0
    position_mm: float = 0.0
    sell_orders_im: float = 0.0
    buy_orders_reserve: float = 0.0

    @property
    def orders_margin(self) -> float:
        return self.sell_orders_im + self.buy_orders_reserve


def fee_for(amount: float, price: float) -> float:
    """Deribit's option fee: 0.0003 coin per contract, capped at 12.5 % of the premium of the fill."""
    return _r(min(FEE_PER_CONTRACT * amount, FEE_CAP * price * amount), 10)


def short_margin(spec: OptionSpec, q: Quote) -> tuple[float, float]:
    """(initial, maintenance) margin per short contract: max(0.15 - OTM/underlying, 0.1) + mark; 0.075 + mark."""
    otm = max(spec.strike - q.forward, 0.0) if spec.option_type == "call" else max(q.forward - spec.strike, 0.0)
    return max(0.15 - otm / q.forward, 0.1) + q.mark, 0.075 + q.mark


def _implied_vol(price: float, spec: OptionSpec, q: Quote) -> float:
    """The vol (percent) at which Black-76 gives `price`, by bisection; 0 when below intrinsic."""
    if price <= 0 or q.t_years <= 0:
        return 0.0
    target = price if spec.option_type == "call" else price + (q.forward - spec.strike) / q.forward
    if target <= max(q.forward - spec.strike, 0.0) / q.forward + 1e-12:
        return 0.0
    lo, hi = 1e-4, 10.0
    if call_price_coin(q.forward, spec.strike, hi, q.t_years) < target:
        return round(hi * 100, 2)
    for _ in range(60):
        mid = (lo + hi) / 2
        if call_price_coin(q.forward, spec.strike, mid, q.t_years) < target:
            lo = mid
        else:
            hi = mid
    return round((lo + hi) / 2 * 100, 2)


def _apply_fill(pos: PositionRec, signed: float, price: float) -> float:
    """Update a position with a signed fill; returns the profit or loss it realized."""
    size, avg = pos.size, pos.average_price
    new = _r(size + signed, 8)
    realized = 0.0
    if size == 0 or (size > 0) == (signed > 0):
        pos.average_price = (abs(size) * avg + abs(signed) * price) / abs(new)
    else:
        closing = min(abs(signed), abs(size))
        realized = closing * (price - avg) * (1 if size > 0 else -1)
        if new == 0:
            pos.average_price = 0.0
        elif (new > 0) != (size > 0):
            pos.average_price = price  # flipped: the remainder opened at this price
    pos.size = new
    pos.realized_pl = _r(pos.realized_pl + realized)
    return realized
