"""Market models the paper exchange can run on: `synthetic`, `deribit` history, `csv:PATH`, and the
plain random walk the paper exchange started with (`gbm`). See base.py for what a model provides."""

from __future__ import annotations

from typing import Any

from .base import PricePath, smile_iv
from .errors import MarketDataError
from .synthetic import DEFAULT_VRP, SyntheticParams, SyntheticPath

MARKETS = ("synthetic", "deribit", "csv:PATH")


def parse_market(spec: str) -> tuple[str, str | None]:
    """("synthetic", None), ("deribit", None) or ("csv", PATH); MarketDataError otherwise."""
    s = (spec or "").strip()
    if s in ("synthetic", "deribit"):
        return s, None
    if s.startswith("csv:") and len(s) > 4:
        return "csv", s[4:]
    raise MarketDataError(f"unknown market {spec!r}: use synthetic, deribit or csv:PATH")


def synthetic(currency: str, seed: int, start_ms: int, spot0: float, vrp: float = DEFAULT_VRP, **kw: Any) -> SyntheticPath:
    return SyntheticPath(currency, SyntheticParams(seed=seed, spot0=spot0, start_ms=start_ms, vrp=vrp, **kw))


def model_from_dict(d: dict[str, Any], shocks=()) -> PricePath:
    """Rebuild a model saved with `to_dict()` (the paper exchange's state file)."""
    kind = d.get("kind")
    if kind == "synthetic":
        return SyntheticPath(d["currency"], SyntheticParams.from_dict(d["params"]), shocks)
    if kind == "csv":
        from .csvfile import load_csv

        path = load_csv(d["path"], d.get("currency", "BTC"), float(d.get("vrp", DEFAULT_VRP)))
        path.shocks = sorted(shocks)
        return path
    raise MarketDataError(f"cannot rebuild a {kind!r} market from a saved state")


__all__ = ["MARKETS", "MarketDataError", "PricePath", "SyntheticParams", "SyntheticPath", "model_from_dict",
           "parse_market", "smile_iv", "synthetic"]
