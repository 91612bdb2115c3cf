"""A Deribit-compatible paper exchange: Deribit's JSON-RPC methods over a simulated option market.

`PaperExchange.handle(method, params, token)` answers exactly what Deribit would put in its JSON-RPC
envelope, so the real client (`agent.deribit.client`) runs unchanged against it, in process
(`exchange.transport()`) or over HTTP (`paper_server.serve`). The market (spot path, calendar,
marks) lives in `paper_market`; this module owns the accounts, orders, fills, settlement,
persistence and the fault hooks tests use to play a misbehaving exchange.

Time is the injected clock's. Work that time causes (fills of resting orders, expiry settlement,
new listings) is done lazily: every request first catches the book up to `clock.now_ms()`, in time
order, so a simulated clock can jump a month and the account still reads as if it had lived it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..clock import Clock, WallClock
from ..pricing import call_price_coin, is_on_grid
from .errors import CODES
from .paper_market import (
    DEFAULT_SPOT,
    MIN_TRADE,
    TICK_SIZE,
    TICK_STEPS,
    Expiry,
    Market,
    MarketParams,
    OptionSpec,
    Quote,
    next_boundary,
    settlement_period,
    underlying_index,
    unit_hash,
)

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

STATE_VERSION = 1
FEE_PER_CONTRACT = 0.0003
FEE_CAP = 0.125  # of the premium of the fill
SCOPE = "connection mainaccount trade:read_write account:read"
REFRESH_TTL_S = 7 * 86_400
TIME_IN_FORCE = ("good_til_cancelled", "good_til_day", "fill_or_kill", "immediate_or_cancel")
LIMITS = {"limits_per_currency": False, "non_matching_engine": {"rate": 20, "burst": 100},
          "matching_engine": {"trading": {"total": {"rate": 5, "burst": 20}}}}
_DEFAULT = object()  # "not given": default state path, credentials from the environment


# --- JSON-RPC plumbing ----------------------------------------------------------------------


class RpcError(Exception):
    """A Deribit error answer: becomes the envelope's `error` object."""

    def __init__(self, code: int, data: Any = None, message: str | None = None) -> None:
        self.code = code
        self.message = message or CODES.get(code, "error")
        self.data = data
        super().__init__(f"{code} {self.message} {data!r}")


def _invalid(param: str, reason: str) -> RpcError:
    return RpcError(-32602, {"param": param, "reason": reason})


@dataclass(frozen=True)
class _Param:
    kind: type
    required: bool = False
    default: Any = None


def _req(kind: type) -> _Param:
    return _Param(kind, True)


def _opt(kind: type, default: Any = None) -> _Param:
    return _Param(kind, False, default)


@dataclass(frozen=True)
class _Method:
    fn: Callable[..., Any]
    params: dict[str, _Param]
    private: bool


_METHODS: dict[str, _Method] = {}


def _rpc(name: str, **params: _Param) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a method with its parameter schema (GET params arrive as strings and are coerced by it)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _METHODS[name] = _Method(fn, params, private=name.startswith("private/"))
        return fn

    return register


def _coerce(name: str, spec: _Param, value: Any) -> Any:
    kind = spec.kind
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise _invalid(name, "must be true or false")
    if kind in (float, int):
        if isinstance(value, bool):
            raise _invalid(name, "must be a number")
        try:
            num = float(value)
        except (TypeError, ValueError):
            raise _invalid(name, "must be a number") from None
        if not math.isfinite(num):
            raise _invalid(name, "must be a finite number")
        if kind is int:
            if not num.is_integer():
                raise _invalid(name, "must be an integer")
            return int(num)
        return num
    if isinstance(value, (dict, list)) or value is None:
        raise _invalid(name, "must be a string")
    return str(value)


def method_names() -> list[str]:
    """Every JSON-RPC method the paper exchange answers."""
    return sorted(_METHODS)


# --- fault injection --------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpFault:
    """A transport-level fault the front ends play: drop the connection, or answer a bare status."""

    kind: str  # "drop" | "status"
    status: int = 0
    after_processing: bool = False  # process the request first (the order exists), then fail


class Faults:
    """Scripted misbehaviour for tests. `method` is a JSON-RPC method name, or "*" for any."""

    def __init__(self) -> None:
        self._errors: dict[str, deque[tuple[int, str | None, Any]]] = {}
        self._http: dict[str, deque[HttpFault]] = {}
        self._latency: dict[str, float] = {}

    def fail_next(self, method: str, code: int, count: int = 1, message: str | None = None, data: Any = None) -> None:
        """The next `count` calls of `method` answer error `code` (and do nothing else)."""
        self._errors.setdefault(method, deque()).extend([(code, message, data)] * count)

    def add_latency(self, seconds: float, method: str | None = None) -> None:
        """Delay every answer (of `method`, or all) by `seconds` of real time until cleared."""
        self._latency[method or "*"] = seconds

    def drop_next(self, method: str, count: int = 1, after_processing: bool = False) -> None:
        """Close the connection without an answer; with after_processing, only after doing the work."""
        self._http.setdefault(method, deque()).extend([HttpFault("drop", 0, after_processing)] * count)

    def http_status_next(self, method: str, status: int = 502, count: int = 1, after_processing: bool = False) -> None:
        """Answer a bare HTTP `status` (no JSON body), as a proxy in front of Deribit would."""
        self._http.setdefault(method, deque()).extend([HttpFault("status", status, after_processing)] * count)

    def clear(self) -> None:
        self._errors.clear()
        self._http.clear()
        self._latency.clear()

    def _take(self, table: dict[str, deque], method: str) -> Any:
        for key in (method, "*"):
            q = table.get(key)
            if q:
                return q.popleft()
        return None

    def take_error(self, method: str) -> tuple[int, str | None, Any] | None:
        return self._take(self._errors, method)

    def take_http(self, method: str) -> HttpFault | None:
        return self._take(self._http, method)

    def latency(self, method: str) -> float:
        return self._latency.get(method, self._latency.get("*", 0.0))


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


# --- the exchange ---------------------------------------------------------------------------


def _given_or_env(value: object, env: str) -> str | None:
    if value is _DEFAULT:
        return os.environ.get(env) or None
    return None if value is None else str(value)


class PaperExchange:
    """A Deribit-compatible exchange with a simulated BTC and ETH option market and one account each.

    Market parameters (seed, spot, vol) and the initial equity apply to a fresh state only: an
    existing state file carries its own, so a restart continues the same price path and account.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        currency: str = "BTC",
        state_path: str | os.PathLike[str] | None | object = _DEFAULT,
        reset: bool = False,
        seed: int = 7,
        initial_equity: float = 1.0,
        spot: dict[str, float] | None = None,
        vol: float = 0.5,
        step_s: float = 60.0,
        token_ttl_s: float = 900.0,
        client_id: str | None | object = _DEFAULT,
        client_secret: str | None | object = _DEFAULT,
        currencies: tuple[str, ...] = ("BTC", "ETH"),
    ) -> None:
        self.clock: Clock = clock or WallClock()
        self.currency = currency.upper()
        if self.currency not in currencies:
            raise ValueError(f"currency {currency!r} is not one of {currencies}")
        if state_path is _DEFAULT:
            state_path = Path("data") / f"paper_exchange_{self.currency}.json"
        self.state_path: Path | None = Path(state_path) if state_path is not None else None  # type: ignore[arg-type]
        # With credentials configured, public/auth checks them; without, any non-empty pair is accepted.
        self.client_id = _given_or_env(client_id, "PAPER_CLIENT_ID")
        self.client_secret = _given_or_env(client_secret, "PAPER_CLIENT_SECRET")
        self.token_ttl_s = float(token_ttl_s)
        self.faults = Faults()

        self.markets: dict[str, Market] = {}
        self.accounts: dict[str, AccountRec] = {}
        self.orders: dict[str, OrderRec] = {}
        self.trades: dict[str, list[dict[str, Any]]] = {}
        self.settlements: dict[str, list[dict[str, Any]]] = {}
        self._open: dict[str, OrderRec] = {}
        self._order_seq = 0
        self._trade_seq = 0
        self._instrument_trade_seq: dict[str, int] = {}
        self._last_ms = 0
        self._tokens: dict[str, int] = {}  # access token -> expiry (exchange ms)
        self._refresh: dict[str, int] = {}
        self._dirty = False
        self._instruments_cache: dict[tuple[str, int], list[dict[str, Any]]] = {}

        if reset and self.state_path is not None and self.state_path.exists():
            self.state_path.unlink()
        if self.state_path is not None and self.state_path.exists():
            self._load(self.state_path)
        else:
            self._fresh(seed, initial_equity, spot or {}, vol, step_s, currencies)
            self._save()

    # --- set-up and persistence ---------------------------------------------------------

    def _fresh(self, seed: int, equity: float, spot: dict[str, float], vol: float, step_s: float,
               currencies: tuple[str, ...]) -> None:
        now = self.clock.now_ms()
        spots = {c: float(spot.get(c, DEFAULT_SPOT.get(c, 100.0))) for c in currencies}
        for cur in currencies:
            params = MarketParams(cur, seed, now, spots[cur], vol, int(step_s * 1000))
            market = Market.create(params)
            market.list_due(now)
            self.markets[cur] = market
            # Other currencies start with the same USD value as the main account.
            eq = equity if cur == self.currency else equity * spots[self.currency] / spots[cur]
            self.accounts[cur] = AccountRec(cur, float(eq), float(eq), now)
            self.trades[cur] = []
            self.settlements[cur] = []
        self._last_ms = now

    def _snapshot(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "last_processed_ms": self._last_ms,
            "counters": {"order": self._order_seq, "trade": self._trade_seq, "instrument_trade_seq": self._instrument_trade_seq},
            "markets": {
                cur: {
                    "params": m.params.to_dict(),
                    "shocks": [list(s) for s in m.path.shocks],
                    "expiries": [e.to_dict() for e in m.expiries.values()],
                    "settled": [e.to_dict() for e in m.settled],
                }
                for cur, m in self.markets.items()
            },
            "accounts": {cur: asdict(a) for cur, a in self.accounts.items()},
            "orders": [asdict(o) for o in self.orders.values()],
            "trades": self.trades,
            "settlements": self.settlements,
        }

    def _save(self) -> None:
        """Write the whole state atomically: a crash leaves the old file or the new one, never half."""
        self._dirty = False
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self._snapshot(), fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {STATE_VERSION}")
            for cur, m in data["markets"].items():
                market = Market.create(MarketParams.from_dict(m["params"]), [tuple(s) for s in m["shocks"]])
                market.restore([Expiry.from_dict(e) for e in m["expiries"]], [Expiry.from_dict(e) for e in m["settled"]])
                self.markets[cur] = market
            for cur, a in data["accounts"].items():
                positions = {k: PositionRec(**v) for k, v in a.pop("positions").items()}
                self.accounts[cur] = AccountRec(**a, positions=positions)
            for o in data["orders"]:
                rec = OrderRec(**o)
                self.orders[rec.order_id] = rec
                if rec.order_state == "open":
                    self._open[rec.order_id] = rec
            self.trades = {cur: list(t) for cur, t in data["trades"].items()}
            self.settlements = {cur: list(s) for cur, s in data["settlements"].items()}
            c = data["counters"]
            self._order_seq, self._trade_seq = int(c["order"]), int(c["trade"])
            self._instrument_trade_seq = {k: int(v) for k, v in c["instrument_trade_seq"].items()}
            self._last_ms = int(data["last_processed_ms"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"paper exchange state {path} is unreadable ({exc}); delete it or start with reset") from exc
        if self.currency not in self.markets:
            raise ValueError(f"paper exchange state {path} has no {self.currency} market; start with reset")

    # --- the one entry point ------------------------------------------------------------

    async def handle(self, method: str, params: dict[str, Any] | None, bearer_token: str | None,
                     request_id: Any = None) -> dict[str, Any]:
        """Answer one JSON-RPC call with Deribit's full envelope (`result` or `error`)."""
        us_in = self.clock.now_ms() * 1000
        t0 = time.perf_counter()
        delay = self.faults.latency(method)
        if delay > 0:
            await asyncio.sleep(delay)
        envelope: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
        try:
            envelope["result"] = self._dispatch(method, params, bearer_token)
        except RpcError as exc:
            envelope["error"] = {"code": exc.code, "message": exc.message, "data": exc.data}
        except Exception:  # a bug here must not take the server down; the caller sees an error
            log.exception("paper exchange failed on %s", method)
            envelope["error"] = {"code": 11094, "message": "internal_server_error", "data": None}
        finally:
            if self._dirty:
                self._save()
        us_out = us_in + int((time.perf_counter() - t0) * 1e6)
        envelope.update({"usIn": us_in, "usOut": us_out, "usDiff": us_out - us_in, "testnet": True})
        return envelope

    def _dispatch(self, method: str, params: dict[str, Any] | None, token: str | None) -> Any:
        injected = self.faults.take_error(method)
        if injected is not None:
            raise RpcError(injected[0], injected[2], injected[1])
        m = _METHODS.get(method)
        if m is None:
            raise RpcError(-32601, None)
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise RpcError(-32602, {"reason": "params must be an object"})
        args: dict[str, Any] = {}
        for name, spec in m.params.items():
            if name in params and params[name] is not None:
                args[name] = _coerce(name, spec, params[name])
            elif spec.required:
                raise _invalid(name, "required parameter is missing")
            else:
                args[name] = spec.default
        now = self.clock.now_ms()
        self._catch_up(now)
        if m.private:
            self._authorize(token, now)
        return m.fn(self, args, now)

    # --- test hooks -----------------------------------------------------------------------

    def transport(self) -> "httpx.MockTransport":
        """An httpx transport that answers in process, parsing requests as the HTTP server does."""
        from .paper_server import transport

        return transport(self)

    def index_price(self, currency: str = "BTC") -> float:
        return self.markets[currency.upper()].spot(self.clock.now_ms())

    def set_index(self, price: float, currency: str = "BTC") -> None:
        """Move the index to `price` from now on (the path continues from there)."""
        cur = currency.upper()
        now = self.clock.now_ms()
        self._catch_up(now)
        market = self.markets[cur]
        market.path.add_shock(now, price / market.path.spot(now))
        self._save()

    def shock(self, pct: float, currency: str = "BTC") -> float:
        """Move the index by `pct` percent (e.g. -10) from now on; returns the new index."""
        cur = currency.upper()
        self.set_index(self.markets[cur].path.spot(self.clock.now_ms()) * (1 + pct / 100.0), cur)
        return self.index_price(cur)

    def revoke_tokens(self) -> None:
        """Forget every token, as a restarted exchange would."""
        self._tokens.clear()
        self._refresh.clear()

    # --- time passing -----------------------------------------------------------------------

    def _catch_up(self, now: int) -> None:
        """Do what happened between the last request and `now`, in time order."""
        if now < self._last_ms:
            return  # a clock behind the stored state (e.g. a restarted SimClock): wait for it
        if now == self._last_ms:
            self._match_resting(now)  # a shock at this very instant may have reached an order
            return
        b = next_boundary(self._last_ms)
        while b <= now:
            self._match_resting(b - 1)
            for market in self.markets.values():
                for e in market.pop_expired(b):
                    self._settle(market, e)
            self._expire_day_orders(b)
            for market in self.markets.values():
                if market.list_due(b):
                    self._dirty = True
            b = next_boundary(b)
        self._match_resting(now)
        self._last_ms = now

    def _match_resting(self, t: int) -> None:
        """Fill resting orders the market has reached: at their own price, as maker."""
        for order in sorted(self._open.values(), key=lambda o: (o.creation_timestamp, int(o.order_id.rsplit("-", 1)[1]))):
            market = self.markets[order.currency]
            spec = market.options.get(order.instrument_name)
            if spec is None:
                continue
            q = market.quote(spec, t)
            crosses = (q.bid is not None and q.bid >= order.price) if order.direction == "sell" else q.ask <= order.price
            if not crosses:
                continue
            amount = self._reducible(order, order.remaining) if order.reduce_only else order.remaining
            if amount <= 0:
                self._close_order(order, "cancelled", t, "reduce_only")
                continue
            self._fill(order, order.price, amount, "M", t, spec, q)
            if order.order_state == "open" and order.reduce_only:
                self._close_order(order, "cancelled", t, "reduce_only")

    def _settle(self, market: Market, e: Expiry) -> None:
        """Cash-settle an expiry at the 30-minute average of the index before 08:00 UTC."""
        cur = market.currency
        s = market.settlement_price(e.expiry_ms)
        acct = self.accounts[cur]
        for order in list(self._open.values()):
            spec = market.expired_options.get(order.instrument_name)
            if spec is not None and spec.expiry_ms == e.expiry_ms:
                self._close_order(order, "cancelled", e.expiry_ms, "settlement")
        for name in [n for n in acct.positions if n in market.expired_options]:
            spec = market.expired_options[name]
            if spec.expiry_ms != e.expiry_ms:
                continue
            pos = acct.positions.pop(name)
            payoff = (max(s - spec.strike, 0.0) if spec.option_type == "call" else max(spec.strike - s, 0.0)) / s
            cash = pos.size * payoff
            pnl = pos.size * (payoff - pos.average_price)
            acct.balance = _r(acct.balance + cash)
            acct.realized_pl = _r(acct.realized_pl + pnl)
            self.settlements[cur].append({
                "type": "delivery", "timestamp": e.expiry_ms, "instrument_name": name, "position": pos.size,
                "mark_price": _r(payoff, 8), "index_price": s, "profit_loss": _r(pnl),
                "session_profit_loss": _r(pnl), "cash_flow": _r(cash),
            })
        self._dirty = True

    def _expire_day_orders(self, boundary: int) -> None:
        for order in list(self._open.values()):
            if order.time_in_force == "good_til_day" and order.creation_timestamp < boundary:
                self._close_order(order, "cancelled", boundary, "good_til_day")

    # --- auth -------------------------------------------------------------------------------

    def _authorize(self, token: str | None, now: int) -> None:
        if not token:
            raise RpcError(13009, {"reason": "no access token: authenticate with public/auth"})
        expiry = self._tokens.get(token)
        if expiry is None:
            raise RpcError(13009, {"reason": "invalid access token"})
        if now >= expiry:
            self._tokens.pop(token, None)
            raise RpcError(13009, {"reason": "access token expired"})

    def _issue_tokens(self, now: int) -> dict[str, Any]:
        access = f"{now}.{secrets.token_urlsafe(24)}"
        refresh = f"{now}.{secrets.token_urlsafe(24)}"
        self._tokens[access] = now + int(self.token_ttl_s * 1000)
        self._refresh[refresh] = now + REFRESH_TTL_S * 1000
        # Forget expired tokens so a long-running server does not grow without bound.
        for table in (self._tokens, self._refresh):
            for k in [k for k, exp in table.items() if exp <= now]:
                del table[k]
        return {"access_token": access, "refresh_token": refresh, "expires_in": int(self.token_ttl_s),
                "token_type": "bearer", "scope": SCOPE, "enabled_features": []}

    @_rpc("public/auth", grant_type=_req(str), client_id=_opt(str), client_secret=_opt(str),
          refresh_token=_opt(str), scope=_opt(str))
    def _auth(self, p: dict[str, Any], now: int) -> dict[str, Any]:
        grant = p["grant_type"]
        if grant == "client_credentials":
            cid, secret = p["client_id"], p["client_secret"]
            if not cid:
                raise _invalid("client_id", "required parameter is missing")
            if not secret:
                raise _invalid("client_secret", "required parameter is missing")
            if (self.client_id and cid != self.client_id) or (self.client_secret and secret != self.client_secret):
                raise RpcError(13004, {"reason": "client_id or client_secret does not match"})
            return self._issue_tokens(now)
        if grant == "refresh_token":
            rt = p["refresh_token"]
            if not rt:
                raise _invalid("refresh_token", "required parameter is missing")
            expiry = self._refresh.pop(rt, None)  # one use: refreshing rotates the refresh token
            if expiry is None or now >= expiry:
                raise RpcError(13009, {"reason": "invalid or expired refresh_token"})
            return self._issue_tokens(now)
        raise _invalid("grant_type", "must be client_credentials or refresh_token")

    # --- public methods ---------------------------------------------------------------------

    def _market(self, currency: str) -> Market:
        m = self.markets.get(currency.upper())
        if m is None:
            raise _invalid("currency", f"must be one of {', '.join(self.markets)}")
        return m

    def _find_spec(self, name: str) -> tuple[Market, OptionSpec | None, bool]:
        """(market, spec, expired) for an instrument name; spec None when it never existed."""
        market = self.markets.get(name.split("-", 1)[0])
        if market is None:
            return next(iter(self.markets.values())), None, False
        spec = market.options.get(name)
        if spec is not None:
            return market, spec, False
        spec = market.expired_options.get(name)
        return market, spec, spec is not None

    @_rpc("public/test")
    def _test(self, p: dict[str, Any], now: int) -> dict[str, Any]:
        return {"version": "paper-1"}

    @_rpc("public/get_time")
    def _get_time(self, p: dict[str, Any], now: int) -> int:
        return now

    @_rpc("public/get_index_price", index_name=_req(str))
    def _get_index_price(self, p: dict[str, Any], now: int) -> dict[str, Any]:
        name = p["index_name"].lower()
        cur = name.split("_")[0].upper()
        if name != f"{cur.lower()}_usd" or cur not in self.markets:
            raise _invalid("index_name", f"must be one of {', '.join(c.lower() + '_usd' for c in self.markets)}")
        spot = self.markets[cur].spot(now)
        return {"index_price": spot, "estimated_delivery_price": spot}

    @_rpc("public/get_instruments", currency=_req(str), kind=_opt(str), expired=_opt(bool, False))
    def _get_instruments(self, p: dict[str, Any], now: int) -> list[dict[str, Any]]:
        kind = p["kind"]
        if kind not in (None, "option", "future", "spot", "future_combo", "option_combo"):
            raise _invalid("kind", "must be option, future, spot, future_combo or option_combo")
        markets = list(self.markets.values()) if p["currency"].lower() == "any" else [self._market(p["currency"])]
        if kind not in (None, "option"):
            return []
        out: list[dict[str, Any]] = []
        for market in markets:
            key = (market.currency + (":expired" if p["expired"] else ""), market.version)
            cached = self._instruments_cache.get(key)
            if cached is None:
                specs = market.expired_options.values() if p["expired"] else market.options.values()
                cached = [self._instrument_wire(s, active=not p["expired"]) for s in specs]
                self._instruments_cache = {k: v for k, v in self._instruments_cache.items() if k[0] != key[0]}
                self._instruments_cache[key] = cached
            out.extend(cached)
        return out

    @staticmethod
    def _instrument_wire(s: OptionSpec, active: bool = True) -> dict[str, Any]:
        cur = s.currency
        return {
            "instrument_name": s.name, "instrument_id": s.instrument_id, "kind": "option", "option_type": s.option_type,
            "strike": s.strike, "expiration_timestamp": s.expiry_ms, "creation_timestamp": s.listed_ms,
            "min_trade_amount": s.min_trade_amount, "contract_size": 1.0, "tick_size": TICK_SIZE,
            "tick_size_steps": [dict(step) for step in TICK_STEPS], "is_active": active,
            "settlement_period": settlement_period(s.kind), "instrument_type": "reversed",
            "base_currency": cur, "quote_currency": cur, "settlement_currency": cur, "counter_currency": "USD",
            "price_index": f"{cur.lower()}_usd", "maker_commission": FEE_PER_CONTRACT,
            "taker_commission": FEE_PER_CONTRACT, "block_trade_commission": FEE_PER_CONTRACT,
            "block_trade_min_trade_amount": 25 * s.min_trade_amount, "block_trade_tick_size": TICK_SIZE, "rfq": False,
        }

    @_rpc("public/get_book_summary_by_currency", currency=_req(str), kind=_opt(str))
    def _get_book_summary(self, p: dict[str, Any], now: int) -> list[dict[str, Any]]:
        market = self._market(p["currency"])
        if p["kind"] not in (None, "option"):
            return []
        return market.summaries(now, market.spot(now))

    def _ticker_wire(self, market: Market, spec: OptionSpec, now: int) -> dict[str, Any]:
        q = market.quote(spec, now)
        e = market.expiries[spec.expiry_ms]
        prev = max(next_boundary(now) - 86_400_000, spec.listed_ms)
        settle_mark = market.quote(spec, prev).mark
        depth = 10.0 if spec.currency == "ETH" else 1.0
        bid_amt = round(depth * (5 + 45 * unit_hash(market.params.seed, spec.name, "bid_amount")), 1)
        ask_amt = round(depth * (5 + 45 * unit_hash(market.params.seed, spec.name, "ask_amount")), 1)
        trades = self.trades.get(spec.currency, [])
        last = next((t["price"] for t in reversed(trades) if t["instrument_name"] == spec.name), None)
        return {
            "instrument_name": spec.name, "timestamp": now, "state": "open",
            "best_bid_price": q.bid if q.bid is not None else 0.0, "best_bid_amount": bid_amt if q.bid is not None else 0.0,
            "best_ask_price": q.ask, "best_ask_amount": ask_amt,
            "bid_iv": _implied_vol(q.bid or 0.0, spec, q), "ask_iv": _implied_vol(q.ask, spec, q),
            "mark_price": q.mark, "mark_iv": round(q.iv * 100, 2), "last_price": last,
            "underlying_price": q.forward, "underlying_index": underlying_index(spec.currency, e),
            "index_price": q.spot, "estimated_delivery_price": q.spot, "interest_rate": 0.0,
            "open_interest": spec.open_interest, "settlement_price": settle_mark,
            "min_price": TICK_SIZE, "max_price": round(max(q.ask * 2, 0.01), 4),
            "greeks": market.greeks(spec, q),
            "stats": {"volume": spec.volume, "volume_usd": round(spec.volume * q.spot, 2), "price_change": None,
                      "high": None, "low": None},
        }

    @_rpc("public/ticker", instrument_name=_req(str))
    def _ticker(self, p: dict[str, Any], now: int) -> dict[str, Any]:
        market, spec, expired = self._find_spec(p["instrument_name"])
        if spec is None or expired:
            raise RpcError(13020, {"instrument_name": p["instrument_name"], "reason": "expired" if expired else "unknown instrument"})
        return self._ticker_wire(market, spec, now)

    @_rpc("public/get_order_book", instrument_name=_req(str), depth=_opt(int, 5))
    def _get_order_book(self, p: dict[str, Any], now: int) -> dict[str, Any]:
        t = self._ticker(p, now)
        bids = [[t["best_bid_price"], t["best_bid_amount"]]] if t["best_bid_amount"] else []
        return {**t, "bids": bids, "asks": [[t["best_ask_price"], t["best_ask_amount"]]], "change_id": now}

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
            f.options_delta += pos.size * g["delta"]
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
            "delta": _r(pos.size * g["delta"], 8), "gamma": _r(pos.size * g["gamma"], 10),
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
        if crosses:
            # Unlimited depth at the touch: a crossing order fills in full at the best price.
            trades.append(self._fill(order, q.bid if direction == "sell" else q.ask, amount, "T", now, spec, q))  # type: ignore[arg-type]
        elif tif in ("immediate_or_cancel", "fill_or_kill"):
            self._close_order(order, "cancelled", now, "immediate_or_cancel" if tif == "immediate_or_cancel" else "fill_or_kill")
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


# The front ends, importable from here too (paper_server needs this module only for type hints).
from .paper_server import make_web_app, run_server, serve  # noqa: E402

__all__ = ["PaperExchange", "Faults", "HttpFault", "RpcError", "fee_for", "short_margin", "method_names",
           "make_web_app", "serve", "run_server"]
