"""`chatops audit ...`: list, show, export, head, verify and shadow; the filters and the event kinds.

Split from chatops/cli.py (by job). Bad filter values are one-line `ConfigError`s.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from agent.config import ConfigError, Settings
from agent.models import ActionType

ACTION_NAMES = tuple(a.value for a in ActionType)
_ACTION_SHORT = {"open": "OPEN_COVERED_CALL", "roll": "ROLL_COVERED_CALL", "close": "CLOSE_COVERED_CALL",
                 "nothing": "DO_NOTHING", "none": "DO_NOTHING"}
PROPOSAL_STATUSES = ("pending", "approved", "executing", "executed", "failed", "rejected", "expired", "superseded",
                     "cancelled", "blocked")
# Every kind of row the events table holds (tests/test_cli.py checks the code writes no other).
EVENT_KINDS = ("proposal_created", *(f"proposal_{s}" for s in PROPOSAL_STATUSES if s != "pending"), "vote",
               "execution_recorded", "unauthorized", "unauthorized_vote", "auto_approve_declined", "flag_set",
               "setting_changed", "notice", "bot_started", "bot_stopped", "tick_failed", "cancel_requested", "outbox_gave_up",
               "leader_elected",
               *(f"order_{k}" for k in ("sent", "unknown", "found", "fill", "partial_fill", "repriced", "cancelled",
                                        "rejected", "not_found")))

def _action_filter(text: str | None) -> str | None:
    if not text:
        return None
    t = text.strip()
    name = _ACTION_SHORT.get(t.lower(), t.upper())
    if name not in ACTION_NAMES:
        raise ConfigError(f"unknown action {text!r}: use one of {', '.join(ACTION_NAMES)} (or open, roll, close, nothing)")
    return name


def _status_filter(text: str | None) -> str | None:
    if not text:
        return None
    if text.lower() not in PROPOSAL_STATUSES:
        raise ConfigError(f"unknown status {text!r}: use one of {', '.join(PROPOSAL_STATUSES)}")
    return text.lower()


def event_kind(text: str | None, known: tuple[str, ...] | list[str] = EVENT_KINDS) -> str | None:
    """`executed` -> `proposal_executed`; an unknown kind is a one-line error listing the kinds."""
    if not text:
        return None
    t = text.strip().lower()
    for k in (t, f"proposal_{t}"):
        if k in known:
            return k
    raise ConfigError(f"unknown event kind {text!r}: use one of {', '.join(known)}")


# --- audit ----------------------------------------------------------------------------------------------


def _duration(text: str):
    unit = text[-1]
    n = float(text[:-1])
    return timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[unit]: n})


def _when(text: str | None, now: datetime | None = None) -> datetime | None:
    """`now` is market time under PAPER_SPEED (the store's clock), wall time otherwise."""
    if not text:
        return None
    try:
        if text[-1] in "mhd" and text[:-1].replace(".", "").isdigit():
            return (now or datetime.now(timezone.utc)) - _duration(text)
        dt = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise ConfigError(f"bad time {text!r}: use ISO 8601 (2026-11-25T08:00) or a duration such as 24h, 7d") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def audit(store, settings: Settings, args) -> int:
    from . import render

    sub = args.audit_cmd
    if sub == "head":
        print(store.audit_head().as_text())
        return 0
    if sub == "verify":
        return _verify(store, settings, args)
    if sub == "show":
        story = store.proposal_story(args.id)
        if not story:
            print(f"No proposal #{args.id}.", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(story, default=str, indent=2))
            return 0
        from .ask import why_text

        print(why_text(story))
        return 0
    if sub == "export":
        return _export(store, args)
    if sub == "shadow":
        from .shadow import shadow_report

        report = shadow_report(store, since=_when(args.since, store.now()))
        print(json.dumps(report.as_dict(), indent=2) if args.json else report.as_text())
        return 0
    since, until = _when(args.since, store.now()), _when(args.until, store.now())
    if sub == "decisions":
        rows = store.list_decisions(since=since, until=until, action=_action_filter(args.action), limit=args.limit,
                                    underlying=args.underlying)
        headers = ["id", "ts", "underlying", "final_action", "final_symbol", "risk_allowed", "decision_source", "requests"]
    elif sub == "proposals":
        rows = [asdict(r) for r in store.list_proposals(status=_status_filter(args.status), since=since, until=until,
                                                        action=_action_filter(args.action), limit=args.limit,
                                                        underlying=args.underlying)]
        headers = ["id", "created_at", "underlying", "action", "symbol", "size", "status", "status_reason"]
    else:
        kind = event_kind(args.kind, _known_kinds(store)) if args.kind else None
        rows = store.list_events(since=since, until=until, proposal_id=args.proposal, kind=kind, limit=args.limit)
        headers = ["id", "ts", "kind", "proposal_id", "actor", "channel", "reason"]
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    print(render.table([[_short(r.get(h)) for h in headers] for r in rows], headers) if rows else f"No {sub}.")
    return 0


def _verify(store, settings: Settings, args) -> int:
    """The events chain, the audit chain over every audit table, and every anchor given."""
    from .store import parse_head, read_anchors

    anchors = []
    path = Path(args.anchors or settings.effective_audit_anchor_file)
    try:
        if args.anchors or path.exists():
            anchors += read_anchors(path)
        anchors += [parse_head(h) for h in args.head]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"audit verify: {exc}") from None
    events = store.verify_chain()
    report = store.verify_audit(anchors)
    if not events.ok:
        report.ok = False
        report.problems.insert(0, f"event {events.first_broken_id}: {events.reason}")
    print(report.as_text())
    for line in report.problems[1:]:
        print(f"  also: {line}")
    if report.ok and not anchors:
        print("  (no anchor given: a cut-off tail or a rewritten suffix shows only against a head kept elsewhere)")
    return 0 if report.ok else 1


def _known_kinds(store) -> tuple[str, ...]:
    """The kinds this code writes, and any other a database holds (older or newer versions)."""
    try:
        seen = [r[0] for r in store.db.execute("SELECT DISTINCT kind FROM events ORDER BY kind").fetchall()]
    except Exception:  # a store without SQL access: the kinds of this version
        seen = []
    return EVENT_KINDS + tuple(k for k in seen if k not in EVENT_KINDS)


def _short(v: Any, n: int = 60) -> str:
    s = "" if v is None else str(v)
    return s if len(s) <= n else s[: n - 1] + "…"


def _export(store, args) -> int:
    from .redact import redact_value

    # Redacted again on the way out: rows written before the store redacted are exported clean too.
    rows = (redact_value(r) for r in store.iter_rows(args.table, since=_when(args.since, store.now()),
                                                       until=_when(args.until, store.now())))
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    total = store.count(args.table) if args.out else None
    n = 0
    try:
        writer = None
        for row in rows:
            if args.format == "jsonl":
                out.write(json.dumps(row, default=str) + "\n")
            else:
                if writer is None:
                    writer = csv.DictWriter(out, fieldnames=list(row.keys()))
                    writer.writeheader()
                writer.writerow(row)
            n += 1
            if total and n % 5000 == 0:
                _progress(n, total)
    finally:
        if args.out:
            out.close()
    if total:
        _progress(n, max(total, n), done=True)
        print(f"exported {n} rows of {args.table} to {Path(args.out)}", file=sys.stderr)
    return 0


def _progress(n: int, total: int, done: bool = False) -> None:
    width = 30
    filled = int(width * min(n / total, 1.0)) if total else width
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {n}/{total}")
    if done:
        sys.stderr.write("\n")
    sys.stderr.flush()
