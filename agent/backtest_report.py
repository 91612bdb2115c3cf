"""The backtest's report, from the exchange's own records: trades, settlements, account equity.

Nothing here comes from what the bot believed it did. The figures are the project's ledger
(`agent.ledger`) over the paper exchange's trades and settlement records, with the account read
back from the exchange at the start and the end (equity, spot, the marks of what is still open);
the equity curve is the account's equity read after every tick. The ledger checks, and the report
prints, that the option P&L it builds from the records equals the account's equity change:

    equity change = premium - buy-backs - fees + settlement cash + value of the options still open
"""

from __future__ import annotations

import json
import math
from typing import Any

from . import ledger
from .backtest import BacktestRun, Book, agreement
from .clock import to_datetime

REPORT_VERSION = 1
END_NAMES = {"close": "closed", "roll": "rolled", "expiry_itm": "expired ITM", "expiry_otm": "expired OTM",
             "open": "open at the end"}


def book_ledger(b: Book, run: BacktestRun) -> ledger.Pnl:
    """The ledger's P&L of one book over the run, from the exchange's records."""
    cur = run.spec.currency
    fills = [ledger.fill_from_trade(t) for t in b.paper.trades.get(cur, [])]
    settlements = [s for s in (ledger.settlement_from_wire(r) for r in b.paper.settlements.get(cur, [])) if s]
    # The start snapshot is taken just before the first tick, so a trade of that tick counts.
    start = ledger.Snapshot(timestamp=run.spec.start_ms - 1, equity=b.start_equity, spot=b.samples[0].spot)
    last = b.samples[-1]
    marks = tuple(ledger.Mark(instrument_name=p["instrument_name"], size=float(p["size"]), mark=float(p["mark_price"]))
                  for p in b.final_positions)
    end = ledger.Snapshot(timestamp=last.t_ms, equity=float(b.final_account["equity"]), spot=last.spot, marks=marks)
    return ledger.pnl(fills, settlements, start, end)


def max_drawdown(values: list[float]) -> float:
    """Largest fall from a running peak, as a fraction of that peak (0.25 = -25 %)."""
    peak, worst = -math.inf, 0.0
    for v in values:
        peak = max(peak, v)
        if peak > 0:
            worst = max(worst, (peak - v) / peak)
    return worst


def _annualized(ratio: float, days: float) -> float:
    return ratio ** (365.0 / days) - 1.0 if days > 0 and ratio > 0 else math.nan


def _r(x: float, nd: int = 6) -> float:
    return round(x, nd) + 0.0


def book_report(b: Book, run: BacktestRun) -> dict[str, Any]:
    spec = run.spec
    led = book_ledger(b, run)
    eq0, eq1 = led.start.equity, led.end.equity
    s0, s1 = led.start.spot, led.end.spot
    usd0, usd1, hodl1 = eq0 * s0, eq1 * s1, eq0 * s1
    days = spec.days
    usd_curve = [s.equity * s.spot for s in b.samples]
    hodl_curve = [eq0 * s.spot for s in b.samples]
    ends = [c.end for c in led.cycles]
    rolls = ends.count("roll")
    return {
        "book": b.name,
        "decision_mode": b.mode,
        "ticks": len(b.samples),
        "failed_ticks": b.failed_ticks,
        "coin": {
            "start_equity": _r(eq0), "end_equity": _r(eq1), "pnl": _r(eq1 - eq0),
            "premium_collected": _r(led.premium), "bought_back": _r(led.buyback), "fees": _r(led.fees),
            "settlement_cash": _r(led.settlement_cash), "open_options_value": _r(led.end.options_value),
            "realized": _r(led.realized_coin), "unrealized": _r(led.unrealized_coin),
            "ledger_pnl": _r(led.pnl_coin), "unexplained": _r(led.check_diff, 9), "ledger_check_ok": led.check_ok,
            "annualized_return_pct": _r(_annualized(eq1 / eq0, days) * 100, 2),
            "max_drawdown_pct": _r(max_drawdown([s.equity for s in b.samples]) * 100, 2),
        },
        "usd": {
            "start_value": _r(usd0, 2), "end_value": _r(usd1, 2), "pnl": _r(usd1 - usd0, 2),
            "options_pnl_at_flow_prices": _r(led.pnl_usd, 2),
            "hodl_end_value": _r(hodl1, 2), "hodl_pnl": _r(hodl1 - usd0, 2), "vs_hodl": _r(led.vs_hodl_usd, 2),
            "annualized_return_pct": _r(_annualized(usd1 / usd0, days) * 100, 2),
            "hodl_annualized_return_pct": _r(_annualized(hodl1 / usd0, days) * 100, 2),
            "max_drawdown_pct": _r(max_drawdown(usd_curve) * 100, 2),
            "hodl_max_drawdown_pct": _r(max_drawdown(hodl_curve) * 100, 2),
        },
        "counts": {"opens": len(led.cycles) - rolls, "rolls": rolls, "closes": ends.count("close"),
                   "expired_itm": ends.count("expiry_itm"), "expired_otm": ends.count("expiry_otm"),
                   "trades": led.fills, "settlements": led.settlements},
        "cycles": [
            {"instrument": c.instrument_name, "opened": f"{to_datetime(c.opened_at):%Y-%m-%d %H:%M}",
             "ended": f"{to_datetime(c.closed_at):%Y-%m-%d %H:%M}" if c.closed_at is not None else None,
             "size": _r(c.size, 8), "premium": _r(c.premium), "bought_back": _r(c.buyback), "fees": _r(c.fees),
             "settlement": _r(c.settlement_cash), "open_value": _r(c.open_value), "pnl": _r(c.pnl_coin),
             "pnl_usd": _r(c.pnl_usd, 2), "outcome": END_NAMES.get(c.end, c.end)}
            for c in led.cycles
        ],
    }


def build_report(run: BacktestRun) -> dict[str, Any]:
    """The whole report as plain values: the same run gives the same dict (and the same JSON)."""
    spec = run.spec
    first = run.books[0].samples
    out: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "run": {
            "start": f"{to_datetime(spec.start_ms):%Y-%m-%d %H:%M} UTC", "end": f"{to_datetime(spec.end_ms):%Y-%m-%d %H:%M} UTC",
            "days": _r(spec.days, 3), "interval_minutes": spec.interval_ms // 60_000, "ticks": spec.ticks,
            "seed": spec.seed, "brain": spec.brain, "market": spec.market, "currency": spec.currency,
            "vrp": spec.vrp, "model": run.model.describe(),
            "spot_start": _r(first[0].spot, 2), "spot_end": _r(first[-1].spot, 2),
            "spot_min": _r(min(s.spot for s in first), 2), "spot_max": _r(max(s.spot for s in first), 2),
        },
        "books": [book_report(b, run) for b in run.books],
    }
    rules = next((b for b in run.books if b.shadow_pairs), None)
    if rules is not None:
        out["shadow"] = agreement(rules.shadow_pairs)
    return out


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, allow_nan=True) + "\n"


def report_text(report: dict[str, Any]) -> str:
    run = report["run"]
    lines = [
        f"Backtest {run['start']} to {run['end']} ({run['days']:g} days, {run['ticks']} ticks every "
        f"{run['interval_minutes']} min), {run['currency']}, brain {run['brain']}, seed {run['seed']}",
        f"Market: {run['model']}",
        f"Spot {run['spot_start']:,.0f} -> {run['spot_end']:,.0f} (low {run['spot_min']:,.0f}, high {run['spot_max']:,.0f})",
    ]
    for b in report["books"]:
        c, u, n = b["coin"], b["usd"], b["counts"]
        cur = run["currency"]
        lines += [
            "",
            f"[{b['book']}] decisions by {b['decision_mode']}; {b['ticks']} ticks"
            + (f", {b['failed_ticks']} failed" if b["failed_ticks"] else ""),
            f"  premium collected   {c['premium_collected']:+.6f} {cur}",
            f"  bought back         {-c['bought_back']:+.6f} {cur}",
            f"  fees                {-c['fees']:+.6f} {cur}",
            f"  settlement cash     {c['settlement_cash']:+.6f} {cur}",
            f"  options still open  {c['open_options_value']:+.6f} {cur} (at mark)",
            f"  = P&L               {c['pnl']:+.6f} {cur}  (equity {c['start_equity']:.6f} -> {c['end_equity']:.6f}; "
            f"ledger vs equity {c['unexplained']:+.9f}{'' if c['ledger_check_ok'] else ' MISMATCH'})",
            f"  realized {c['realized']:+.6f}, unrealized {c['unrealized']:+.6f} {cur}",
            f"  annualized {c['annualized_return_pct']:+.2f}% in {cur}, max drawdown {c['max_drawdown_pct']:.2f}%",
            f"  USD: {u['start_value']:,.2f} -> {u['end_value']:,.2f} ({u['pnl']:+,.2f}, {u['annualized_return_pct']:+.2f}%/y, "
            f"max drawdown {u['max_drawdown_pct']:.2f}%)",
            f"  HODL {cur}: {u['start_value']:,.2f} -> {u['hodl_end_value']:,.2f} ({u['hodl_pnl']:+,.2f}, "
            f"{u['hodl_annualized_return_pct']:+.2f}%/y, max drawdown {u['hodl_max_drawdown_pct']:.2f}%); "
            f"strategy vs HODL {u['vs_hodl']:+,.2f} USD",
            f"  {n['opens']} opens, {n['rolls']} rolls, {n['closes']} closes, {n['expired_itm']} expired in the money, "
            f"{n['expired_otm']} out of the money ({n['trades']} trades, {n['settlements']} settlements)",
        ]
        if b["cycles"]:
            lines.append(f"  {'opened':16} {'ended':16} {'instrument':22} {'premium':>8} {'bought':>8} {'fees':>7} "
                         f"{'settled':>8} {'open':>8} {'P&L':>8} {'P&L USD':>9}  outcome")
            for cy in b["cycles"]:
                lines.append(f"  {cy['opened']:16} {cy['ended'] or '-':16} {cy['instrument']:22} {cy['premium']:8.4f} "
                             f"{cy['bought_back']:8.4f} {cy['fees']:7.4f} {cy['settlement']:+8.4f} {cy['open_value']:+8.4f} "
                             f"{cy['pnl']:+8.4f} {cy['pnl_usd']:+9.2f}  {cy['outcome']}")
    if "shadow" in report:
        s = report["shadow"]
        pnl = {b["book"]: b["coin"]["pnl"] for b in report["books"]}
        lines += ["", f"Rules vs LLM on the same {s['ticks']} ticks: same action {s['same_action_pct']}%, same action "
                      f"and instrument {s['same_action_and_instrument_pct']}%; when either acted ({s['ticks_where_either_acted']} "
                      f"ticks) they agreed {s['agreement_when_either_acted_pct']}%.",
                  "P&L of each, each driving its own book: " + ", ".join(f"{k} {v:+.6f} {run['currency']}" for k, v in pnl.items())]
    if "deribit" in run["market"] or "csv" in run["market"]:
        lines += ["", "Option prices are modelled (Black-76 from the implied-vol series, with a term structure and a "
                      "smile), not replayed option quotes."]
    return "\n".join(lines) + "\n"
