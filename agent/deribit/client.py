"""Async JSON-RPC client for Deribit API v2 over HTTP (httpx).

Auth with client credentials and Bearer tokens, refreshed before 80 % of their lifetime; named
errors; bounded exponential back-off for what is retryable; a client-side credit limiter; an
instruments cache (Deribit allows one `get_instruments` per 10 s); and request/credit counters per
call site, so a tick can say how many requests it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from . import errors
from .errors import DeribitError, InvalidCredentials, TransportError, Unauthorized, error_for
from .types import (
    AccountSummary,
    AuthResult,
    BookSummary,
    IndexPrice,
    Instrument,
    Order,
    OrderResult,
    Position,
    Settlements,
    Ticker,
    UserTrades,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://test.deribit.com"
# Calls that go to the matching engine and share its (smaller) limit.
ORDER_METHODS = frozenset(
    {"private/buy", "private/sell", "private/edit", "private/cancel", "private/cancel_all", "private/cancel_by_label"}
)
NON_MATCHING_CREDITS = 500  # credits per ordinary call (pool 50,000, refill 10,000/s)
INSTRUMENTS_MIN_INTERVAL_S = 10.0

T = TypeVar("T")


# --- rate limiting --------------------------------------------------------------------------


class TokenBucket:
    """A credit bucket: `capacity` credits, refilled at `rate` credits per second."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.rate = rate
        self.capacity = capacity
        self._level = capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = asyncio.Lock()
        self.waited_s = 0.0  # total time spent waiting, for reports

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._last) * self.rate)
        self._last = now

    async def acquire(self, cost: float) -> None:
        async with self._lock:
            while True:
                self._refill()
                if self._level >= cost - 1e-9 * cost:  # float dust must not spin the loop
                    self._level = max(self._level - cost, 0.0)
                    return
                wait = (cost - self._level) / self.rate
                self.waited_s += wait
                await self._sleep(wait)


class RateLimiter:
    """Deribit's credit model: 20 ordinary calls/s (burst 100), 5 order calls/s (burst 5)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 ordinary_per_s: float = 20.0, ordinary_burst: float = 100.0,
                 orders_per_s: float = 5.0, orders_burst: float = 5.0) -> None:
        self.ordinary = TokenBucket(ordinary_per_s * NON_MATCHING_CREDITS, ordinary_burst * NON_MATCHING_CREDITS, clock, sleep)
        self.orders = TokenBucket(orders_per_s, orders_burst, clock, sleep)

    async def acquire(self, method: str) -> int:
        """Wait for the credits of one call; returns the non-matching credits it cost."""
        if method in ORDER_METHODS:
            await self.orders.acquire(1)
            return 0
        await self.ordinary.acquire(NON_MATCHING_CREDITS)
        return NON_MATCHING_CREDITS


# --- request accounting ---------------------------------------------------------------------


@dataclass
class SiteStats:
    requests: int = 0
    credits: int = 0
    errors: int = 0
    retries: int = 0


@dataclass
class RequestCounter:
    """Requests and credits per call site (the method name, or a site given by the caller)."""

    by_site: dict[str, SiteStats] = field(default_factory=dict)

    def add(self, site: str, *, requests: int = 0, credits: int = 0, errors: int = 0, retries: int = 0) -> None:
        s = self.by_site.setdefault(site, SiteStats())
        s.requests += requests
        s.credits += credits
        s.errors += errors
        s.retries += retries

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.by_site.values())

    @property
    def credits(self) -> int:
        return sum(s.credits for s in self.by_site.values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {k: vars(v).copy() for k, v in sorted(self.by_site.items())}


_active_counters: contextvars.ContextVar[tuple[RequestCounter, ...]] = contextvars.ContextVar(
    "deribit_request_counters", default=()
)


# --- the client -----------------------------------------------------------------------------


@dataclass
class _Token:
    access: str
    refresh: str | None
    expires_in: float
    obtained_at: float

    def due(self, now: float) -> bool:
        return now >= self.obtained_at + 0.8 * self.expires_in


@dataclass
class _Cached:
    fetched_at: float
    items: "InstrumentList"
    stale: bool = False


class InstrumentList(list):  # list[Instrument]
    """Instruments as fetched, with their index by name and their grouping by expiry, each built
    once per fetch: the cache hands out the same list for an hour, and every tick reads it so.
    Never changed after the fetch (a refetch makes a new list)."""

    @functools.cached_property
    def by_name(self) -> dict[str, Instrument]:
        return {i.instrument_name: i for i in self}

    @functools.cached_property
    def by_expiry(self) -> dict[int, list[Instrument]]:
        grouped: dict[int, list[Instrument]] = {}
        for i in self:
            grouped.setdefault(i.expiration_timestamp, []).append(i)
        return grouped


_BODY_ONLY = frozenset({"public/auth"})  # methods whose params are secrets: never in a URL


class DeribitClient:
    """Deribit JSON-RPC over HTTP. Use as `async with DeribitClient(...) as client:`."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        client_id: str | None = None,
        client_secret: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        instruments_ttl_s: float = 3600.0,  # listings change once a day; an unknown name in the book refetches sooner
        http_method: str = "GET",
        server_clock: Callable[[], float] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client_id = client_id
        self._client_secret = client_secret
        self._http = httpx.AsyncClient(base_url=self.base_url, transport=transport, timeout=timeout)
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.limiter = limiter or RateLimiter(clock=clock, sleep=sleep)
        self._clock = clock
        # Token lifetimes and the instruments cache run on the server's time: the same as `clock`
        # against Deribit, the simulated clock against a paper exchange running faster than life.
        self._server_clock = server_clock or clock
        self._sleep = sleep
        self._token: _Token | None = None
        self._auth_lock = asyncio.Lock()
        self._instruments: dict[tuple, _Cached] = {}
        self._instruments_ttl_s = max(instruments_ttl_s, INSTRUMENTS_MIN_INTERVAL_S)
        self._instruments_lock = asyncio.Lock()
        self._http_method = http_method.upper()
        self._next_id = 0
        self.stats = RequestCounter()  # since the client was made
        self.testnet: bool | None = None  # the `testnet` flag of Deribit's last response envelope

    async def __aenter__(self) -> "DeribitClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @contextlib.contextmanager
    def measure(self) -> Iterator[RequestCounter]:
        """Count the requests made inside this block (and the tasks it starts)."""
        counter = RequestCounter()
        token = _active_counters.set(_active_counters.get() + (counter,))
        try:
            yield counter
        finally:
            _active_counters.reset(token)

    def _count(self, site: str, **kw: int) -> None:
        self.stats.add(site, **kw)
        for c in _active_counters.get():
            c.add(site, **kw)

    # --- transport ---------------------------------------------------------------------

    async def _send(self, method: str, params: dict[str, Any], token: str | None, site: str,
                    envelope_adapter: TypeAdapter | None = None) -> Any:
        """One HTTP round trip; returns the JSON-RPC result or raises a DeribitError. With an
        `envelope_adapter`, a successful answer is parsed and validated from the bytes in one call
        (the typed result is returned); anything else takes the ordinary path."""
        credits = await self.limiter.acquire(method)
        self._count(site, requests=1, credits=credits)
        self._next_id += 1
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = f"/api/v2/{method}"
        try:
            # Auth always goes as a POST body: a client_secret or refresh_token in a query string ends
            # up in proxy logs, access logs and tracebacks.
            if self._http_method == "GET" and method not in _BODY_ONLY:
                resp = await self._http.get(url, params=_query_params(params), headers=headers)
            else:
                body = {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params}
                resp = await self._http.post(url, json=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TransportError(None, f"timeout: {type(exc).__name__}", None, method) from exc
        except httpx.TransportError as exc:
            err = TransportError(None, f"connection error: {type(exc).__name__}", None, method)
            # Nothing was sent if the connection never opened: safe to retry even for orders.
            err.sent = not isinstance(exc, httpx.ConnectError)  # type: ignore[attr-defined]
            raise err from exc
        if envelope_adapter is not None and resp.status_code == 200:
            try:
                typed = envelope_adapter.validate_json(resp.content)
            except ValidationError:
                typed = None  # an error answer, or an entry of another kind: parsed the tolerant way
            if typed is not None and typed.error is None and typed.result is not None:
                return typed.result
        try:
            envelope = resp.json()
        except ValueError:
            envelope = None
        if isinstance(envelope, dict) and isinstance(envelope.get("testnet"), bool):
            self.testnet = envelope["testnet"]
        if isinstance(envelope, dict) and isinstance(envelope.get("error"), dict):
            e = envelope["error"]
            raise error_for(_int_or_none(e.get("code")), e.get("message"), e.get("data"), method)
        if isinstance(envelope, dict) and "result" in envelope:
            return envelope["result"]
        if resp.status_code >= 500:
            raise TransportError(None, f"HTTP {resp.status_code}", None, method)
        raise DeribitError(None, f"unexpected HTTP {resp.status_code} without a JSON-RPC result", None, method)

    async def call(self, method: str, params: dict[str, Any] | None = None, *, site: str | None = None,
                   envelope_adapter: TypeAdapter | None = None) -> Any:
        """Call `method` (e.g. "public/ticker") with retries, auth and limits; return its result."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        site = site or method
        private = method.startswith("private/")
        is_order = method in ORDER_METHODS
        reauthed = False
        attempt = 0
        while True:
            token = await self._access_token() if private else None
            try:
                return await self._send(method, params, token, site, envelope_adapter)
            except Unauthorized:
                self._count(site, errors=1)
                if not private or reauthed:
                    raise
                # The token was revoked or expired early: re-authenticate once, then fail loudly.
                reauthed = True
                self._token = None
                continue
            except DeribitError as exc:
                self._count(site, errors=1)
                if not exc.retryable or attempt >= self.max_retries:
                    raise
                # An order call that may have reached the exchange is not resent blindly: the
                # caller reconciles by label instead.
                if is_order and isinstance(exc, TransportError) and getattr(exc, "sent", True):
                    raise
                delay = self._backoff(attempt, exc)
                attempt += 1
                self._count(site, retries=1)
                log.warning("deribit %s failed (%s); retry %d/%d in %.2fs", method, exc.message, attempt, self.max_retries, delay)
                await self._sleep(delay)

    def _backoff(self, attempt: int, exc: DeribitError) -> float:
        base = self.backoff_base_s * (4 if exc.code == 10041 else 1)  # settlement: a few seconds
        delay = min(self.backoff_max_s, base * (2**attempt))
        return delay * (0.5 + random.random() / 2)

    # --- auth ----------------------------------------------------------------------------

    async def _access_token(self) -> str:
        async with self._auth_lock:
            now = self._server_clock()
            if self._token and not self._token.due(now):
                return self._token.access
            if not (self._client_id and self._client_secret):
                raise InvalidCredentials(13004, "invalid_credentials",
                                         "no API key configured: set DERIBIT_CLIENT_ID and DERIBIT_CLIENT_SECRET", "public/auth")
            if self._token and self._token.refresh:
                try:
                    return await self._authenticate({"grant_type": "refresh_token", "refresh_token": self._token.refresh})
                except DeribitError as exc:
                    log.info("token refresh failed (%s); authenticating again", exc.message)
            return await self._authenticate(
                {"grant_type": "client_credentials", "client_id": self._client_id, "client_secret": self._client_secret}
            )

    async def _authenticate(self, params: dict[str, Any]) -> str:
        try:
            result = await self._call_unauthenticated("public/auth", params)
        except InvalidCredentials as exc:
            raise InvalidCredentials(
                exc.code, exc.message,
                "Deribit refused the API key: check DERIBIT_CLIENT_ID / DERIBIT_CLIENT_SECRET and that the key "
                f"belongs to {self.base_url} (testnet and production keys differ)",
                "public/auth",
            ) from None
        auth = AuthResult.model_validate(result)
        self._token = _Token(auth.access_token, auth.refresh_token, auth.expires_in, self._server_clock())
        return auth.access_token

    async def _call_unauthenticated(self, method: str, params: dict[str, Any]) -> Any:
        # Retries like any public call, but never recurses into auth.
        return await self.call(method, params, site=method)

    # --- typed methods -------------------------------------------------------------------

    async def get_time(self) -> int:
        return int(await self.call("public/get_time"))

    async def get_index_price(self, index_name: str) -> IndexPrice:
        return _parse(IndexPrice, await self.call("public/get_index_price", {"index_name": index_name}))

    async def get_instruments(self, currency: str, kind: str = "option", expired: bool = False) -> list[Instrument]:
        """Instruments, cached: Deribit allows one request per 10 s, and they rarely change."""
        key = (currency, kind, expired)
        async with self._instruments_lock:
            cached = self._instruments.get(key)
            if cached is not None:
                age = self._server_clock() - cached.fetched_at
                if age < INSTRUMENTS_MIN_INTERVAL_S or (age < self._instruments_ttl_s and not cached.stale):
                    return cached.items
            result = await self.call("public/get_instruments", {"currency": currency, "kind": kind, "expired": expired})
            self._instruments[key] = _Cached(self._server_clock(), InstrumentList(_parse_list(Instrument, result)))
            return self._instruments[key].items

    def invalidate_instruments(self) -> None:
        """Refetch instruments on the next call (e.g. after an expiry), the 10 s limit permitting."""
        for cached in self._instruments.values():
            cached.stale = True

    async def get_book_summary_by_currency(self, currency: str, kind: str = "option") -> list[BookSummary]:
        # The largest answer of a tick (the whole chain): validated straight from the bytes.
        result = await self.call("public/get_book_summary_by_currency", {"currency": currency, "kind": kind},
                                 envelope_adapter=_BOOK_ENVELOPE)
        if isinstance(result, list) and all(isinstance(b, BookSummary) for b in result):
            return result
        return _parse_list(BookSummary, result)

    async def ticker(self, instrument_name: str) -> Ticker:
        return _parse(Ticker, await self.call("public/ticker", {"instrument_name": instrument_name}))

    async def get_account_summary(self, currency: str) -> AccountSummary:
        return _parse(AccountSummary, await self.call("private/get_account_summary", {"currency": currency}))

    async def get_positions(self, currency: str, kind: str = "option") -> list[Position]:
        return _parse_list(Position, await self.call("private/get_positions", {"currency": currency, "kind": kind}))

    async def buy(self, instrument_name: str, amount: float, price: float, *, label: str | None = None,
                  reduce_only: bool = False, post_only: bool = False, time_in_force: str = "good_til_cancelled") -> OrderResult:
        return await self._order("private/buy", instrument_name, amount, price, label, reduce_only, post_only, time_in_force)

    async def sell(self, instrument_name: str, amount: float, price: float, *, label: str | None = None,
                   reduce_only: bool = False, post_only: bool = False, time_in_force: str = "good_til_cancelled") -> OrderResult:
        return await self._order("private/sell", instrument_name, amount, price, label, reduce_only, post_only, time_in_force)

    async def _order(self, method: str, instrument_name: str, amount: float, price: float, label: str | None,
                     reduce_only: bool, post_only: bool, time_in_force: str) -> OrderResult:
        if label is not None and len(label) > 64:
            raise ValueError("Deribit labels are at most 64 characters")
        params = {"instrument_name": instrument_name, "amount": amount, "type": "limit", "price": price,
                  "label": label, "time_in_force": time_in_force,
                  "reduce_only": reduce_only or None, "post_only": post_only or None}
        return _parse(OrderResult, await self.call(method, params))

    async def get_order_state(self, order_id: str) -> Order:
        return _parse(Order, await self.call("private/get_order_state", {"order_id": order_id}))

    async def get_order_state_by_label(self, currency: str, label: str) -> list[Order]:
        return _parse_list(Order, await self.call("private/get_order_state_by_label", {"currency": currency, "label": label}))

    async def get_open_orders_by_label(self, currency: str, label: str) -> list[Order]:
        return _parse_list(Order, await self.call("private/get_open_orders_by_label", {"currency": currency, "label": label}))

    async def get_open_orders_by_currency(self, currency: str, kind: str = "option") -> list[Order]:
        return _parse_list(Order, await self.call("private/get_open_orders_by_currency", {"currency": currency, "kind": kind}))

    async def cancel(self, order_id: str) -> Order:
        return _parse(Order, await self.call("private/cancel", {"order_id": order_id}))

    async def edit(self, order_id: str, amount: float, price: float) -> OrderResult:
        """Move an open order to a new price (same order id and label)."""
        return _parse(OrderResult, await self.call("private/edit", {"order_id": order_id, "amount": amount,
                                                                    "price": price}))

    async def cancel_by_label(self, label: str, currency: str | None = None) -> int:
        """Cancel every open order carrying `label`; how many were cancelled."""
        return int(await self.call("private/cancel_by_label", {"label": label, "currency": currency}) or 0)

    async def get_user_trades_by_instrument(self, instrument_name: str, count: int = 10, sorting: str = "desc") -> UserTrades:
        result = await self.call("private/get_user_trades_by_instrument",
                                 {"instrument_name": instrument_name, "count": count, "sorting": sorting})
        if isinstance(result, list):  # some versions answer a bare list
            result = {"trades": result}
        return _parse(UserTrades, result)


    async def get_user_trades_by_currency_and_time(self, currency: str, start_timestamp: int, end_timestamp: int, *,
                                                   kind: str = "option", count: int = 100,
                                                   sorting: str = "asc") -> UserTrades:
        """Our fills in [start, end] (ms), oldest first by default; `has_more` says another page waits."""
        result = await self.call("private/get_user_trades_by_currency_and_time",
                                 {"currency": currency, "kind": kind, "start_timestamp": int(start_timestamp),
                                  "end_timestamp": int(end_timestamp), "count": count, "sorting": sorting})
        if isinstance(result, list):
            result = {"trades": result}
        return _parse(UserTrades, result)

    async def get_settlement_history_by_currency(self, currency: str, *, type: str | None = "delivery",
                                                 count: int = 20) -> Settlements:
        """The account's latest settlements (newest first): deliveries of expired options."""
        params: dict[str, Any] = {"currency": currency, "count": count}
        if type:
            params["type"] = type
        return _parse(Settlements, await self.call("private/get_settlement_history_by_currency", params))

# --- helpers -------------------------------------------------------------------------------


def _query_params(params: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in params.items():
        if isinstance(v, bool):
            out[k] = "true" if v else "false"
        else:
            out[k] = str(v)
    return out


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], result: Any) -> M:
    try:
        return model.model_validate(result)
    except ValidationError as exc:
        raise DeribitError(None, f"unexpected {model.__name__} in response: {exc.errors()[0]['msg']}") from None


_LIST_ADAPTERS: dict[type, TypeAdapter] = {}


class _BookEnvelope(BaseModel):
    """A JSON-RPC answer carrying a book summary (other envelope keys ignored). The parser caches
    keys only: every instrument name in a book is a different string, and caching them all cost
    a fifth of the parse of a 10,000-option book (`python bench/backtest.py`)."""

    model_config = ConfigDict(extra="ignore", cache_strings="keys")
    result: list[BookSummary] | None = None
    error: Any = None


_BOOK_ENVELOPE = TypeAdapter(_BookEnvelope)


def _parse_list(model: type[M], result: Any) -> list[M]:
    """Parse a list, skipping entries that are not of this kind (e.g. a future in an option book).

    The whole list is validated in one call (a fraction of the cost of one call per entry on a
    chain of thousands); only when that fails is it parsed entry by entry, to skip the odd ones.
    """
    if not isinstance(result, list):
        raise DeribitError(None, f"expected a list of {model.__name__}, got {type(result).__name__}")
    adapter = _LIST_ADAPTERS.get(model)
    if adapter is None:
        adapter = _LIST_ADAPTERS[model] = TypeAdapter(list[model])  # type: ignore[valid-type]
    try:
        return adapter.validate_python(result)
    except ValidationError:
        pass
    out = []
    for item in result:
        try:
            out.append(model.model_validate(item))
        except ValidationError as exc:
            log.debug("skipping unparsable %s: %s", model.__name__, exc.errors()[0]["msg"])
    return out


__all__ = ["DeribitClient", "RateLimiter", "TokenBucket", "RequestCounter", "errors"]
