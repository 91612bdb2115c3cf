"""Channel-neutral content of messages: the proposal card, status, why, lists and notices.

Adapters only format a `Card` (plain text, Telegram HTML, Slack blocks); they never decide what
it says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from agent.models import Action, ActionType, ExecutionResult, RiskResult
from agent.snapshot import CAND_KEYS, named

ACTION_TITLES = {
    ActionType.OPEN_COVERED_CALL: "Open covered call",
    ActionType.ROLL_COVERED_CALL: "Roll covered call",
    ActionType.CLOSE_COVERED_CALL: "Close covered call",
    ActionType.DO_NOTHING: "Do nothing",
}

STATUS_WORDS = {
    "pending": "Waiting for approval",
    "approved": "Approved, executing shortly",
    "executing": "Executing",
    "executed": "Executed",
    "failed": "Execution failed",
    "rejected": "Rejected",
    "expired": "Expired (not executed)",
    "superseded": "Superseded by a newer proposal",
    "cancelled": "Cancelled",
    "blocked": "Blocked at re-check (not executed)",
}

FINAL_STATUSES = frozenset({"executed", "failed", "rejected", "expired", "superseded", "cancelled", "blocked"})


@dataclass(frozen=True)
class Card:
    """A message: a title, label/value fields, free text sections, and a footer line."""

    title: str
    tag: str  # [PAPER] / [DRY-RUN] / [LIVE]
    fields: tuple[tuple[str, str], ...] = ()
    sections: tuple[tuple[str, str], ...] = ()  # (heading, text)
    footer: str = ""
    proposal_id: int | None = None
    status: str | None = None
    actionable: bool = False  # show Approve / Reject buttons

    def as_text(self, compact: bool = False) -> str:
        """Plain text; `compact` keeps only the title, status and execution (for updates)."""
        lines = [f"{self.tag} {self.title}"]
        width = max((len(k) for k, _ in self.fields), default=0)
        if not compact:
            lines += [f"  {k.ljust(width)}  {v}" for k, v in self.fields]
        for heading, text in self.sections:
            if compact and heading not in ("Status", "Execution"):
                continue
            indent = "    " if heading else "  "
            if heading:
                lines.append(f"  {heading}:")
            lines += [f"{indent}{t}" for t in text.splitlines() if t.strip()]
        if self.footer and not compact:
            lines.append(f"  {self.footer}")
        return "\n".join(lines)


@dataclass(frozen=True)
class ProposalView:
    """Everything a card needs about one proposal, read from the store by the core."""

    id: int
    status: str
    action: Action
    created_at: datetime
    expires_at: datetime
    label: str
    risk: RiskResult | None = None
    candidate: dict[str, Any] | None = None  # the candidate's numbers at proposal time
    position: dict[str, Any] | None = None  # the position rolled or closed
    votes: tuple[tuple[str, str, str, str | None], ...] = ()  # (user, channel, vote, reason)
    approvals_required: int = 1
    status_reason: str | None = None
    execution: ExecutionResult | None = None
    decided_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _ago(ts: datetime, now: datetime) -> str:
    s = int((now - ts).total_seconds())
    if s < 90:
        return f"{s}s"
    if s < 5400:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _fmt_expiry(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%d %b %Y %H:%M UTC")


def proposal_card(v: ProposalView, tag: str, now: datetime, show_coin: bool = False) -> Card:
    """The card of a proposal; `show_coin` (UNDERLYING=BTC,ETH) ends the title with its coin."""
    a = v.action
    fields: list[tuple[str, str]] = [("Instrument", a.symbol or "-")]
    if a.roll_from:
        fields.insert(0, ("Rolls from", a.roll_from))
    c = v.candidate or {}
    if c:
        fields += [
            ("Strike", f"{c['strike']:,.0f}"),
            ("Expiry", f"{_fmt_expiry(c['expiration_timestamp'])} ({c['dte']:.1f} DTE)"),
            ("Delta", f"{c['delta']:.2f}"),
            ("Premium", f"{c['bid']:.4f} {a.underlying} (${c['bid_usd']:,.0f}) per contract"),
            ("Yield", f"{c['annualized_yield_pct']:.1f}% annualized, {c['otm_pct']:.1f}% OTM"),
        ]
    p = v.position or {}
    if p and a.action == ActionType.CLOSE_COVERED_CALL:
        fields += [
            ("Strike", f"{p['strike']:,.0f}"),
            ("Expiry", f"{_fmt_expiry(p['expiration_timestamp'])} ({p['dte']:.1f} DTE)"),
            ("Delta", f"{p['delta']:.2f}"),
            ("Buy back", f"about {a.ref_buy_price or p.get('ask') or p.get('mark'):.4f} {a.underlying} (sold at {p['average_price']:.4f})"),
        ]
    fields.append(("Size", f"{a.size:g} {a.underlying}" if a.size else "-"))
    fields.append(("Source", a.decision_source))

    sections = [("Reasoning", a.reasoning)]
    if v.risk is not None:
        risk_text = "allowed: " + "; ".join(v.risk.checks) if v.risk.allowed else "blocked: " + "; ".join(v.risk.reasons)
        sections.append(("Risk check", risk_text))

    status = STATUS_WORDS.get(v.status, v.status)
    approvals = [x for x in v.votes if x[2] == "approve"]
    rejects = [x for x in v.votes if x[2] == "reject"]
    if v.status == "pending":
        left = int((v.expires_at - now).total_seconds())
        status += f" ({len(approvals)}/{v.approvals_required} approvals, expires in {max(left, 0)}s)"
    if approvals and v.status != "pending":
        status += " - approved by " + ", ".join(f"{u} ({ch})" for u, ch, _, _ in approvals)
    if rejects:
        u, ch, _, reason = rejects[0]
        status += f" - rejected by {u} ({ch})" + (f": {reason}" if reason else "")
    if v.status_reason and v.status in ("blocked", "failed", "superseded", "cancelled", "expired"):
        status += f" - {v.status_reason}"
    if v.decided_at and v.status in FINAL_STATUSES:
        status += f" at {v.decided_at.strftime('%H:%M:%S UTC')}"
    sections.append(("Status", status))
    if v.execution is not None:
        sections.append(("Execution", execution_text(v.execution)))

    return Card(
        title=f"#{v.id} {ACTION_TITLES[a.action]}" + (f" - {a.underlying}" if show_coin else ""),
        tag=tag,
        fields=tuple(fields),
        sections=tuple(sections),
        footer=f"label {v.label} - proposed {_ago(v.created_at, now)} ago",
        proposal_id=v.id,
        status=v.status,
        actionable=v.status == "pending",
    )


def execution_text(e: ExecutionResult) -> str:
    lines = [f"{e.status.value}{' (dry run)' if e.dry_run else ''}: {e.message}"]
    for o in e.orders:
        r = o.request
        got = f"order {o.order_id} {o.order_state}, filled {o.filled_amount:g}" if o.order_id else "not sent"
        if o.average_price:
            got += f" at {o.average_price:g}"
        if o.error_code is not None:
            got += f", error {o.error_code}"
        lines.append(f"{r.side} {r.amount:g} {r.instrument_name} @ {r.price:g}: {got}")
    return "\n".join(lines)


def notice_card(title: str, text: str, tag: str) -> Card:
    return Card(title=title, tag=tag, sections=(("", text),) if text else ())


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """A plain-text table for terminals and monospace chat blocks."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def plain(text: str) -> str:
    """Channel-neutral text for a terminal: no Markdown marks (`resume`, *bold*, _it_)."""
    import re

    text = re.sub(r"`([^`\n]*)`", r"\1", text)
    text = re.sub(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])", r"\1", text)
    return re.sub(r"(?<![\w_])_([^_\n]+)_(?![\w_])", r"\1", text)


def banner(*, tag: str, exchange: str, brain: str, approvals: str, interval_s: float, next_tick: datetime | None,
           database: str, channels: tuple[str, ...], log_file: str | None = None,
           dashboard_url: str | None = None, paused: bool = False) -> str:
    """What `chatops run` says first: what it trades on, who decides, when the next tick is."""
    lines = [f"{tag} covered-call agent started",
             f"  exchange   {exchange}",
             f"  brain      {brain}",
             f"  approvals  {approvals}",
             f"  ticks      every {_every(interval_s)}"
             + (f", next at {next_tick:%H:%M:%S} UTC" if next_tick else ""),
             f"  database   {database}",
             f"  channels   {', '.join(channels) or 'none'}"]
    if log_file:
        lines.append(f"  log        {log_file}")
    if dashboard_url:
        lines.append(f"  dashboard  {dashboard_url}")
    if paused:
        lines.append("  PAUSED (kill switch on from before): type resume to let it trade")
    return "\n".join(lines)


def _every(seconds: float) -> str:
    s = float(seconds)
    if s >= 120 and s % 60 == 0:
        return f"{s / 60:g} min"
    return f"{s:g} s"


def quiet_tick(decision_id: int | None, ts: datetime, reasoning: str, best: list | dict | None,
               next_tick: datetime | None) -> str:
    """One line for a tick that decided to do nothing: why, and the best candidate it saw."""
    why = " ".join(reasoning.split())
    if len(why) > 160:
        why = why[:157] + "..."
    line = f"{ts:%H:%M:%S} d{decision_id if decision_id is not None else '?'} nothing to do: {why}"
    if best:
        c = named(best, CAND_KEYS)  # compress_state's candidate (named keys; older rows positional)
        line += f" | best candidate {c['name']} (delta {c['delta']:.2f}, bid {c['bid']:.4f}, {c['yield']:.0f}%/y)"
    if next_tick:
        line += f" | next {next_tick:%H:%M:%S}"
    return line


def fill_line(card: Card) -> str:
    """A final card as terminal text: one line, plus one line per order when there are several."""
    sections = dict(card.sections)
    status = sections.get("Status", "")
    execution = sections.get("Execution", "").splitlines()
    orders = [o for o in execution[1:] if not o.endswith(": not sent")] or execution[:1]  # else the summary (a dry run)
    if len(orders) <= 1:
        return f"{card.tag} {card.title}: {status}" + (f" | {orders[0]}" if orders else "")
    return "\n".join([f"{card.tag} {card.title}: {status}"] + [f"  {o}" for o in orders])
