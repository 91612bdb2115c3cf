"""The row layout of a decision's stored snapshot: positions and candidates as compact rows.

Split from agent/tick.py (which writes them) so that readers of stored decisions, `chatops status`
among them, do not load the exchange client with it.
"""

from __future__ import annotations

from typing import Any

POS_KEYS = ("name", "size", "avg", "mark", "delta", "dte")
CAND_KEYS = ("id", "name", "delta", "dte", "bid", "yield", "score")


def named(row: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """A stored position or candidate as a dict, whether it has named keys or is an older positional row."""
    return dict(row) if isinstance(row, dict) else dict(zip(keys, row))
