"""Typed, immutable values that cross module boundaries in the agent."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ActionType(str, Enum):
    DO_NOTHING = "DO_NOTHING"
    OPEN_COVERED_CALL = "OPEN_COVERED_CALL"
    ROLL_COVERED_CALL = "ROLL_COVERED_CALL"
    CLOSE_COVERED_CALL = "CLOSE_COVERED_CALL"


class Candidate(Value):
    """A call that passed the profile's DTE window, delta band and liquidity filters."""

    id: str  # short stable id for the LLM and chat ("c1", "c2", ...)
    instrument_name: str
    strike: float
    expiration_timestamp: int  # ms
    dte: float  # days to expiry, fractional
    delta: float  # Black-76 N(d1), computed locally from mark_iv and the forward: what the targets mean
    mark_iv: float  # percent
    forward: float  # underlying_price of this expiry
    bid: float  # BTC per contract
    ask: float | None
    mark: float
    bid_usd: float
    ask_usd: float | None
    mark_usd: float
    otm_pct: float  # strike above forward, percent
    annualized_yield_pct: float  # bid / 1 coin, annualized over dte, percent
    open_interest: float
    spread_pct: float  # (ask - bid) / mid, percent
    score: float
    min_trade_amount: float
    tick_size: float
    tick_size_steps: tuple[tuple[float, float], ...] = ()  # (above_price, tick_size)

    @property
    def delta_pa(self) -> float:
        """Premium-adjusted delta per contract (N(d1) minus the price in coin), Deribit's convention."""
        return self.delta - self.mark


class OptionPosition(Value):
    """An open option position, enriched with the current book and a local delta."""

    id: str  # "p1", "p2", ...
    instrument_name: str
    option_type: str  # "call" / "put"
    strike: float
    expiration_timestamp: int
    dte: float
    size: float  # signed coin: negative for shorts
    average_price: float  # BTC per contract at entry
    mark: float
    bid: float | None
    ask: float | None
    delta: float  # per contract, Black-76 N(d1) (positive for calls): what the policy's thresholds mean
    mark_iv: float | None
    forward: float
    min_trade_amount: float
    tick_size: float
    tick_size_steps: tuple[tuple[float, float], ...] = ()

    @property
    def delta_pa(self) -> float:
        """Premium-adjusted delta per contract (N(d1) minus the price in coin), as Deribit's options_delta."""
        return self.delta - self.mark

    @property
    def is_short_call(self) -> bool:
        return self.option_type == "call" and self.size < 0


class WorkingOrder(Value):
    """An order resting on the exchange: not yet a position, but it may become one at any moment."""

    order_id: str
    instrument_name: str
    direction: str  # buy | sell
    amount: float
    filled_amount: float
    price: float | None
    label: str
    expiration_timestamp: int | None = None

    @property
    def remaining(self) -> float:
        return max(self.amount - self.filled_amount, 0.0)


class AccountState(Value):
    currency: str
    equity: float  # coin
    balance: float
    available_funds: float
    initial_margin: float
    maintenance_margin: float
    margin_used_pct: float  # initial margin / equity, percent
    options_delta: float  # coin, premium-adjusted (Deribit's options_delta: sum of size * (N(d1) - price))


class Rejection(Value):
    """A proposal people rejected: its action, when, by whom, why, and the price it was made at."""

    proposal_id: int
    action: str  # ActionType value
    symbol: str | None = None
    roll_from: str | None = None
    at: datetime
    by: str
    reason: str | None = None
    ref_price: float | None = None  # the premium sold (open, roll) or the cost bought back (close)

    def key(self) -> tuple[str, str | None, str | None]:
        return (self.action, self.symbol, self.roll_from)

    def text(self) -> str:
        what = f"{self.action} {self.symbol or ''}".strip() + (f" from {self.roll_from}" if self.roll_from else "")
        return f"#{self.proposal_id} {what} rejected at {self.at:%H:%M}Z by {self.by}" + (
            f": {self.reason}" if self.reason else " (no reason given)")


class PositionHistory(Value):
    """What the policy needs to know about past actions (supplied by the caller, e.g. the store)."""

    last_action_at: dict[str, datetime] = Field(default_factory=dict)  # symbol -> time
    roll_count: dict[str, int] = Field(default_factory=dict)  # current symbol -> rolls in its chain
    previous_decision: str | None = None  # one line, for the LLM prompt
    rejections: tuple[Rejection, ...] = ()  # recent rejected proposals, newest first (the cool-down)

    def rejection_note(self, limit: int = 3) -> str | None:
        """One line for the LLM prompt: what people rejected lately, and why."""
        if not self.rejections:
            return None
        return ("Rejected by the operators lately (do not propose the same again unless the market moved): "
                + "; ".join(r.text() for r in self.rejections[:limit]))
    recent_fills: tuple[str, ...] = ()  # the last executions, newest first, one line each (for the LLM prompt)
    realized_vol_7d: float | None = None  # percent, annualized, from the index price of past ticks
    realized_vol_30d: float | None = None


class AgentState(Value):
    timestamp: datetime  # UTC, when the exchange was read
    underlying: str
    spot: float  # index price
    forward: float  # forward of the expiry closest to the target DTE
    account: AccountState
    positions: tuple[OptionPosition, ...] = ()
    open_orders: tuple[WorkingOrder, ...] = ()
    candidates: tuple[Candidate, ...] = ()
    roll_candidates: tuple[Candidate, ...] = ()  # calls in the roll window (ROLL_MIN_DTE..ROLL_MAX_DTE), whole chain
    chain_size: int = 0  # options in the book summary
    atm_iv: float | None = None  # mark IV (percent) of the call nearest the forward, expiry nearest the target DTE
    atm_iv_dte: float | None = None  # that expiry's days to expiry
    history: PositionHistory = Field(default_factory=PositionHistory)
    requests: int = 0  # exchange requests taken to build this state
    credits: int = 0

    @property
    def short_calls(self) -> tuple[OptionPosition, ...]:
        return tuple(p for p in self.positions if p.is_short_call)

    def candidate(self, symbol: str) -> Candidate | None:
        return next((c for c in self.candidates if c.instrument_name == symbol), None)

    def roll_candidate(self, symbol: str) -> Candidate | None:
        """A call a roll may sell: from the roll window, or an opening candidate."""
        return next((c for c in self.roll_candidates if c.instrument_name == symbol), None) or self.candidate(symbol)

    @property
    def net_delta(self) -> float:
        """Coin held plus the options book (premium-adjusted): the account's delta in coin."""
        return self.account.equity + self.account.options_delta

    def position(self, symbol: str) -> OptionPosition | None:
        return next((p for p in self.positions if p.instrument_name == symbol), None)


class Action(Value):
    action: ActionType
    underlying: str
    symbol: str | None = None  # instrument sold (open), bought back (close), or sold (roll: new leg)
    size: float | None = None
    roll_from: str | None = None  # roll only: the call bought back
    reasoning: str = ""
    decision_source: str = "rule"  # rule | llm | llm_fallback
    # Prices the brain saw, BTC per contract: the premium of the leg it sells, the cost of the
    # leg it buys back. Used for the price-drift check at approval time.
    ref_sell_price: float | None = None
    ref_buy_price: float | None = None
    # Something chat should hear once (not every tick), e.g. a deep in-the-money call with no roll.
    notice_key: str | None = None
    notice: str | None = None

    def key(self) -> tuple[str, str | None, str | None]:
        """Identity for 'the same proposal': action, instrument and the leg it rolls from."""
        return (self.action.value, self.symbol, self.roll_from)


class RiskResult(Value):
    allowed: bool
    reasons: tuple[str, ...] = ()  # why it was blocked (empty when allowed)
    checks: tuple[str, ...] = ()  # what was checked and passed, for the record


class OrderRequest(Value):
    instrument_name: str
    side: str  # "buy" | "sell"
    amount: float
    price: float
    label: str
    reduce_only: bool = False
    order_type: str = "limit"


class OrderOutcome(Value):
    request: OrderRequest
    order_id: str | None = None
    order_state: str | None = None  # exchange's: open|filled|rejected|cancelled
    filled_amount: float = 0.0
    average_price: float | None = None
    error_code: int | None = None
    error_message: str | None = None
    reused: bool = False  # found on the exchange by label; nothing sent
    fee: float | None = None  # coin, from the account's trades of this order


class ExecutionStatus(str, Enum):
    SIMULATED = "simulated"
    SUBMITTED = "submitted"
    UNKNOWN = "unknown"  # the send's answer was lost and the label was not found (yet)
    FILLED = "filled"
    PARTIALLY_FILLED = "partially_filled"
    REJECTED = "rejected"
    FAILED = "failed"
    NOTHING = "nothing"  # DO_NOTHING: no order


class ExecutionResult(Value):
    status: ExecutionStatus
    dry_run: bool
    orders: tuple[OrderOutcome, ...] = ()
    message: str = ""
    error_code: int | None = None


class Decision(Value):
    """One tick's snapshot: what was seen, proposed, checked and done."""

    timestamp: datetime
    underlying: str
    state: dict[str, Any]  # compressed state
    proposed_action: Action
    risk_check: RiskResult
    final_action: Action
    execution: ExecutionResult | None = None
    config_snapshot: dict[str, Any] = Field(default_factory=dict)
    decision_source: str = "rule"
    shadow_action: Action | None = None  # the LLM's choice in shadow mode
    llm_calls: tuple[dict[str, Any], ...] = ()  # records of LLM calls made for this decision
    timings_ms: dict[str, float] = Field(default_factory=dict)
    requests: int = 0
    credits: int = 0
