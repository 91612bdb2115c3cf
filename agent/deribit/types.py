"""Typed values parsed from Deribit's JSON-RPC results.

Parsing is tolerant on purpose: unknown fields are ignored, numbers that arrive as strings are
accepted (pydantic's lax mode), and bid/ask/mid may be null.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Wire(BaseModel):
    """Base of every wire value: ignore extra keys, immutable once parsed."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class TickStep(Wire):
    above_price: float
    tick_size: float


class AuthResult(Wire):
    access_token: str
    refresh_token: str | None = None
    expires_in: float
    token_type: str = "bearer"
    scope: str = ""


class IndexPrice(Wire):
    index_price: float
    estimated_delivery_price: float | None = None


class Instrument(Wire):
    instrument_name: str
    kind: str
    base_currency: str | None = None
    option_type: str | None = None
    strike: float | None = None
    expiration_timestamp: int
    creation_timestamp: int | None = None
    min_trade_amount: float
    contract_size: float = 1.0
    tick_size: float
    tick_size_steps: tuple[TickStep, ...] = ()
    is_active: bool = True
    settlement_period: str | None = None
    instrument_type: str | None = None

    @field_validator("tick_size_steps", mode="before")
    @classmethod
    def _none_steps(cls, v):
        return () if v is None else v


class BookSummary(Wire):
    """One option of `get_book_summary_by_currency`: the fields the agent reads, no more. The book
    is the largest answer of every tick (thousands of entries); each field kept costs its parse on
    every entry, so the ones nothing reads (underlying_index, estimated_delivery_price,
    interest_rate, volume, creation_timestamp) are left to `extra="ignore"`."""

    instrument_name: str
    bid_price: float | None = None
    ask_price: float | None = None
    mid_price: float | None = None
    mark_price: float | None = None
    mark_iv: float | None = None
    underlying_price: float | None = None
    open_interest: float | None = None


class Greeks(Wire):
    delta: float | None = None
    gamma: float | None = None
    vega: float | None = None
    theta: float | None = None
    rho: float | None = None


class Ticker(Wire):
    instrument_name: str
    timestamp: int | None = None
    state: str | None = None
    best_bid_price: float | None = None
    best_ask_price: float | None = None
    best_bid_amount: float | None = None
    best_ask_amount: float | None = None
    mark_price: float | None = None
    mark_iv: float | None = None
    bid_iv: float | None = None
    ask_iv: float | None = None
    underlying_price: float | None = None
    index_price: float | None = None
    open_interest: float | None = None
    greeks: Greeks | None = None


class AccountSummary(Wire):
    currency: str
    equity: float
    balance: float | None = None
    margin_balance: float | None = None
    initial_margin: float = 0.0
    maintenance_margin: float = 0.0
    available_funds: float | None = None
    delta_total: float | None = None
    options_delta: float = 0.0
    options_value: float | None = None
    projected_initial_margin: float | None = None
    portfolio_margining_enabled: bool | None = None


class Position(Wire):
    instrument_name: str
    kind: str | None = None
    size: float
    direction: str | None = None
    average_price: float | None = None
    mark_price: float | None = None
    delta: float | None = None
    floating_profit_loss: float | None = None
    settlement_price: float | None = None
    index_price: float | None = None

    @property
    def signed_size(self) -> float:
        """Size with shorts negative, whichever sign convention the server used."""
        if self.direction == "sell":
            return -abs(self.size)
        if self.direction == "buy":
            return abs(self.size)
        return self.size


class Order(Wire):
    order_id: str
    instrument_name: str
    direction: str
    amount: float
    filled_amount: float = 0.0
    # A number, or the string "market_price" for market orders.
    price: float | str | None = None
    average_price: float | None = 0.0
    order_state: str
    order_type: str | None = None
    label: str = ""
    time_in_force: str | None = None
    reduce_only: bool | None = None
    post_only: bool | None = None
    creation_timestamp: int | None = None
    last_update_timestamp: int | None = None

    @field_validator("order_id", mode="before")
    @classmethod
    def _order_id_str(cls, v):
        return str(v)

    @field_validator("price", mode="before")
    @classmethod
    def _price(cls, v):
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                return v
        return v


class Trade(Wire):
    trade_id: str
    order_id: str | None = None
    instrument_name: str
    direction: str
    amount: float
    price: float
    fee: float | None = None
    fee_currency: str | None = None
    timestamp: int | None = None
    label: str | None = None
    state: str | None = None
    index_price: float | None = None
    mark_price: float | None = None

    @field_validator("trade_id", "order_id", mode="before")
    @classmethod
    def _ids_str(cls, v):
        return None if v is None else str(v)


class OrderResult(Wire):
    order: Order
    trades: tuple[Trade, ...] = Field(default_factory=tuple)


class UserTrades(Wire):
    trades: tuple[Trade, ...] = ()
    has_more: bool = False


class SettlementEntry(Wire):
    type: str
    timestamp: int
    instrument_name: str | None = None
    position: float | None = None
    mark_price: float | None = None  # delivery: the option's payoff per contract, in coin
    index_price: float | None = None  # the delivery price (USD)
    profit_loss: float | None = None
    session_profit_loss: float | None = None


class Settlements(Wire):
    settlements: tuple[SettlementEntry, ...] = ()
    continuation: str | None = None
