"""Deribit error codes and the exception types the client raises for them."""

from __future__ import annotations

from typing import Any

# code -> Deribit's message
CODES: dict[int, str] = {
    10002: "qty_too_low",
    10004: "order_not_found",
    10009: "not_enough_funds",
    10020: "invalid_instrument",  # shown by the paper exchange for unknown instruments on orders
    10021: "invalid_amount",
    10028: "too_many_requests",
    10040: "retry",
    10041: "settlement_in_progress",
    10043: "price_wrong_tick",
    11044: "not_open_order",
    11050: "bad_request",
    11054: "post_only_reject",
    13004: "invalid_credentials",
    13009: "unauthorized",
    13020: "not_found",
    13028: "temporarily_unavailable",
    -32601: "Method not found",
    -32602: "Invalid params",
}

RETRYABLE_CODES = frozenset({10028, 10040, 10041, 13028})


class DeribitError(Exception):
    """An error answered by Deribit (or by the transport on the way to it)."""

    code: int | None = None
    retryable = False

    def __init__(self, code: int | None, message: str, data: Any = None, method: str | None = None):
        self.code = code
        self.message = message
        self.data = data
        self.method = method
        super().__init__(plain_text(code, message, data, method))


def plain_text(code: int | None, message: str, data: Any = None, method: str | None = None) -> str:
    """The error as a person would say it: what happened, then the exchange's own words."""
    where = f" ({method})" if method else ""
    detail = f": {data}" if data not in (None, "", {}) else ""
    if code is None:
        m = message or "error"
        if m.startswith("connection error"):
            return (f"the exchange cannot be reached ({m}{', ' + method if method else ''}): "
                    "is DERIBIT_BASE_URL (or PAPER_EXCHANGE_URL) right and the network up?")
        if m.startswith("timeout"):
            return f"the exchange did not answer in time ({m}{', ' + method if method else ''})"
        return f"the exchange answered something unexpected{where}: {m}"
    words = (message or CODES.get(code, "error")).replace("_", " ")
    return f"the exchange refused the request{where}: {words} (Deribit error {code}){detail}"


class RetryableError(DeribitError):
    retryable = True


class TooManyRequests(RetryableError):
    pass


class RetryLater(RetryableError):
    pass


class SettlementInProgress(RetryableError):
    pass


class TemporarilyUnavailable(RetryableError):
    pass


class NotEnoughFunds(DeribitError):
    pass


class QtyTooLow(DeribitError):
    pass


class InvalidAmount(DeribitError):
    pass


class OrderNotFound(DeribitError):
    pass


class PriceWrongTick(DeribitError):
    pass


class BadRequest(DeribitError):
    pass


class PostOnlyReject(DeribitError):
    pass


class InvalidCredentials(DeribitError):
    """13004: the key is wrong or revoked. Stop and tell the operator; retrying cannot help."""


class Unauthorized(DeribitError):
    pass


class InstrumentNotFound(DeribitError):
    pass


class InvalidParams(DeribitError):
    pass


class TransportError(RetryableError):
    """A timeout, a dropped connection or a 5xx with no JSON-RPC error in it."""


_BY_CODE: dict[int, type[DeribitError]] = {
    10002: QtyTooLow,
    10004: OrderNotFound,
    10009: NotEnoughFunds,
    10020: InstrumentNotFound,
    10021: InvalidAmount,
    10028: TooManyRequests,
    10040: RetryLater,
    10041: SettlementInProgress,
    10043: PriceWrongTick,
    11050: BadRequest,
    11054: PostOnlyReject,
    13004: InvalidCredentials,
    13009: Unauthorized,
    13020: InstrumentNotFound,
    13028: TemporarilyUnavailable,
    -32602: InvalidParams,
}


def error_for(code: int | None, message: str | None = None, data: Any = None, method: str | None = None) -> DeribitError:
    """The named exception for a Deribit error object."""
    cls = _BY_CODE.get(code, DeribitError) if code is not None else DeribitError
    return cls(code, message or CODES.get(code or 0, "error"), data, method)
