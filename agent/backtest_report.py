"""The backtest's report, from the exchange's own records: trades, settlements, account equity.

Nothing here comes from what the bot believed it did. Premium, buy-backs and fees are summed from
the exchange's trades; settlement cash from its settlement records; equity from its account
summary, read after every tick. The identity the report checks and prints:

    equity change = premium - buy-backs - fees + settlement cash + value of the options still open

NOTE: these sums are the backtest's own small ledger (`ledger_figures`). The project's ledger
(agent/ledger.py, the P&L issue) computes the same figures from the same records; once it lands,
`ledger_figures` should delegate to it so there is one ledger.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .backtest import BacktestRun, Book, agreement
from .clock import to_datetime
from .market.base import DAY_MS

REPORT_VERSION = 1


@dataclass(frozen=True)
class LedgerFigures:
    premium: float  # coin received for calls sold
    buybacks: float  # coin paid for calls bought back
    fees: float
    settlement_cash: float  # net settlement cash flow: negative when expiries paid out
    open_value: float  # mark value of the options still open at the end (negative for shorts)
    opens: int
    rolls: int
    closes: int
    expired_itm: int
    expired_otm: int
    cycles: tuple[dict[str, Any], ...]

    @property
    def coin_pnl(self) -> float:
        return self.premium - self.buybacks - self.fees + self.settlement_cash + self.open_value


def _is_roll_leg(label: str, suffix: str) -> bool:
    return (label or "").endswith(suffix)


def ledger_figures(trades: list[dict[str, Any]], settlements: list[dict[str, Any]], open_value: float) -> LedgerFigures:
    """Premium, fees, settlement cash and the cycles (open -> rolls -> close or expiry) from the
    exchange's trade and settlement records, in time order."""
    events: list[tuple[int, int, str, dict[str, Any]]] = []
    for i, t in enumerate(trades):
        events.append((int(t["timestamp"]), i, "trade", t))
    for j, s in enumerate(settlements):
        events.append((int(s["timestamp"]), len(trades) + j, "settlement", s))
    events.sort(key=lambda e: (e[0], e[1]))
    premium = buybacks = fees = cash = 0.0
    opens = rolls = closes = itm = otm = 0
    live: dict[str, dict[str, Any]] = {}  # instrument -> its cycle
    cycles: list[dict[str, Any]] = []
    for ts, _, kind, r in events:
        name = r["instrument_name"]
        if kind == "settlement":
            cash += float(r["cash_flow"])
            c = live.pop(name, None)
            if float(r["position"]) < 0:
                paid = float(r["cash_flow"]) < 0
                itm += paid
                otm += not paid
                if c is not None:
                    c["settlement"] += float(r["cash_flow"])
                    _end(c, ts, "expired ITM" if paid else "expired OTM")
            continue
        amount, price, fee = float(r["amount"]), float(r["price"]), float(r["fee"])
        fees += fee
        label = r.get("label") or ""
        if r["direction"] == "sell":
            premium += amount * price
            if _is_roll_leg(label, "-open"):
                rolls += 1
                prev = next((c for c in live.values() if c.get("_roll_label") == label[: -len("-open")]), None)
                c = prev or _new_cycle(ts, name)
                if prev is not None:
                    for k in [k for k, v in live.items() if v is prev]:
                        del live[k]
                c["legs"].append(name)
            else:
                opens += 1
                c = _new_cycle(ts, name)
                cycles.append(c)
            c["premium"] += amount * price
            c["fees"] += fee
            live[name] = c
        else:
            buybacks += amount * price
            c = live.get(name)
            if _is_roll_leg(label, "-close"):
                if c is not None:
                    c["_roll_label"] = label[: -len("-close")]
            else:
                closes += 1
            if c is not None:
                c["buybacks"] += amount * price
                c["fees"] += fee
                if not _is_roll_leg(label, "-close"):
                    live.pop(name, None)
                    _end(c, ts, "closed")
    for c in live.values():
        if c.get("outcome") is None:
            c["outcome"] = "open at the end"
    out = []
    for c in cycles:
        c.pop("_roll_label", None)
        c["pnl"] = c["premium"] - c["buybacks"] - c["fees"] + c["settlement"]
        out.append(c)
    return LedgerFigures(premium, buybacks, fees, cash, open_value, opens, rolls, closes, itm, otm, tuple(out))


def _new_cycle(ts: int, name: str) -> dict[str, Any]:
    return {"opened_ms": ts, "ended_ms": None, "legs": [name], "premium": 0.0, "buybacks": 0.0, "fees": 0.0,
            "settlement": 0.0, "outcome": None}


def _end(c: dict[str, Any], ts: int, outcome: str) -> None:
    c["ended_ms"] = ts
    c["outcome"] = outcome


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
    cur = spec.currency
    trades = list(b.paper.trades.get(cur, []))
    settlements = list(b.paper.settlements.get(cur, []))
    acct = b.final_account
    led = ledger_figures(trades, settlements, float(acct.get("options_value", 0.0)))
    first, last = b.samples[0], b.samples[-1]
    eq0, eq1 = b.start_equity, float(acct["equity"])
    s0, s1 = first.spot, last.spot
    usd0, usd1, hodl1 = eq0 * s0, eq1 * s1, eq0 * s1
    days = spec.days
    usd_curve = [s.equity * s.spot for s in b.samples]
    hodl_curve = [eq0 * s.spot for s in b.samples]
    return {
        "book": b.name,
        "decision_mode": b.mode,
        "ticks": len(b.samples),
        "failed_ticks": b.failed_ticks,
        "coin": {
            "start_equity": _r(eq0), "end_equity": _r(eq1), "pnl": _r(eq1 - eq0),
            "premium_collected": _r(led.premium), "bought_back": _r(led.buybacks), "fees": _r(led.fees),
            "settlement_cash": _r(led.settlement_cash), "open_options_value": _r(led.open_value),
            "explained_pnl": _r(led.coin_pnl), "unexplained": _r(eq1 - eq0 - led.coin_pnl, 9),
            "annualized_return_pct": _r(_annualized(eq1 / eq0, days) * 100, 2),
            "max_drawdown_pct": _r(max_drawdown([s.equity for s in b.samples]) * 100, 2),
        },
        "usd": {
            "start_value": _r(usd0, 2), "end_value": _r(usd1, 2), "pnl": _r(usd1 - usd0, 2),
            "hodl_end_value": _r(hodl1, 2), "hodl_pnl": _r(hodl1 - usd0, 2), "vs_hodl": _r(usd1 - hodl1, 2),
            "annualized_return_pct": _r(_annualized(usd1 / usd0, days) * 100, 2),
            "hodl_annualized_return_pct": _r(_annualized(hodl1 / usd0, days) * 100, 2),
            "max_drawdown_pct": _r(max_drawdown(usd_curve) * 100, 2),
            "hodl_max_drawdown_pct": _r(max_drawdown(hodl_curve) * 100, 2),
        },
        "counts": {"opens": led.opens, "rolls": led.rolls, "closes": led.closes, "expired_itm": led.expired_itm,
                   "expired_otm": led.expired_otm, "trades": len(trades), "settlements": len(settlements)},
        "cycles": [
            {"opened": f"{to_datetime(c['opened_ms']):%Y-%m-%d %H:%M}",
             "ended": f"{to_datetime(c['ended_ms']):%Y-%m-%d %H:%M}" if c["ended_ms"] else None,
             "legs": c["legs"], "premium": _r(c["premium"]), "bought_back": _r(c["buybacks"]), "fees": _r(c["fees"]),
             "settlement": _r(c["settlement"]), "pnl": _r(c["pnl"]), "outcome": c["outcome"]}
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
            f"unexplained {c['unexplained']:+.9f})",
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
            lines.append(f"  {'opened':16} {'ended':16} {'legs':40} {'premium':>9} {'bought':>9} {'fees':>8} "
                         f"{'settled':>9} {'P&L':>9}  outcome")
            for cy in b["cycles"]:
                legs = " > ".join(cy["legs"])
                lines.append(f"  {cy['opened']:16} {cy['ended'] or '-':16} {legs[:40]:40} {cy['premium']:9.4f} "
                             f"{cy['bought_back']:9.4f} {cy['fees']:8.4f} {cy['settlement']:+9.4f} {cy['pnl']:+9.4f}  "
                             f"{cy['outcome']}")
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
