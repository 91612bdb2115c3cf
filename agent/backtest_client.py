"""The backtest's fast way to the paper exchange: the real client, without the wire.

`InProcessClient` is the project's `DeribitClient` (auth and token refresh, the instruments
cache, typed parsing, request counters, the error mapping) with one change: a call goes straight
to `PaperExchange.handle` in the same process instead of through HTTP and JSON. The exchange
answers the same envelope it would put on the wire, so the agent sees the same values; only the
encoding and decoding a year of ticks would spend is skipped.

The book summary, the largest answer of every tick, comes as a `LazyBook`: every entry's name at
once, each entry written by the exchange and validated into a `BookSummary` only when the agent
reads it (a tick reads the few expiries its windows hold). What an entry holds is what the wire
would have carried: the same dict, the same validation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .deribit.client import DeribitClient, RateLimiter
from .deribit.errors import DeribitError, error_for
from .deribit.paper_rpc import RpcError
from .deribit.types import BookSummary

_validate = BookSummary.__pydantic_validator__.validate_python  # what model_validate does, without its wrapper
UNLIMITED = dict(ordinary_per_s=1e9, ordinary_burst=1e9, orders_per_s=1e9, orders_burst=1e9)


class InProcessClient(DeribitClient):
    def __init__(self, exchange: Any, client_id: str = "backtest", client_secret: str = "backtest-secret",
                 **kw: Any) -> None:
        clock = exchange.clock
        kw.setdefault("limiter", RateLimiter(**UNLIMITED))
        kw.setdefault("server_clock", lambda: clock.now_ms() / 1000.0)
        super().__init__("http://paper.in-process", client_id, client_secret, **kw)
        self.exchange = exchange

    async def _send(self, method: str, params: dict[str, Any], token: str | None, site: str,
                    envelope_adapter: Any = None) -> Any:
        credits = await self.limiter.acquire(method)
        self._count(site, requests=1, credits=credits)
        envelope = await self.exchange.handle(method, params, token)
        err = envelope.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            raise error_for(code if isinstance(code, int) else None, err.get("message"), err.get("data"), method)
        if "result" not in envelope:
            raise DeribitError(None, "paper exchange answered without a result", None, method)
        return envelope["result"]

    async def get_book_summary_by_currency(self, currency: str, kind: str = "option") -> Any:
        method = "public/get_book_summary_by_currency"
        credits = await self.limiter.acquire(method)
        self._count(method, requests=1, credits=credits)
        try:
            view = self.exchange.book_view(currency, kind)
        except RpcError as exc:
            raise error_for(exc.code, exc.message, exc.data, method) from None
        return view if isinstance(view, list) else LazyBook(view)


class _Entries(Mapping):
    """name -> BookSummary, validated on first read."""

    def __init__(self, view: Any) -> None:
        self._view = view
        self._done: dict[str, BookSummary] = {}

    def __getitem__(self, name: str) -> BookSummary:
        got = self._done.get(name)
        if got is None:
            if name not in self._view.index:
                raise KeyError(name)
            got = self._done[name] = _validate(self._view.row(name))
        return got

    def __contains__(self, name: object) -> bool:
        return name in self._view.index

    def __iter__(self) -> Iterator[str]:
        return iter(self._view.index)

    def __len__(self) -> int:
        return len(self._view.index)

    def keys(self):  # the index's own view: set operations in C
        return self._view.index.keys()


class LazyBook:
    """A book summary (a sequence of BookSummary, in the wire's order) whose entries are
    validated when read; `by_name` is the mapping the agent looks them up in."""

    def __init__(self, view: Any) -> None:
        self.by_name = _Entries(view)

    def __len__(self) -> int:
        return len(self.by_name)

    def __iter__(self) -> Iterator[BookSummary]:
        return (self.by_name[n] for n in self.by_name)

    def __getitem__(self, i: int) -> BookSummary:
        return list(self)[i]
