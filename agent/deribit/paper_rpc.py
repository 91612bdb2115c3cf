"""The paper exchange's JSON-RPC method registry: parameter schemas, coercion, errors."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .errors import CODES


if TYPE_CHECKING:
    pass


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
