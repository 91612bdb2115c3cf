"""Fault injection of the paper exchange: errors, latency, dropped connections, bare 5xx."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any



if TYPE_CHECKING:
    pass


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
