"""What the pages and the API show, as plain JSON-able dicts: one function per page, shared by the
HTML templates and /api/v1, so the two cannot disagree.

Everything is read from the store (and, under a running bot, the exchange for the live account),
never from what the bot assumes. Settings are shown only through `Settings.redacted()`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from agent.config import Settings
from agent.snapshot import POS_KEYS, named

from ..render import STATUS_WORDS, Card
from ..store import STATUSES, Store, parse_ts, read_anchors

if TYPE_CHECKING:
    from ..app import Bot
    from ..core import Core

log = logging.getLogger(__name__)

LIVE_ACCOUNT_TTL_S = 5.0  # one exchange read per 5 s, however many browsers poll
MAX_PAGE = 200
VERIFY_TTL_S = 30.0
MAX_TICKS = 5000  # the equity chart's window: about 17 days of 5-minute ticks


@dataclass
class Context:
    """What the web server reads from: the store and settings always; the core for cards and
    actions; the bot (live account, watchdog) only under `chatops run`."""

    store: Store
    settings: Settings
    core: "Core"
    bot: "Bot | None" = None
    read_only: bool = False
    _live: tuple[float, dict[str, Any]] | None = field(default=None, repr=False)
    _live_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _verified: tuple[Any, dict[str, Any], float] | None = field(default=None, repr=False)

    def now(self) -> datetime:
        return self.bot.now() if self.bot is not None else datetime.now(timezone.utc)


# --- small helpers ------------------------------------------------------------------------------


def iso_or_none(dt: datetime | None) -> str | None:
    return dt.isoformat() if isinstance(dt, datetime) else dt


def card_dict(card: Card) -> dict[str, Any]:
    return {"id": card.proposal_id, "title": card.title, "tag": card.tag, "status": card.status,
            "status_text": STATUS_WORDS.get(card.status or "", card.status), "actionable": card.actionable,
            "fields": [list(f) for f in card.fields], "sections": [list(s) for s in card.sections],
            "footer": card.footer}


def exchange_kind(settings: Settings) -> str:
    """paper, testnet, mainnet (or the host of another Deribit-compatible server)."""
    if settings.exchange == "paper":
        return "paper"
    host = (urlparse(settings.deribit_base_url).hostname or "").lower()
    if host == "test.deribit.com":
        return "testnet"
    if host in ("www.deribit.com", "deribit.com"):
        return "mainnet"
    return f"custom ({host or settings.deribit_base_url})"


def _positions(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Positions of a stored tick (named keys; older rows positional)."""
    out = []
    for p in state.get("pos") or []:
        row = named(p, POS_KEYS)
        out.append({"instrument_name": row.get("name", row.get("instrument_name")), "size": row.get("size"),
                    "average_price": row.get("avg", row.get("average_price")), "mark": row.get("mark"),
                    "delta": row.get("delta"), "dte": row.get("dte")})
    return out


# --- overview -----------------------------------------------------------------------------------


async def live_account(ctx: Context) -> dict[str, Any] | None:
    """Account, positions and working orders as the exchange reports them now (bot only; cached)."""
    if ctx.bot is None:
        return None
    async with ctx._live_lock:
        if ctx._live and time.monotonic() - ctx._live[0] < LIVE_ACCOUNT_TTL_S:
            return ctx._live[1]
        client, cur = ctx.bot.exchange.client, ctx.settings.underlying
        try:
            acct, positions, orders = await asyncio.gather(
                client.get_account_summary(cur), client.get_positions(cur, "option"),
                client.get_open_orders_by_currency(cur, "option"))
        except Exception as exc:  # the page still shows the last tick; say why the live read failed
            out = {"error": f"live read failed: {type(exc).__name__}: {str(exc)[:200]}"}
        else:
            im = acct.initial_margin
            out = {
                "as_of": ctx.now().isoformat(), "source": "exchange",
                "equity": acct.equity, "balance": acct.balance, "available_funds": acct.available_funds,
                "initial_margin": im, "maintenance_margin": acct.maintenance_margin,
                "margin_used_pct": (im / acct.equity * 100.0) if acct.equity > 0 else 0.0,
                "options_delta": acct.options_delta, "delta_total": acct.delta_total,
                "positions": [{"instrument_name": p.instrument_name, "size": p.signed_size,
                               "average_price": p.average_price, "mark": p.mark_price, "delta": p.delta,
                               "floating_pl": p.floating_profit_loss}
                              for p in positions if abs(p.signed_size) > 0],
                "orders": [{"order_id": o.order_id, "instrument_name": o.instrument_name, "direction": o.direction,
                            "amount": o.amount, "filled_amount": o.filled_amount, "price": o.price, "label": o.label,
                            "state": o.order_state} for o in orders if o.order_state in ("open", "untriggered")],
            }
        ctx._live = (time.monotonic(), out)
        return out


def watchdog(ctx: Context) -> str | None:
    if ctx.bot is not None:
        return ctx.bot.watchdog_problem()
    last = ctx.store.last_tick_at()
    limit = 3 * ctx.settings.loop_interval_sec
    if last is not None and (ctx.now() - last).total_seconds() > limit:
        return f"no tick for {(ctx.now() - last).total_seconds():.0f}s (expected every {ctx.settings.loop_interval_sec:g}s)"
    return None


def _coins(ctx: Context, now) -> list[dict[str, Any]]:
    """UNDERLYING=BTC,ETH: a row per coin from its last tick (pause, action, equity, pending)."""
    out = []
    for coin in ctx.settings.underlyings:
        last = ctx.store.last_decision(underlying=coin)
        st = (last or {}).get("state") or {}
        out.append({"underlying": coin, "paused": ctx.store.get_flag(f"paused:{coin}", "0") == "1",
                    "last": {"id": last["id"], "age_s": round((now - parse_ts(last["ts"])).total_seconds(), 1),
                             "action": last["final_action"], "symbol": last.get("final_symbol")} if last else None,
                    "equity": st.get("eq"), "spot": st.get("spot"), "positions": len(st.get("pos") or []),
                    "pending": [r.id for r in ctx.store.pending_proposals(coin)]})
    return out


async def overview(ctx: Context) -> dict[str, Any]:
    s, store = ctx.settings, ctx.store
    last = store.last_decision(underlying=s.underlying)  # the account below is this coin's
    now = ctx.now()
    tick: dict[str, Any] = {"last": None, "next": None}
    account: dict[str, Any] | None = None
    if last:
        ts = parse_ts(last["ts"])
        tick["last"] = {"id": last["id"], "ts": last["ts"], "age_s": round((now - ts).total_seconds(), 1),
                        "action": last["final_action"], "symbol": last.get("final_symbol"),
                        "source": last["decision_source"], "risk_allowed": bool(last["risk_allowed"])}
        # The scheduler ticks every LOOP_INTERVAL_SEC: the next one is due then (later if a tick is slow).
        tick["next"] = (ts + timedelta(seconds=s.loop_interval_sec)).isoformat()
        st = last.get("state") or {}
        if st:
            account = {"as_of": last["ts"], "source": f"tick d{last['id']}", "equity": st.get("eq"),
                       "margin_used_pct": st.get("mu"), "options_delta": st.get("od"), "spot": st.get("spot"),
                       "positions": _positions(st), "orders": None}
    live = await live_account(ctx)
    if live and "error" not in live:
        account = {**live, "spot": account.get("spot") if account else None}
    pend = store.pending_proposals()
    return {
        "tag": s.trading_tag,
        "exchange": {"kind": exchange_kind(s), "name": s.exchange, "dry_run": s.effective_dry_run,
                     "underlying": s.underlying,
                     "description": ctx.bot.exchange.description if ctx.bot is not None else None},
        "brain": {"decision_mode": s.effective_decision_mode, "llm_enabled": s.llm_enabled,
                  "llm_model": s.llm_model_name if s.effective_decision_mode != "rule" else None,
                  "profile": s.mode, "approval_mode": s.approval_mode, "approvals_required": s.approvals_required},
        "paused": store.get_flag("paused", "0") == "1",
        "tick": tick,
        "loop_interval_sec": s.loop_interval_sec,
        "account": account,
        "live_error": live.get("error") if live else None,
        "pending": [r.id for r in pend],
        "coins": _coins(ctx, now) if len(s.underlyings) > 1 else [],
        "watchdog": watchdog(ctx),
        "served_by": "chatops web (read-only, from the database)" if ctx.read_only else "chatops run",
        "now": now.isoformat(),
    }


def settings_view(ctx: Context) -> dict[str, Any]:
    """Every setting, with secrets as '***' (Settings.redacted is the only source)."""
    return ctx.settings.redacted()


def pending_cards(ctx: Context) -> list[dict[str, Any]]:
    cards = [ctx.core.proposal_card(r.id) for r in ctx.store.pending_proposals()]
    return [card_dict(c) for c in cards if c is not None]


def change_mark(store: Store) -> int:
    """The id of the newest event: every vote, transition, pause and execution appends one, from
    whichever process, so a change of this number is what live refresh waits for."""
    rows = store.list_events(limit=1, order="desc")
    return int(rows[0]["id"]) if rows else 0


# --- lists ----------------------------------------------------------------------------------------


def _page_args(limit: int | None) -> int:
    return max(1, min(int(limit or 50), MAX_PAGE))


def _when(text: str | None, name: str) -> datetime | None:
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"bad {name} {text!r}: use ISO 8601, e.g. 2026-11-25T08:00") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _cursor(until: datetime | None, before: datetime | None) -> datetime | None:
    if until and before:
        return min(until, before)
    return until or before


def decisions(ctx: Context, *, action: str | None = None, since: str | None = None, until: str | None = None,
              before: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """Decisions newest first; `before` (the `next` of the previous page) pages back in time."""
    n = _page_args(limit)
    action = action or None
    rows = ctx.store.list_decisions(since=_when(since, "since"), until=_cursor(_when(until, "until"), _when(before, "before")),
                                    action=action, limit=n + 1, full=False)
    more = len(rows) > n
    rows = rows[:n]
    items = [{"id": r["id"], "ts": r["ts"], "underlying": r["underlying"], "action": r["final_action"],
              "proposed": r["proposed_action"], "symbol": r.get("final_symbol"), "risk_allowed": bool(r["risk_allowed"]),
              "source": r["decision_source"], "reasoning": (r.get("reasoning") or "")[:300]} for r in rows]
    return {"items": items, "next": items[-1]["ts"] if more and items else None,
            "filters": {"action": action, "since": since, "until": until, "limit": n}}


def decision(ctx: Context, decision_id: int) -> dict[str, Any] | None:
    d = ctx.store.get_decision(decision_id)
    if d is None:
        return None
    d = dict(d)
    d.pop("config_json", None)  # the parsed `config` stays: it is the redacted decision snapshot
    return d


def proposals(ctx: Context, *, status: str | None = None, action: str | None = None, since: str | None = None,
              until: str | None = None, before: str | None = None, limit: int | None = None) -> dict[str, Any]:
    n = _page_args(limit)
    status = status or None
    if status and status not in STATUSES:
        raise ValueError(f"bad status {status!r}: one of {', '.join(STATUSES)}")
    rows = ctx.store.list_proposals(status=status, action=action or None, since=_when(since, "since"),
                                    until=_cursor(_when(until, "until"), _when(before, "before")), limit=n + 1)
    more = len(rows) > n
    rows = rows[:n]
    items = [{"id": r.id, "created_at": r.created_at.isoformat(), "action": r.action, "symbol": r.symbol,
              "roll_from": r.roll_from, "size": r.size, "status": r.status,
              "status_text": STATUS_WORDS.get(r.status, r.status), "status_reason": r.status_reason,
              "decided_by": r.decided_by, "label": r.label} for r in rows]
    return {"items": items, "next": items[-1]["created_at"] if more and items else None,
            "filters": {"status": status, "action": action or None, "since": since, "until": until, "limit": n},
            "statuses": list(STATUSES)}


def proposal_story(ctx: Context, pid: int) -> dict[str, Any] | None:
    """One proposal's whole story: its card, decision, votes, executions with their orders, events,
    questions (with answers) and messages, as the store keeps them."""
    story = ctx.store.proposal_story(pid)
    if story is None:
        return None
    card = ctx.core.proposal_card(pid)
    out = {k: v for k, v in story.items()}
    out["card"] = card_dict(card) if card else None
    d = out.get("decision")
    if isinstance(d, dict):
        out["decision"] = {k: d.get(k) for k in ("id", "ts", "decision_source", "proposed_action", "final_action",
                                                 "final_symbol", "risk_allowed", "risk", "proposed", "final", "state")}
    orders = []
    for ex in out.get("executions") or []:
        ex.pop("result_json", None)
        for o in ex.get("orders") or []:
            orders.append(o)
    out["orders"] = orders
    return out


# --- P&L -----------------------------------------------------------------------------------------


def pnl(ctx: Context, *, points: int = 400) -> dict[str, Any]:
    """The ledger's P&L per coin (the exchange's fills, fees and settlements against the account
    snapshots, the same report as `chatops pnl`), the fills each order reported, and equity per tick."""
    store, cur = ctx.store, ctx.settings.underlying
    sold = bought = 0.0
    fills = []
    for o in store.iter_rows("orders"):
        filled = o.get("filled_amount") or 0.0
        if filled <= 0 or not o.get("average_price"):
            continue
        value = filled * o["average_price"]
        if o["side"] == "sell":
            sold += value
        else:
            bought += value
        fills.append({"ts": o["ts"], "proposal_id": o["proposal_id"], "instrument": o["instrument"], "side": o["side"],
                      "amount": filled, "average_price": o["average_price"], "order_id": o["order_id"]})
    series = []
    recent = list(islice(store.iter_rows("decisions", order="desc", batch_size=1000, underlying=cur), MAX_TICKS))
    for d in reversed(recent):
        st = d.get("state_json")
        if not st:
            continue
        s = json.loads(st)
        if s.get("eq") is not None:
            series.append((d["ts"], float(s["eq"]), float(s.get("spot") or 0.0)))
    step = max(1, len(series) // points)
    sampled = series[::step] + ([series[-1]] if series and (len(series) - 1) % step else [])
    from ..shadow import shadow_report

    report = shadow_report(store)
    from .. import pnl as pnl_mod

    ledger = {}
    for coin in ctx.settings.underlyings:
        rep = pnl_mod.report(store, coin)
        ledger[coin] = None if rep is None else {"report": rep.to_dict(), "text": pnl_mod.format_report(rep, coin)}
    return {
        "underlying": cur, "ledger": ledger,
        "premium_sold": round(sold, 8), "bought_back": round(bought, 8), "net_premium": round(sold - bought, 8),
        "fills": fills[-100:][::-1], "fills_total": len(fills),
        "equity": [{"ts": t, "equity": e, "spot": sp} for t, e, sp in sampled],
        "equity_change": round(series[-1][1] - series[0][1], 8) if series else None,
        "equity_from": series[0][0] if series else None, "ticks": len(series),
        "shadow": report.as_dict(), "shadow_text": report.as_text(),
        "note": "The ledger: the exchange's own fills, fees and settlements against the account snapshots of "
                "each tick (as `chatops pnl`). Below it: the fills each order reported, and equity per tick.",
    }


def equity_svg(points: list[dict[str, Any]], width: int = 720, height: int = 200) -> str:
    """The equity series as an inline SVG polyline (drawn server-side: no script, no asset)."""
    if len(points) < 2:
        return ""
    ys = [p["equity"] for p in points]
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or max(abs(hi), 1e-9) * 0.01
    pad = 10
    coords = " ".join(f"{pad + i * (width - 2 * pad) / (len(ys) - 1):.1f},"
                      f"{height - pad - (y - lo) / span * (height - 2 * pad):.1f}" for i, y in enumerate(ys))
    return (f'<svg viewBox="0 0 {width} {height}" width="100%" height="{height}" role="img" '
            f'aria-label="equity from {lo:.4f} to {hi:.4f}"><rect width="100%" height="100%" fill="#fafafa"/>'
            f'<polyline fill="none" stroke="#2a6" stroke-width="2" points="{coords}"/>'
            f'<text x="{pad}" y="{pad + 8}" font-size="11">{hi:.4f}</text>'
            f'<text x="{pad}" y="{height - 2}" font-size="11">{lo:.4f}</text></svg>')


# --- audit and chat --------------------------------------------------------------------------------


def verify(ctx: Context, fresh: bool = False) -> dict[str, Any]:
    """`verify` of the event chain and of the whole audit chain (every audit table, against the
    anchors in AUDIT_ANCHOR_FILE). Kept up to VERIFY_TTL_S while no event is added (a rescan per
    page view would cost O(rows)); `fresh` rescans now. The result says when it was computed."""
    anchors_path = Path(ctx.settings.effective_audit_anchor_file)
    key = (change_mark(ctx.store), anchors_path.stat().st_mtime_ns if anchors_path.exists() else None)
    if not fresh and ctx._verified and ctx._verified[0] == key and time.monotonic() - ctx._verified[2] < VERIFY_TTL_S:
        return ctx._verified[1]
    events = ctx.store.verify_chain()
    out: dict[str, Any] = {"ok": events.ok, "checked": events.checked, "first_broken_id": events.first_broken_id,
                           "reason": events.reason, "head_hash": events.head_hash, "at": ctx.now().isoformat()}
    anchors, problems = [], []
    if anchors_path.exists():
        try:
            anchors = read_anchors(anchors_path)
        except (OSError, ValueError) as exc:
            problems.append(f"anchor file unreadable: {exc}")
    full = ctx.store.verify_audit(anchors)
    out["audit"] = {"ok": full.ok and not problems, "head": full.head.as_text(), "rows": full.head.count,
                    "anchors_checked": full.anchors_checked, "anchor_file": str(anchors_path),
                    "problems": problems + full.problems, "text": full.as_text()}
    ctx._verified = (key, out, time.monotonic())
    return out


def audit(ctx: Context, *, kind: str | None = None, proposal: int | None = None, before: int | None = None,
          limit: int | None = None, fresh: bool = False) -> dict[str, Any]:
    n = _page_args(limit)
    equals: dict[str, Any] = {}
    if kind:
        equals["kind"] = kind
    if proposal is not None:
        equals["proposal_id"] = proposal
    newest_first = ctx.store.iter_rows("events", order="desc", batch_size=n + 1, **equals)
    rows = list(islice((r for r in newest_first if before is None or r["id"] < before), n + 1))
    more = len(rows) > n
    rows = rows[:n]
    events = [{k: r.get(k) for k in ("id", "ts", "kind", "proposal_id", "actor", "channel", "reason")} for r in rows]
    return {"verify": verify(ctx, fresh), "events": events, "next": events[-1]["id"] if more and events else None,
            "filters": {"kind": kind or None, "proposal": proposal, "limit": n}}


def conversation(ctx: Context, user: str, limit: int = 20) -> list[dict[str, Any]]:
    """This web user's latest questions with their answers, newest first."""
    out = []
    for q in islice(ctx.store.iter_rows("questions", order="desc", batch_size=limit, user=user, channel="web"), limit):
        answers = list(ctx.store.iter_rows("answers", question_id=q["id"]))
        out.append({"id": q["id"], "ts": q["ts"], "kind": q["kind"], "text": q["text"],
                    "answers": [{"ts": a["ts"], "text": a["text"], "source": a["source"]} for a in answers]})
    return out


def vote_rows(ctx: Context, pid: int) -> list[dict[str, Any]]:
    return [asdict(v) for v in ctx.store.votes(pid)]
