"""A Deribit-compatible paper exchange: Deribit's JSON-RPC methods over a simulated option market.

`PaperExchange.handle(method, params, token)` answers exactly what Deribit would put in its JSON-RPC
envelope, so the real client (`agent.deribit.client`) runs unchanged against it, in process
(`paper_server.transport(exchange)`) or over HTTP (`paper_server.serve`). The market (spot path, calendar,
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
import os
import secrets
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..clock import Clock, WallClock
from ..market.base import PricePath
from .paper_book import BookView
from .paper_market import (
    DEFAULT_SPOT,
    TICK_SIZE,
    TICK_STEPS,
    Expiry,
    Market,
    MarketParams,
    OptionSpec,
    next_boundary,
    settlement_period,
    underlying_index,
    unit_hash,
)
from .paper_rpc import _METHODS, RpcError, _coerce, _invalid, _opt, _req, _rpc
from .paper_faults import Faults, HttpFault
from .paper_records import fee_for, short_margin  # noqa: F401  (re-exported)
from .paper_rpc import method_names  # noqa: F401  (re-exported)
from .paper_records import AccountRec, FEE_PER_CONTRACT, OrderRec, PositionRec, REFRESH_TTL_S, SCOPE, STATE_VERSION, _DEFAULT, _implied_vol, _r
from .paper_account import AccountMixin
from .paper_orders import OrdersMixin

log = logging.getLogger(__name__)


# --- the exchange ---------------------------------------------------------------------------


DEFAULT_STATE_PATH = Path("data") / "paper_exchange.json"


def adopt_legacy_state(path: Path, currency: str) -> Path | None:
    """One state file holds both coins (data/paper_exchange.json). A state from before, written
    per coin (paper_exchange_BTC.json / _ETH.json next to it), already held both markets: the
    main coin's file becomes the one state (renamed, so it is adopted once); the other is left
    where it is and named in a warning."""
    if path.exists() or path.name != DEFAULT_STATE_PATH.name:
        return None
    order = [currency.upper()] + [c for c in ("BTC", "ETH") if c != currency.upper()]
    found = [path.with_name(f"paper_exchange_{c}.json") for c in order]
    found = [f for f in found if f.exists()]
    if not found:
        return None
    os.replace(found[0], path)
    log.warning("paper exchange: adopted %s as the one state %s", found[0], path)
    for other in found[1:]:
        log.warning("paper exchange: %s is no longer read (the state is %s); delete it when done", other, path)
    return found[0]


def _given_or_env(value: object, env: str) -> str | None:
    if value is _DEFAULT:
        return os.environ.get(env) or None
    return None if value is None else str(value)


class PaperExchange(AccountMixin, OrdersMixin):
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
        models: dict[str, PricePath] | None = None,
    ) -> None:
        self.clock: Clock = clock or WallClock()
        self._models = {k.upper(): v for k, v in (models or {}).items()}  # fresh state only, like the seed
        self.currency = currency.upper()
        if self.currency not in currencies:
            raise ValueError(f"currency {currency!r} is not one of {currencies}")
        if state_path is _DEFAULT:
            state_path = DEFAULT_STATE_PATH
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
        self._depth: dict[str, float] = {}  # instrument -> contracts left at the touch (limit_depth)
        self._order_seq = 0
        self._trade_seq = 0
        self._instrument_trade_seq: dict[str, int] = {}
        self._last_ms = 0
        self._tokens: dict[str, int] = {}  # access token -> expiry (exchange ms)
        self._refresh: dict[str, int] = {}
        self._dirty = False
        self._saved_wall = 0.0
        self._saved_ms = 0
        self._instruments_cache: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self._instrument_wires: dict[tuple[str, bool], dict[str, Any]] = {}  # (name, active) -> wire, built once

        if reset and self.state_path is not None and self.state_path.exists():
            self.state_path.unlink()
        if not reset and self.state_path is not None:
            adopt_legacy_state(self.state_path, self.currency)
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
        spots.update({c: round(m.spot(now), 2) for c, m in self._models.items() if c in spots})
        for cur in currencies:
            model = self._models.get(cur)
            params = MarketParams(cur, seed, now, spots[cur], vol, int(step_s * 1000),
                                  model.to_dict() if model is not None else None)
            market = Market.create(params) if model is None else Market.on_model(params, model)
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
        self._saved_wall = time.monotonic()
        self._saved_ms = self._last_ms
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
            self._last_ms = self._saved_ms = int(data["last_processed_ms"])
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
            # The market clock is part of the state (a restart resumes it): time passing alone is
            # saved too, at most once a wall second.
            if self._dirty or (self._last_ms != self._saved_ms and time.monotonic() - self._saved_wall >= 1.0):
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

    def save(self) -> None:
        """Write the state now (on a clean stop: the clock resumes exactly where it stopped)."""
        self._save()

    @staticmethod
    def stored_clock_ms(path: str | os.PathLike[str]) -> int | None:
        """The market time a saved state had reached, or None without a readable state."""
        try:
            return int(json.loads(Path(path).read_text(encoding="utf-8"))["last_processed_ms"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

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
            self._extend_strikes(now)  # a shock at this very instant may have moved the forward ...
            self._match_resting(now)  # ... and reached an order
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
        self._extend_strikes(now)
        self._match_resting(now)
        self._last_ms = now

    def _extend_strikes(self, now: int) -> None:
        for market in self.markets.values():
            if market.extend_strikes(now):  # the spot moved away: Deribit lists more strikes
                self._dirty = True

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
            amount = self._take_depth(order.instrument_name, amount)
            if amount <= 0:
                continue
            self._fill(order, order.price, amount, "M", t, spec, q)
            if order.order_state == "open" and order.reduce_only and self._reducible(order, order.remaining) <= 0:
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
                # A spec never changes once listed: its wire is built once (new strikes add a few).
                wires = self._instrument_wires
                active = not p["expired"]
                cached = [wires.get((s.name, active)) or wires.setdefault((s.name, active), self._instrument_wire(s, active))
                          for s in specs]
                if len(wires) > 4 * len(cached) + 1000:  # expired names: drop what this answer did not use
                    keep = {(w["instrument_name"], active) for w in cached}
                    self._instrument_wires = {k: v for k, v in wires.items() if k in keep or k[1] != active}
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

    def book_view(self, currency: str, kind: str | None = "option") -> "BookView | list":
        """`public/get_book_summary_by_currency` for a caller in this process (the backtest's
        client): the same entries, each written when read (paper_book.BookView). Raises RpcError
        as the call would."""
        now = self.clock.now_ms()
        self._catch_up(now)
        market = self._market(currency)
        if kind not in (None, "option"):
            return []
        return market.book_view(now, market.spot(now))

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


__all__ = ["PaperExchange", "Faults", "HttpFault", "RpcError", "fee_for", "short_margin", "method_names"]
