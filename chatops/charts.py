"""PNG charts from the stored snapshots, drawn with matplotlib's Agg backend (no display needed).

`pnl_png`: the account's value against the same coin simply held (HODL), in USD, and the option
P&L in coin. `strike_png`: spot against the short call's strike over time.
"""

from __future__ import annotations

import io
from datetime import datetime

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to memory, never to a window

import matplotlib.pyplot as plt  # noqa: E402

from agent.clock import to_datetime  # noqa: E402
from agent.state import parse_option_name  # noqa: E402

from .store import Store  # noqa: E402

MAX_POINTS = 2000  # a year of 5-minute snapshots thinned to what a chat picture can show


def _thin(rows: list) -> list:
    step = max(1, len(rows) // MAX_POINTS)
    return rows[::step] + ([rows[-1]] if rows and (len(rows) - 1) % step else [])


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def pnl_png(store: Store, underlying: str, since: datetime | None = None) -> bytes | None:
    """Strategy vs HODL in USD, and the option P&L in coin, over the snapshots; None without two."""
    snaps = _thin(store.snapshots(underlying, since=since))
    if len(snaps) < 2:
        return None
    base = snaps[0]
    times = [to_datetime(s.timestamp) for s in snaps]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True, height_ratios=(2, 1))
    top.plot(times, [s.equity * s.spot for s in snaps], label="strategy (equity x spot)", color="tab:blue")
    top.plot(times, [base.equity * s.spot for s in snaps], label=f"HODL {base.equity:.4f} {underlying}",
             color="tab:gray", linestyle="--")
    top.set_ylabel("USD")
    top.legend(loc="upper left")
    top.set_title(f"{underlying} covered calls vs holding the coin")
    bottom.plot(times, [s.equity - base.equity for s in snaps], color="tab:green")
    bottom.axhline(0, color="black", linewidth=0.5)
    bottom.set_ylabel(f"option P&L ({underlying})")
    fig.autofmt_xdate()
    return _png(fig)


def strike_png(store: Store, underlying: str, since: datetime | None = None) -> bytes | None:
    """Spot and, where a call was short, its strike, over the snapshots; None without two."""
    snaps = _thin(store.snapshots(underlying, since=since))
    if len(snaps) < 2:
        return None
    times = [to_datetime(s.timestamp) for s in snaps]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(times, [s.spot for s in snaps], label=f"{underlying} index", color="tab:blue")
    strikes: list[float | None] = []
    for s in snaps:
        shorts = [m for m in s.marks if m.size < 0 and m.instrument_name.endswith("-C")]
        strikes.append(min(_strike(m.instrument_name) for m in shorts) if shorts else None)
    ax.plot(times, [k if k is not None else float("nan") for k in strikes], label="short call strike",
            color="tab:red", drawstyle="steps-post")
    ax.set_ylabel("USD")
    ax.set_title(f"{underlying}: spot against the short call's strike")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    return _png(fig)


def _strike(name: str) -> float:
    try:
        return parse_option_name(name)["strike"]
    except ValueError:
        return float("nan")


__all__ = ["pnl_png", "strike_png"]
