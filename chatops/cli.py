"""`chatops`: run the bot, one tick, status, votes, pause, audit, the dashboard, and the paper exchange.

Errors a user can cause (a bad setting, a locked database, an exchange error) end with one line
on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from agent.config import ConfigError, Settings, load_settings
from agent.deribit.errors import DeribitError
from agent.snapshot import CAND_KEYS, POS_KEYS, named

from .cli_audit import ACTION_NAMES, EVENT_KINDS, PROPOSAL_STATUSES, _duration, event_kind  # noqa: F401 (re-exported)
from .cli_audit import audit as _audit
from .identity import os_user

EXIT_USAGE = 2

_JSON_HELP = "print JSON instead of text"
_SINCE_HELP = "from this time: ISO 8601 (2026-11-25T08:00, UTC) or a duration back from now such as 30m, 24h, 7d"
_UNTIL_HELP = "up to this time: ISO 8601 or a duration back from now"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("covered-call-chatops")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


def _proposal_id(text: str) -> int:
    """A proposal id as typed: `12` or `#12`; a one-line error for anything else."""
    t = text.strip().lstrip("#")
    if not t.isdigit() or len(t) > 18:
        raise argparse.ArgumentTypeError(f"{text!r} is not a proposal number (such as 12)")
    return int(t)


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1 or len(text.strip()) > 9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


class _VersionAction(argparse._VersionAction):
    """`--version`, looked up only when asked for (importlib.metadata costs ~40 ms at start-up)."""

    def __call__(self, parser, namespace, values, option_string=None):
        self.version = f"%(prog)s {_version()}"
        super().__call__(parser, namespace, values, option_string)


def _parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser. Given the command line about to be parsed, `backtest`'s sub-parser is left
    out unless that line may need it: its options live in chatops.backtest, which loads the whole
    bot, the market models and numpy (~0.3 s), and a vote from another shell must start fast."""
    if argv is not None:
        light = _build_parser(with_backtest=False)
        if not _needs_backtest_parser(argv, light):
            return light
    return _build_parser(with_backtest=True)


def _needs_backtest_parser(argv: list[str], light: argparse.ArgumentParser) -> bool:
    """True for `backtest ...`, for top-level help (it lists every command) and for an unknown
    command (its error lists them); False for any other command, `--version` or nothing."""
    commands = next(a.choices for a in light._actions if isinstance(a, argparse._SubParsersAction))
    for tok in argv:
        if tok == "-h" or (len(tok) > 2 and "--help".startswith(tok)):  # argparse accepts --he
            return True
        if not tok.startswith("-"):
            return tok not in commands
    return False


def _build_parser(with_backtest: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chatops", description="A covered-call agent for Deribit, steered from chat.",
                                epilog="Settings come from the environment and .env: `chatops config example` lists them all.")
    p.add_argument("--version", action=_VersionAction, version="%(prog)s", help="print the version and exit")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run the bot: ticks on a schedule, proposals to chat, approvals executed")
    r.add_argument("--ticks", type=int, help="stop after N ticks, once nothing is left pending")
    r.add_argument("--interval", help="seconds between ticks (default LOOP_INTERVAL_SEC; the same range)")
    r.add_argument("--auto", action="store_true", help="unattended: APPROVAL_MODE=auto for this run")
    r.add_argument("--reset-paper", action="store_true", help="start the in-process paper exchange afresh")

    t = sub.add_parser("tick", help="one decision against the configured exchange, printed")
    t.add_argument("--json", action="store_true", help="the raw decision snapshot")

    for name, text in (("status", "mode, pause, last tick and its age, account, pending"),
                       ("pending", "proposals waiting for a vote")):
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("--json", action="store_true", help=_JSON_HELP)

    a = sub.add_parser("approve", help="approve a proposal (as the current OS user)")
    a.add_argument("id", type=_proposal_id, help="the proposal's number, as shown on its card (#12 -> 12)")
    j = sub.add_parser("reject", help="reject a proposal")
    j.add_argument("id", type=_proposal_id, help="the proposal's number, as shown on its card (#12 -> 12)")
    j.add_argument("--reason", help="why: shown on the card and to the brain, which will not propose it again soon")
    cn = sub.add_parser("cancel", help="cancel a proposal's working order (the running bot does it on the exchange)")
    cn.add_argument("id", type=_proposal_id, help="the proposal's number, as shown on its card (#12 -> 12)")
    ps = sub.add_parser("pause", help="kill switch on: no proposals, no executions")
    ps.add_argument("--reason", help="why, for the audit trail and the chat announcement")
    ps.add_argument("--underlying", type=str.upper, choices=["BTC", "ETH"], help="pause one coin only (UNDERLYING=BTC,ETH)")
    rs = sub.add_parser("resume", help="kill switch off")
    rs.add_argument("--underlying", type=str.upper, choices=["BTC", "ETH"], help="resume one coin only")

    cf = sub.add_parser("config", help="the settings: every name, its default and meaning")
    csub = cf.add_subparsers(dest="config_cmd", required=True, metavar="WHAT")
    csub.add_parser("example", help="print a complete .env.example (grouped, each setting with its default)")

    au = sub.add_parser("audit", help="review decisions, proposals and events; export; verify")
    asub = au.add_subparsers(dest="audit_cmd", required=True)
    for table in ("decisions", "proposals", "events"):
        # A short usage line: with --underlying the full one wraps past the one-line error.
        lp = asub.add_parser(table, help=f"list {table}, " + ("the latest, in the order they happened" if table == "events"
                                                               else "newest first"),
                             usage="%(prog)s [options] (-h lists them)")
        lp.add_argument("--since", help=_SINCE_HELP)
        lp.add_argument("--until", help=_UNTIL_HELP)
        lp.add_argument("--limit", type=_positive_int, default=50, help="at most this many rows (default 50)")
        lp.add_argument("--json", action="store_true", help=_JSON_HELP)
        if table != "events":
            lp.add_argument("--underlying", type=str.upper, choices=["BTC", "ETH"], metavar="COIN",
                            help="one coin's rows only: BTC or ETH")
        if table == "decisions":
            lp.add_argument("--action", help=f"only this final action: {', '.join(ACTION_NAMES)} (or open, roll, close, nothing)")
        if table == "proposals":
            lp.add_argument("--status", help=f"only this status: {', '.join(PROPOSAL_STATUSES)}")
            lp.add_argument("--action", help=f"only this action: {', '.join(ACTION_NAMES[:3])} (or open, roll, close)")
        if table == "events":
            lp.add_argument("--proposal", type=_proposal_id, help="only the events of this proposal")
            lp.add_argument("--kind", help="only this kind (the proposal_ prefix may be left out): " + ", ".join(EVENT_KINDS))
    sh = asub.add_parser("show", help="one proposal's whole story")
    sh.add_argument("id", type=_proposal_id, help="the proposal's number")
    sh.add_argument("--json", action="store_true", help=_JSON_HELP)
    ex = asub.add_parser("export", help="export a table as CSV or JSON lines")
    ex.add_argument("table", help="the table to export", choices=["decisions", "proposals", "votes", "events", "executions", "orders", "questions",
                                      "answers", "llm_calls", "settings_changes"])
    ex.add_argument("--format", choices=["csv", "jsonl"], default="csv", help="csv (default) or jsonl, one JSON object a line")
    ex.add_argument("--out", help="file (default: stdout)")
    ex.add_argument("--since", help=_SINCE_HELP)
    ex.add_argument("--until", help=_UNTIL_HELP)
    vf = asub.add_parser("verify", help="recompute the audit chain (every audit table) and check it against anchors")
    vf.add_argument("--anchors", help="anchor file (default AUDIT_ANCHOR_FILE, when it exists)")
    vf.add_argument("--head", action="append", default=[], metavar="HASH:N",
                    help="a head kept elsewhere (as `audit head` printed it); repeatable")
    asub.add_parser("head", help="the audit chain's head: HASH:N (keep a copy where this machine cannot rewrite it)")
    shd = asub.add_parser("shadow", help="rules vs LLM in shadow mode: agreement, confusion matrix, strikes and DTE")
    shd.add_argument("--since", help=_SINCE_HELP)
    shd.add_argument("--json", action="store_true", help=_JSON_HELP)

    pn = sub.add_parser("pnl", help="premium, fees, settlements, P&L in coin and USD vs holding the coin (the ledger)")
    pn.add_argument("--since", help="30d, 12h, 2w, all (default) or a date")
    pn.add_argument("--json", action="store_true", help="every figure, the cycles and the equity check")
    pn.add_argument("--png", metavar="FILE", help="also draw the strategy vs HODL chart into FILE")
    pn.add_argument("--chart", metavar="FILE", help="also draw spot against the short call's strike into FILE")
    if with_backtest:
        from .backtest import add_parser as _add_backtest

        _add_backtest(sub)
    w = sub.add_parser("web", help="serve the dashboard read-only from the database alone (no bot needed)")
    w.add_argument("--host", help="default WEB_HOST")
    w.add_argument("--port", type=int, help="default WEB_PORT (8080)")
    wu = sub.add_parser("web-user", help="dashboard users in WEB_USERS_FILE: add, remove, list, token, hash")
    wsub = wu.add_subparsers(dest="web_cmd", required=True, metavar="WHAT")
    for name, text in (("add", "add a user or set a password (asked twice, or one line on stdin with --password-stdin)"),
                       ("remove", "remove a user (their sessions and tokens stop working)"),
                       ("token", "make an API token for scripts (shown once; Authorization: Bearer ...)")):
        wp = wsub.add_parser(name, help=text)
        wp.add_argument("name", help="the web user's name (letters, digits, . _ -)")
        if name == "add":
            wp.add_argument("--password-stdin", action="store_true", help="read the password as one line from stdin")
    wsub.add_parser("list", help="the user names")
    wh = wsub.add_parser("hash", help="print a password hash for WEB_USERS (name:hash,...)")
    wh.add_argument("--password-stdin", action="store_true", help="read the password as one line from stdin")

    pe = sub.add_parser("paper-exchange", help="serve the paper exchange over HTTP (Deribit's API)")
    pe.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    pe.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765)")
    pe.add_argument("--reset", action="store_true", help="start from a fresh account")
    pe.add_argument("--state", help="state file, both coins (default PAPER_STATE_PATH or data/paper_exchange.json)")
    pe.add_argument("--speed", type=float, help="simulated time at this speed factor (default: wall time)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `chatops status --json | head`: the reader left. End quietly, and keep Python's own
        # flush of stdout at exit from raising again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141  # what a shell reports for a process ended by SIGPIPE


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(argv).parse_args(argv)
    if args.cmd == "config":
        from agent.settings_doc import env_example

        print(env_example(), end="")
        return 0
    try:
        overrides: dict[str, Any] = {}
        if getattr(args, "auto", False):
            overrides["approval_mode"] = "auto"
        # `run --interval` is LOOP_INTERVAL_SEC, checked exactly as it is (`backtest --interval` is its own: 1h)
        if args.cmd == "run" and getattr(args, "interval", None) is not None:
            overrides["loop_interval_sec"] = args.interval
        settings = load_settings(**overrides)
        return _dispatch(args, settings)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except DeribitError as exc:
        print(f"exchange error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from .store import StoreBusyError, StoreUnavailableError

        if isinstance(exc, StoreBusyError):
            print(f"database busy: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, StoreUnavailableError):  # the database is unreachable (named without its password)
            print(str(exc), file=sys.stderr)
            return 1
        raise


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from .logs import setup_logging

    cmd = args.cmd
    terminal_chat = False
    if cmd == "run":
        from .app import enabled_channel_names

        terminal_chat = "console" in enabled_channel_names(settings)
    setup_logging(settings, terminal_chat=terminal_chat)
    if cmd in ("run", "tick"):
        import asyncio

        return asyncio.run(_run(settings, args) if cmd == "run" else _tick(settings, args.json))
    if cmd == "paper-exchange":
        return _paper(settings, args)
    if cmd == "backtest":
        from .backtest import main_backtest

        return main_backtest(settings, args)
    if cmd == "web-user":
        return _web_user(settings, args)
    if cmd == "web":
        return _web(settings, args)
    from .store import Store

    global _NOW
    _NOW = _market_now(settings)
    store = Store(settings.database_target, now=_NOW)
    try:
        if cmd in ("status", "pending"):
            return _status(store, settings, cmd, args.json)
        if cmd in ("approve", "reject"):
            return _vote(store, settings, cmd, args.id, getattr(args, "reason", None))
        if cmd in ("pause", "resume"):
            return _pause(store, settings, cmd, getattr(args, "reason", None), args.underlying)
        if cmd == "cancel":
            return _cancel(store, settings, args.id)
        if cmd == "audit":
            return _audit(store, settings, args)
        if cmd == "pnl":
            from .pnl import cli_pnl

            return cli_pnl(store, settings.underlying, args.since, args.json, args.png, args.chart)
    finally:
        store.close()
    return EXIT_USAGE


# --- run and tick --------------------------------------------------------------------------------


async def _run(settings: Settings, args) -> int:
    from agent.exchange import open_exchange

    from .app import Bot, enabled_channel_names
    from .scheduler import BotRunner

    from .logs import log_file_path

    bot = Bot(settings, exchange=open_exchange(settings, reset_paper=args.reset_paper), lead=True)
    bot.log_file = log_file_path(settings, "console" in enabled_channel_names(settings))
    await bot.start()  # stands by until this bot holds the leader lease
    runner = BotRunner(bot, interval=settings.loop_interval_sec, ticks=args.ticks)
    try:
        await runner.run()
    finally:
        await bot.stop()
    return 3 if runner.lost_lease else 0


async def _tick(settings: Settings, as_json: bool) -> int:
    from agent.exchange import open_exchange
    from agent.tick import run_tick

    from .llm_wiring import LLMWiring, llm_wanted

    ex = open_exchange(settings)
    store = llm = None
    try:
        if llm_wanted(settings):  # the same wiring as `chatops run`: one budget, calls recorded
            from .store import Store

            store = Store(settings.database_path)
            llm = LLMWiring(settings, store)
        settings.check_min_trade()
        decisions = []
        for coin in settings.underlyings:  # UNDERLYING=BTC,ETH: one decision per coin, in order
            brain = await llm.tick_brain() if llm is not None else None
            off = "daily token budget spent" if llm is not None and llm.drives and brain is None else None
            decision = await run_tick(ex.client, settings.for_underlying(coin), clock=ex.clock, llm_brain=brain,
                                      llm_off_reason=off)
            for rec in decision.llm_calls:  # no decision row (a tick by hand proposes nothing): the calls count
                llm.record(rec, "shadow" if decision.shadow_action is not None else "drive")  # type: ignore[union-attr]
            decisions.append(decision)
    finally:
        await ex.aclose()
        if llm is not None:
            await llm.aclose()
        if store is not None:
            store.close()
    from .redact import redact  # an LLM error text may echo a key: printed only through the one redactor

    tag = settings.tag_for(getattr(ex.client, "testnet", None))  # what Deribit's own responses said
    for decision in decisions:
        print(redact(decision.model_dump_json(indent=2) if as_json else format_decision(decision, settings, tag)))
    return 0


def format_decision(d, settings: Settings, tag: str | None = None) -> str:
    st = d.state
    fa = d.final_action
    lines = [
        f"{tag or settings.trading_tag} tick at {d.timestamp:%Y-%m-%d %H:%M:%S} UTC on {d.underlying} "
        f"({d.requests} requests, {d.timings_ms.get('total_ms', 0):.0f} ms)",
        f"  spot {st['spot']:,.0f}  forward {st['fwd']:,.0f}  equity {st['eq']:.4f}  margin used {st['mu']:.1f}%  "
        f"options delta {st['od']:+.3f}",
        f"  {st['chain']} options in the chain, {st['n_cand']} candidates after the DTE/delta/liquidity filters",
    ]
    for p in (named(x, POS_KEYS) for x in st.get("pos") or []):
        lines.append(f"  position {p['name']} {p['size']:+g} avg {p['avg']:.4f} mark {p['mark']:.4f} delta {p['delta']:.2f} "
                     f"{p['dte']:.1f} DTE")
    if st.get("cand"):
        cands = [named(x, CAND_KEYS) for x in st["cand"][:3]]
        lines.append("  top candidates: " + ", ".join(f"{c['name']} (d {c['delta']:.2f}, {c['bid']:.4f}, {c['yield']:.0f}%/y)"
                                                     for c in cands))
    lines.append(f"Proposed ({d.decision_source}): {d.proposed_action.action.value} {d.proposed_action.symbol or ''}".rstrip())
    lines.append(f"  {d.proposed_action.reasoning}")
    rc = d.risk_check
    lines.append("Risk: " + ("allowed (" + "; ".join(rc.checks) + ")" if rc.allowed else "BLOCKED: " + "; ".join(rc.reasons)))
    lines.append(f"Final: {fa.action.value} {fa.symbol or ''}{' size %g' % fa.size if fa.size else ''}".rstrip())
    return "\n".join(lines)


# --- status and votes -------------------------------------------------------------------------------


def _market_now(settings: Settings):
    """`now` for the commands that open no exchange: under PAPER_SPEED, the simulated world's time
    (the paper clock saved with the paper state), so ages and windows agree with `run`."""
    if not settings.paper_speed:
        return lambda: datetime.now(timezone.utc)
    from agent.clock import to_datetime
    from agent.exchange import market_now_ms

    at = to_datetime(market_now_ms(settings))
    return lambda: at


_NOW = lambda: datetime.now(timezone.utc)  # noqa: E731  (set per command by _dispatch)


def _status(store, settings: Settings, cmd: str, as_json: bool) -> int:
    from .core import status_text
    from .store import lease_line

    now = _NOW()
    if cmd == "status":
        last = store.last_decision(underlying=settings.underlying)
        if last is not None:  # the paper clock is saved at most once a wall second: never "-5 s ago"
            now = max(now, datetime.fromisoformat(last["ts"]))
        stats = store.llm_stats(now.replace(microsecond=0) - _duration("24h"))
        if as_json:
            out = {"paused": store.get_flag("paused", "0") == "1", "bot": store.last_bot_run(settings.underlying),
                   "last_decision": last,
                   "last_tick_age_s": (now - datetime.fromisoformat(last["ts"])).total_seconds() if last else None,
                   "pending": [r.id for r in store.pending_proposals()], "llm_24h": stats,
                   "leader": store.lease_status(settings.leader_lease_sec)}
            if len(settings.underlyings) > 1:  # a block per coin
                out["underlyings"] = {c: _coin_status(store, c, now) for c in settings.underlyings}
            print(json.dumps(out, default=str, indent=2))
            return 0
        live = {}
        if stats.get("calls"):
            fb = stats.get("fallbacks", 0)
            live["llm"] = f"LLM: {stats['calls']} calls in 24 h, {fb} fallbacks ({fb / stats['calls'] * 100:.0f}%)"
        live["leader"] = lease_line(store.lease_status(settings.leader_lease_sec))
        print(status_text(store, settings, now, live))
        return 0
    rows = store.pending_proposals()
    if as_json:
        print(json.dumps([asdict(r) for r in rows], default=str, indent=2))
        return 0
    if not rows:
        print("No proposal is waiting for a vote.")
        return 0
    for r in rows:
        print(f"#{r.id} {r.action} {r.symbol or ''} size {r.size:g} expires {r.expires_at:%H:%M:%S} UTC")
    return 0


def _coin_status(store, coin: str, now: datetime) -> dict[str, Any]:
    last = store.last_decision(underlying=coin)
    return {"paused": store.get_flag(f"paused:{coin}", "0") == "1", "last_decision_id": last["id"] if last else None,
            "last_tick_age_s": (now - datetime.fromisoformat(last["ts"])).total_seconds() if last else None,
            "pending": [r.id for r in store.pending_proposals(coin)]}


def _vote(store, settings: Settings, cmd: str, pid: int, reason: str | None) -> int:
    from .approvals import ApprovalService

    svc = ApprovalService(store, settings, now=_NOW)
    user = os_user()  # the real uid's account: LOGNAME and USER are anyone's to set
    result = svc.vote(pid, user, "cli", "approve" if cmd == "approve" else "reject", reason)
    print(result.message + (" The running bot executes it." if result.kind == "approved" else ""))
    return 0 if result.ok else 1


def _cancel(store, settings: Settings, pid: int) -> int:
    """Record a cancel request; the running bot's next sweep cancels the order on the exchange."""
    from .approvals import ApprovalService

    svc = ApprovalService(store, settings)
    user = os_user()
    refused = svc.authorize("cli", user, "cancel", proposal_id=pid)
    if refused:
        print(refused, file=sys.stderr)
        return 1
    row = store.get_proposal(pid)
    if row is None:
        print(f"No proposal #{pid}.", file=sys.stderr)
        return 1
    if row.status == "pending":
        result = svc.cancel(pid, user, "cli")
        print(result.message, file=sys.stdout if result.kind == "cancelled" else sys.stderr)
        return 0 if result.kind == "cancelled" else 1
    if row.status != "executing":
        print(f"#{pid} has no working order ({row.status}).", file=sys.stderr)
        return 1
    asked = store.request_cancel(pid, user, "cli")
    if not asked:
        print(f"#{pid}: nothing left to cancel (its orders are final or already being cancelled).", file=sys.stderr)
        return 1
    print(f"Cancel of #{pid} ({', '.join(asked)}) recorded: the running bot cancels it on the exchange.")
    return 0


def _pause(store, settings: Settings, cmd: str, reason: str | None, underlying: str | None = None) -> int:
    from .approvals import ApprovalService

    svc = ApprovalService(store, settings)
    result = svc.set_paused(cmd == "pause", os_user(), "cli", reason, underlying)
    if not result.ok:
        print(result.message, file=sys.stderr)
        return 1
    print(result.message + (f" Cancelled pending: {', '.join('#%d' % p for p in result.cancelled)}."
                            if result.cancelled else ""))
    return 0


# --- web dashboard ------------------------------------------------------------------------------------


def _web(settings: Settings, args) -> int:
    import asyncio

    from .store import Store
    from .web.server import WebServer

    overrides = {k: v for k, v in (("web_host", args.host), ("web_port", args.port)) if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    store = Store(settings.database_path)
    try:
        asyncio.run(WebServer.read_only(store, settings).serve_forever())
    finally:
        store.close()
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise ConfigError("the two passwords differ: nothing changed")
    if len(password) < 8:
        raise ConfigError("a dashboard password needs at least 8 characters: nothing changed")
    return password


def _web_user(settings: Settings, args) -> int:
    from .web.users import UserStore, hash_password

    users = UserStore(settings.web_users_file)
    sub = args.web_cmd
    if sub == "list":
        names = users.names()
        print("\n".join(names) if names else f"No web users in {settings.web_users_file}.")
        return 0
    if sub == "hash":
        print(hash_password(_read_password(args.password_stdin)))
        return 0
    if sub == "add":
        existed = users.get(args.name) is not None
        users.set_password(args.name, _read_password(args.password_stdin))
        allowed = args.name in settings.web_allowed_users
        print(f"{'Password changed for' if existed else 'Added'} web user {args.name} in {settings.web_users_file} "
              f"({'may act: on WEB_ALLOWED_USERS' if allowed else 'viewer: add to WEB_ALLOWED_USERS to let them act'}).")
        return 0
    if sub == "token":
        token = users.new_token(args.name)
        print(token)
        print(f"API token for {args.name}, shown once: send it as 'Authorization: Bearer <token>'.", file=sys.stderr)
        return 0
    if sub == "remove":
        if not users.remove(args.name):
            print(f"No web user {args.name!r} in {settings.web_users_file}.", file=sys.stderr)
            return 1
        print(f"Removed web user {args.name}.")
        return 0
    return EXIT_USAGE


# --- paper exchange ------------------------------------------------------------------------------------


def _paper(settings: Settings, args) -> int:
    from agent.clock import SimClock, WallClock
    from agent.deribit.paper import PaperExchange
    from agent.deribit.paper_server import run_server

    speed = args.speed or settings.paper_speed
    state = args.state or settings.effective_paper_state_path
    # A simulated clock resumes from the market time its saved state reached.
    resumed = None if args.reset else PaperExchange.stored_clock_ms(state)
    exchange = PaperExchange(
        currency=settings.underlying, seed=settings.paper_seed, initial_equity=settings.paper_equity,
        state_path=state, reset=args.reset,
        clock=SimClock(start_ms=resumed, speed=speed) if speed else WallClock(),
    )
    run_server(exchange, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
