"""P&L from the stored ledger: the report behind `chatops pnl`, /pnl and the daily summary.

The figures are agent.ledger's, computed over the exchange's fills and settlements the bot stored
and the account snapshots it took each tick; this module only picks the window and words them.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from agent.clock import to_datetime
from agent.ledger import Cycle, Pnl, pnl
from agent.state import parse_option_name

from .store import Store


def report(store: Store, underlying: str, since: datetime | None = None, until: datetime | None = None) -> Pnl | None:
    """P&L from the snapshot at `since` (or the first one: the ledger's baseline) to the latest (or `until`)."""
    end = store.snapshot_at(underlying, until) if until is not None else store.last_snapshot(underlying)
    if end is None:
        return None
    start = store.snapshot_at(underlying, since) if since is not None else store.snapshot_at(underlying, None, first=True)
    if start is None or start.timestamp > end.timestamp:
        return None
    s_dt, e_dt = to_datetime(start.timestamp), to_datetime(end.timestamp)
    return pnl(store.ledger_fills(underlying, s_dt, e_dt), store.ledger_settlements(underlying, s_dt, e_dt), start, end)


def current_cycle(store: Store, underlying: str) -> Cycle | None:
    """The open leg of a short call (the cycle in progress), valued at the latest snapshot."""
    total = report(store, underlying)
    if total is None:
        return None
    open_legs = [c for c in total.cycles if c.is_open and c.size < 0]
    return open_legs[-1] if open_legs else None


def _days_left(name: str, now_ms: int) -> float | None:
    try:
        return (parse_option_name(name)["expiration_timestamp"] - now_ms) / 86_400_000
    except ValueError:
        return None


def format_report(p: Pnl, underlying: str, title: str = "P&L") -> str:
    """The few lines a trader reads: what it earned, from what, and against holding the coin."""
    u = underlying
    closed = [c for c in p.cycles if not c.is_open]
    lines = [
        f"{title} {to_datetime(p.start.timestamp):%Y-%m-%d %H:%M} -> {to_datetime(p.end.timestamp):%Y-%m-%d %H:%M} UTC "
        f"({p.fills} fills, {p.settlements} settlements, {len(closed)} cycles closed)",
        f"  premium collected {p.premium:.6f} {u}, bought back {p.buyback:.6f}, fees {p.fees:.6f}, "
        f"settlement cash {p.settlement_cash:+.6f}",
        f"  realized {p.realized_coin:+.6f} {u} (${p.realized_usd:+,.2f}), unrealized at mark {p.unrealized_coin:+.6f} {u} "
        f"(${p.unrealized_usd:+,.2f})",
        f"  option P&L {p.pnl_coin:+.6f} {u} (${p.pnl_usd:+,.2f}); equity {p.start.equity:.6f} -> {p.end.equity:.6f} "
        f"(change {p.equity_change:+.6f}): check {'OK' if p.check_ok else 'DIFFERS'} by {p.check_diff:+.1e}",
        f"  vs HODL: holding {p.start.equity:.4f} {u} is worth ${p.hodl_usd:,.2f} at {p.end.spot:,.0f}; the strategy "
        f"${p.strategy_usd:,.2f} ({p.vs_hodl_usd:+,.2f})",
    ]
    for c in p.cycles[-5:]:
        lines.append("  " + format_cycle(c, u, p.end.timestamp))
    return "\n".join(lines)


def format_cycle(c: Cycle, underlying: str, now_ms: int) -> str:
    opened = f"{to_datetime(c.opened_at):%m-%d %H:%M}"
    if c.is_open:
        left = _days_left(c.instrument_name, now_ms)
        state = f"open{f', {left:.1f} d left' if left is not None else ''}, value {c.open_value:+.6f}"
    else:
        state = f"{c.end.replace('_', ' ')} {to_datetime(c.closed_at or 0):%m-%d %H:%M}"
    return (f"cycle {c.instrument_name} {c.size:+g} from {opened}: {state}; premium {c.premium:.6f}, fees {c.fees:.6f}"
            + (f", settled {c.settlement_cash:+.6f}" if c.settlement_cash else "")
            + f" -> {c.pnl_coin:+.6f} {underlying} (${c.pnl_usd:+,.2f})")


def daily_text(store: Store, underlying: str, now: datetime, positions: list[dict[str, Any]] | None = None) -> str:
    """The P&L part of the daily summary: the day's and the cycle's, premium, fees, the open call."""
    day = report(store, underlying, since=now - timedelta(days=1))
    if day is None:
        return "No P&L yet: the ledger has no account snapshot."
    u = underlying
    text = (f"Day: option P&L {day.pnl_coin:+.6f} {u} (${day.pnl_usd:+,.2f}), premium {day.premium:.6f}, "
            f"fees {day.fees:.6f}, settlements {day.settlement_cash:+.6f}; equity {day.end.equity:.6f} {u} "
            f"(check {'OK' if day.check_ok else 'DIFFERS by %+.1e' % day.check_diff}).")
    cyc = current_cycle(store, underlying)
    if cyc is None:
        text += " No call open."
    else:
        left = _days_left(cyc.instrument_name, day.end.timestamp)
        delta = next((p.get("delta") for p in positions or [] if p.get("name") == cyc.instrument_name), None)
        text += (f" Open call {cyc.instrument_name} {cyc.size:+g}"
                 + (f", delta {delta:.2f}" if delta is not None else "")
                 + (f", {left:.1f} days left" if left is not None else "")
                 + f"; cycle P&L {cyc.pnl_coin:+.6f} {u} (${cyc.pnl_usd:+,.2f}) on {cyc.premium:.6f} premium.")
    return text


def parse_since(text: str | None, now: datetime) -> datetime | None:
    """'30d', '12h', '2w' or an ISO date -> a datetime; None for everything (since the baseline)."""
    if not text or text in ("all", "total"):
        return None
    t = text.strip().lower()
    units = {"h": 3600, "d": 86400, "w": 7 * 86400}
    if t[-1:] in units and t[:-1].replace(".", "", 1).isdigit():
        return now - timedelta(seconds=float(t[:-1]) * units[t[-1]])
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: use 30d, 12h, 2w, all or a date such as 2026-11-01") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=now.tzinfo)


def cli_pnl(store: Store, underlying: str, since: str | None, as_json: bool, png: str | None,
            chart: str | None) -> int:
    """`chatops pnl`: the report (or JSON with the equity check), and the charts into files."""
    import json
    import sys

    from . import charts

    now = datetime.now(timezone.utc)
    last = store.last_snapshot(underlying)
    if last is not None:
        now = max(now, to_datetime(last.timestamp))  # a simulated clock may run ahead of the wall
    try:
        start = parse_since(since, now)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    rep = report(store, underlying, since=start)
    if rep is None:
        print(f"No P&L yet for {underlying}: the ledger has no account snapshot (the bot takes one each tick).")
        return 0
    if as_json:
        print(json.dumps({"underlying": underlying, **rep.to_dict()}, indent=2, default=str))
    else:
        print(format_report(rep, underlying))
    for path, draw in ((png, charts.pnl_png), (chart, charts.strike_png)):
        if path:
            data = draw(store, underlying, start)
            if data is None:
                print(f"no chart for {path}: it needs at least two snapshots", file=sys.stderr)
                continue
            with open(path, "wb") as fh:
                fh.write(data)
            if not as_json:
                print(f"chart written to {path} ({len(data):,} bytes)")
    return 0


__all__ = ["cli_pnl", "current_cycle", "daily_text", "format_cycle", "format_report", "parse_since", "report"]
