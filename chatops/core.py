"""The core every channel talks to: commands in, cards and notices out.

It checks the acting user on every entry point, goes through the approval service for every
decision, records everything in the store, and fans cards out to all channels. Channels never
talk to each other, and the core never imports an adapter.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agent.clock import to_datetime
from agent.config import Settings
from agent.models import Action, ExecutionResult, RiskResult
from agent.snapshot import POS_KEYS, named

from . import render
from .adapters.base import HELP_TEXT, Channel, Notice, Reply
from .approvals import ApprovalService
from .store import Store, StoreBusyError

if TYPE_CHECKING:
    from .ask import Asker
    from .engine import Executor

log = logging.getLogger(__name__)

WRITE_WAIT_S = 0.5  # how long an answer waits for the record of a refusal or a notice (ms normally)


class Core:
    def __init__(self, store: Store, approvals: ApprovalService, settings: Settings, *, clock,
                 executor: "Executor | None" = None, asker: "Asker | None" = None,
                 status_provider=None) -> None:
        self.store = store
        self.approvals = approvals
        self.settings = settings
        self.clock = clock
        self.executor = executor
        self.asker = asker
        self.status_provider = status_provider  # callable -> dict of live status (bot)
        self.channels: list[Channel] = []
        self.tag = settings.trading_tag  # the bot sets it from the exchange's own testnet flag at start
        self.paused_seen: bool | None = None  # the pause state last announced (the bot notices other processes)
        self._tasks: set[asyncio.Task] = set()

    # --- helpers ----------------------------------------------------------------------------

    def now(self) -> datetime:
        return to_datetime(self.clock.now_ms())

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait for background work this core started (executions, fan-out)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def is_authorized(self, channel: str, user: str) -> bool:
        return self.approvals.is_authorized(channel, str(user))

    async def record_unauthorized(self, channel: str, user: str, what: str) -> None:
        """Recorded off the loop, not awaited: a refusal is answered at once, even with the database locked."""
        log.warning("unauthorized %s by %s on %s", what[:80], user, channel)
        await self._record_soon(self.store.append_event, "unauthorized", actor=str(user), channel=channel,
                                reason=f"refused: {what[:200]}")

    async def _record_soon(self, fn, *args, **kwargs) -> None:
        """Write in a thread and wait for it briefly (WRITE_WAIT_S): normally it is done, in
        order; with the database locked the caller goes on and the write lands when it can."""
        task = self._spawn(self._off_loop(fn, *args, **kwargs))
        await asyncio.wait({task}, timeout=WRITE_WAIT_S)

    async def _off_loop(self, fn, *args, **kwargs):
        """Run a store call that may wait on the database lock in a thread: a locked database delays
        the write, never the loop (buttons, commands, the scheduler). A busy error is logged."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except StoreBusyError as exc:
            log.error("%s not recorded: %s", getattr(fn, "__name__", "write"), exc)
            return None

    def _refuse(self, text: str | None = None) -> Reply:
        return Reply(text or "Not authorized: you are not on this channel's allowlist.", ok=False, unauthorized=True,
                     private=True)

    async def _guard(self, channel: str, user: str, what: str, action: str = "read") -> Reply | None:
        """None when `user` may do `action` (identity.ACTION_ROLE); else the refusal, recorded."""
        verdict = self.approvals.directory.check(channel, str(user), action)
        if verdict.allowed:
            return None
        await self.record_unauthorized(channel, user, f"{what}: {verdict.reason}")
        return self._refuse(f"Not authorized: {verdict.reason}.")

    # --- cards and fan-out --------------------------------------------------------------------

    def proposal_view(self, pid: int) -> render.ProposalView | None:
        story = self.store.proposal_story(pid)
        if not story:
            return None
        p = story["proposal"]
        decision = story.get("decision") or {}
        state = decision.get("state") or {}
        risk = decision.get("risk")
        execs = story.get("executions") or []
        last_exec = ExecutionResult.model_validate(execs[-1]["result"]) if execs and execs[-1].get("result") else None
        return render.ProposalView(
            id=p["id"], status=p["status"], action=Action.model_validate_json(p["action_json"]),
            created_at=_dt(p["created_at"]), expires_at=_dt(p["expires_at"]), label=p["label"],
            risk=RiskResult.model_validate(risk) if risk else None,
            candidate=state.get("sel"), position=state.get("leg"),
            votes=tuple((v["user"], v["channel"], v["vote"], v.get("reason")) for v in story.get("votes") or []),
            approvals_required=p.get("approvals_required", 1), status_reason=p.get("status_reason"),
            execution=last_exec, decided_at=_dt(p["decided_at"]) if p.get("decided_at") else None,
        )

    def proposal_card(self, pid: int) -> render.Card | None:
        view = self.proposal_view(pid)
        show_coin = len(self.settings.underlyings) > 1
        return render.proposal_card(view, self.tag, self.now(), show_coin) if view else None

    async def broadcast_proposal(self, pid: int) -> None:
        card = self.proposal_card(pid)
        if card is None:
            return
        for ch in self.channels:
            try:
                await ch.post_proposal(card)
            except Exception:  # one channel's failure never stops the others or the loop
                log.exception("channel %s could not post proposal #%d", ch.name, pid)

    async def refresh_proposal(self, pid: int) -> None:
        card = self.proposal_card(pid)
        if card is None:
            return
        for ch in self.channels:
            try:
                await ch.update_proposal(card)
            except Exception:
                log.exception("channel %s could not update proposal #%d", ch.name, pid)

    async def notify(self, kind: str, text: str, *, record: bool = True, skip: str | None = None) -> None:
        """One line to every channel (but `skip`); `record=False` when the store already holds it as an event."""
        notice = Notice(kind=kind, text=text)
        if record:
            await self._record_soon(self.store.append_event, "notice", actor="agent", channel="all",
                                    reason=f"{kind}: {text[:300]}")
        for ch in self.channels:
            if ch.name == skip:
                continue
            try:
                await ch.notify(notice)
            except Exception:
                log.exception("channel %s could not send a notice", ch.name)

    async def quiet(self, text: str) -> None:
        """A line for the channels that show small talk (the terminal); chats stay quiet."""
        from .redact import redact

        text = redact(text)  # built from the decision in memory, not from a (redacted) stored row
        for ch in self.channels:
            fn = getattr(ch, "quiet", None)
            if fn is None:
                continue
            try:
                await fn(text)
            except Exception:
                log.exception("channel %s could not show a line", ch.name)

    async def announce_pause_change(self) -> bool:
        """Say so on every channel when the pause flag changed elsewhere (`chatops pause` in
        another shell); True when it did."""
        paused = self.approvals.is_paused()
        if self.paused_seen is None or paused == self.paused_seen:
            self.paused_seen = paused
            return False
        self.paused_seen = paused
        last = (self.store.list_events(kind="flag_set", limit=1, order="desc") or [{}])[0]
        who = f"{last.get('actor', 'someone')} ({last.get('channel', '?')})"
        if paused:
            reason = last.get("reason")
            await self.notify("pause", f"Paused by {who}{': ' + reason if reason and reason != 'paused' else ''}. "
                                       "No new proposals, nothing executes until resume.")
            # what `chatops pause` cancelled in that process: the cards here say so too
            for e in self.store.list_events(kind="proposal_cancelled", limit=20, order="desc"):
                if e.get("id", 0) > last.get("id", 0) and e.get("proposal_id"):
                    await self.refresh_proposal(e["proposal_id"])
        else:
            await self.notify("pause", f"Resumed by {who}.")
        return True

    def save_message_ref(self, proposal_id: int, channel: str, chat_id: str, message_id: str) -> None:
        self.store.save_message_ref(proposal_id, channel, str(chat_id), str(message_id))

    def message_refs(self, proposal_id: int, channel: str) -> list[tuple[str, str]]:
        return [(r.chat_id, r.message_id) for r in self.store.message_refs(proposal_id, channel)]

    # --- votes ------------------------------------------------------------------------------

    async def approve(self, proposal_id: int, user: str, channel: str) -> Reply:
        return await self._vote(proposal_id, user, channel, "approve", None)

    async def reject(self, proposal_id: int, user: str, channel: str, reason: str | None = None) -> Reply:
        return await self._vote(proposal_id, user, channel, "reject", reason)

    async def _vote(self, pid: int, user: str, channel: str, vote: str, reason: str | None) -> Reply:
        try:  # in a thread: the vote may wait for the database lock, the loop never does
            result = await asyncio.to_thread(self.approvals.vote, pid, str(user), channel, vote, reason)
        except StoreBusyError as exc:
            log.error("%s of #%d by %s on %s not recorded: %s", vote, pid, user, channel, exc)
            return Reply(f"Your {vote} of #{pid} was NOT recorded: the database is busy ({exc}). Try again in a "
                         f"moment.", ok=False, proposal_id=pid, private=True)
        if result.kind == "unauthorized":
            log.warning("unauthorized %s of #%d by %s on %s", vote, pid, user, channel)
            return self._refuse(result.message)
        if result.kind in ("approved", "rejected", "recorded", "expired"):
            await self.refresh_proposal(pid)
        if result.kind == "approved" and self.executor is not None:
            self._spawn(self.executor.execute(pid))
        return Reply(result.message, ok=result.ok, proposal_id=pid, private=not result.ok)

    async def cancel(self, proposal_id: int, user: str, channel: str, reason: str | None = None) -> Reply:
        """Cancel proposal N (approvers only; who did it is recorded): a pending one is withdrawn;
        an executing one has its working order cancelled on the exchange."""
        row = self.store.get_proposal(proposal_id)
        if row is not None and row.status == "executing" and self.executor is not None:
            if (refused := await self._guard(channel, user, "cancel", action="cancel")):
                return refused
            ok, text = await self.executor.cancel(proposal_id, str(user), channel)
            if ok:
                await self.refresh_proposal(proposal_id)
            return Reply(text, ok=ok, proposal_id=proposal_id, private=not ok)
        result = self.approvals.cancel(proposal_id, str(user), channel, reason)
        if result.kind == "unauthorized":
            return self._refuse(result.message)
        if result.ok:
            await self.refresh_proposal(proposal_id)
        return Reply(result.message, ok=result.ok, proposal_id=proposal_id, private=not result.ok)

    # --- read-only commands ---------------------------------------------------------------------

    async def why(self, ref: str | None, user: str, channel: str) -> Reply:
        if (refused := await self._guard(channel, user, "why")):
            return refused
        if self.asker is None:
            return Reply("why is not available", ok=False)
        return await self.asker.why(ref, user, channel)

    async def ask(self, question: str, user: str, channel: str) -> Reply:
        if (refused := await self._guard(channel, user, "ask")):
            return refused
        if self.asker is None:
            return Reply("asking is not available", ok=False)
        return await self.asker.ask(question, user, channel)

    async def whatif(self, overrides: str, user: str, channel: str) -> Reply:
        if (refused := await self._guard(channel, user, "whatif")):
            return refused
        if self.asker is None:
            return Reply("whatif is not available", ok=False)
        return await self.asker.whatif(overrides, user, channel)

    async def pnl(self, since: str | None, user: str, channel: str) -> Reply:
        if (refused := await self._guard(channel, user, "pnl")):
            return refused
        from . import charts, pnl as pnl_mod

        try:
            start = pnl_mod.parse_since(since, self.now())
        except ValueError as exc:
            return Reply(str(exc), ok=False, private=True)
        u = self.settings.underlying
        rep = pnl_mod.report(self.store, u, since=start)
        if rep is None:
            return Reply("No P&L yet: the ledger has no account snapshot (it starts with the bot's first tick).")
        return Reply(pnl_mod.format_report(rep, u), photo=charts.pnl_png(self.store, u, start), photo_name="pnl.png")

    async def chart(self, since: str | None, user: str, channel: str) -> Reply:
        if (refused := await self._guard(channel, user, "chart")):
            return refused
        from . import charts, pnl as pnl_mod

        try:
            start = pnl_mod.parse_since(since, self.now())
        except ValueError as exc:
            return Reply(str(exc), ok=False, private=True)
        png = charts.strike_png(self.store, self.settings.underlying, start)
        if png is None:
            return Reply("No chart yet: it needs at least two account snapshots (one per tick).")
        return Reply(f"{self.settings.underlying} spot against the short call's strike.", photo=png, photo_name="chart.png")

    async def status(self, user: str, channel: str) -> Reply:
        if (refused := await self._guard(channel, user, "status")):
            return refused
        return Reply(status_text(self.store, self.settings, self.now(), self.status_provider() if self.status_provider else {}))

    async def pending(self, user: str, channel: str) -> Reply:
        if (refused := await self._guard(channel, user, "pending")):
            return refused
        rows = self.store.pending_proposals()
        if not rows:
            return Reply("No proposal is waiting for a vote.")
        cards = [self.proposal_card(r.id) for r in rows]
        return Reply("\n\n".join(c.as_text() for c in cards if c), card=cards[0] if len(cards) == 1 else None)

    async def history(self, n: int, user: str, channel: str) -> Reply:
        if (refused := await self._guard(channel, user, "history")):
            return refused
        rows = self.store.list_decisions(limit=max(1, min(n, 50)))
        if not rows:
            return Reply("No decisions yet.")
        table = render.table(
            [[r["id"], r["ts"][5:19].replace("T", " "), r["final_action"], r.get("final_symbol") or "",
              "yes" if r["risk_allowed"] else "BLOCKED", r["decision_source"]] for r in rows],
            ["id", "time (UTC)", "action", "instrument", "risk", "source"],
        )
        return Reply(table)

    async def pause(self, user: str, channel: str, reason: str | None = None, underlying: str | None = None) -> Reply:
        try:
            result = await asyncio.to_thread(self.approvals.set_paused, True, str(user), channel, reason, underlying)
        except StoreBusyError as exc:
            return Reply(f"NOT paused: the database is busy ({exc}). Try again, or `chatops pause` from a shell.",
                         ok=False, private=True)
        if result.kind == "unauthorized":
            return self._refuse(result.message)
        if result.kind == "noop":
            return Reply(result.message)
        cancelled = result.cancelled
        for pid in cancelled:
            await self.refresh_proposal(pid)
        if not underlying:
            self.paused_seen = True
        what = f"{underlying} paused" if underlying else "Paused"
        await self.notify("pause", f"{what} by {user} ({channel}){': ' + reason if reason else ''}. "
                                   f"No new {underlying + ' ' if underlying else ''}proposals, nothing "
                                   f"{'of it ' if underlying else ''}executes until resume."
                                   + (f" Cancelled pending: {', '.join('#%d' % p for p in cancelled)}." if cancelled else ""))
        return Reply(result.message)

    async def resume(self, user: str, channel: str, underlying: str | None = None) -> Reply:
        try:
            result = await asyncio.to_thread(self.approvals.set_paused, False, str(user), channel, None, underlying)
        except StoreBusyError as exc:
            return Reply(f"NOT resumed: the database is busy ({exc}). Try again in a moment.", ok=False, private=True)
        if result.kind == "unauthorized":
            return self._refuse(result.message)
        if result.kind == "noop":
            return Reply(result.message)
        if not underlying:
            self.paused_seen = False
        await self.notify("pause", f"Resumed{' ' + underlying if underlying else ''} by {user} ({channel}).")
        return Reply(result.message)

    # --- text commands (terminal, chat free text) -------------------------------------------------

    async def handle_text(self, line: str, user: str, channel: str) -> Reply:
        """Parse one command line (`approve 12`, `reject 12 too close`, `why`, free text...)."""
        line = line.strip()
        if not line:
            return Reply("")
        if line.startswith("/"):
            line = line[1:]
        word, _, rest = line.partition(" ")
        word = word.lower().split("@", 1)[0]
        rest = rest.strip()
        if word in ("approve", "reject"):
            if (refused := await self._guard(channel, user, word, action=word)):
                return refused
            ref, _, reason = rest.partition(" ")
            pid = _parse_id(ref)
            if pid is None:
                bad = f"{ref[:30]!r} is not a proposal number. " if ref else ""
                return Reply(f"{bad}usage: {word} <id>{' [reason]' if word == 'reject' else ''} (the number on the card, "
                             f"e.g. {word} 12)", ok=False, private=True)
            if word == "approve":
                return await self.approve(pid, user, channel)
            return await self.reject(pid, user, channel, reason.strip() or None)
        if word == "cancel":
            if (refused := await self._guard(channel, user, word, action=word)):
                return refused
            pid = _parse_id(rest)
            if pid is None:
                return Reply("usage: cancel <id>", ok=False, private=True)
            return await self.cancel(pid, user, channel)
        if word == "why":
            return await self.why(rest or None, user, channel)
        if word == "status":
            return await self.status(user, channel)
        if word == "pending":
            return await self.pending(user, channel)
        if word == "history":
            n = _parse_id(rest) if rest else 10
            if not n:
                return Reply(f"{rest[:30]!r} is not a number of decisions: usage: history [n] (1-50, default 10)",
                             ok=False, private=True)
            return await self.history(n, user, channel)
        if word in ("pause", "resume"):
            # `pause ETH [reason]` / `resume ETH`: one coin; without a coin, the global kill switch.
            head, _, tail = rest.partition(" ")
            coin = head.upper() if head.upper() in self.settings.underlyings and len(self.settings.underlyings) > 1 else None
            if coin:
                rest = tail.strip()
            if word == "pause":
                return await self.pause(user, channel, rest or None, coin)
            return await self.resume(user, channel, coin)
        if word == "whatif":
            return await self.whatif(rest, user, channel)
        if word == "pnl":
            return await self.pnl(rest or None, user, channel)
        if word == "chart":
            return await self.chart(rest or None, user, channel)
        if word == "ask":
            return await self.ask(rest, user, channel)
        if word in ("help", "start", "?"):
            if (refused := await self._guard(channel, user, "help")):
                return refused
            return Reply(HELP_TEXT + (CONSOLE_HELP if channel == "console" else ""))
        return await self.ask(line, user, channel)


CONSOLE_HELP = "\n  quit                   stop the bot (Ctrl-C does the same); votes wait in the database"
MAX_ID = 2**63 - 1  # SQLite's largest integer: anything bigger names no row


def _parse_id(text: str) -> int | None:
    """`12` or `#12` -> 12; None for anything else, including numbers no row can have."""
    text = text.strip().lstrip("#")
    try:
        n = int(shlex.split(text)[0]) if text else None
    except (ValueError, IndexError):
        return None
    return n if n is not None and 0 <= n <= MAX_ID else None


def _dt(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def status_text(store: Store, settings: Settings, now: datetime, live: dict[str, Any]) -> str:
    """The /status answer: mode, pause, then per coin its last tick and its age, account,
    positions, pending; then the LLM, watchdog and exchange lines."""
    coins = settings.underlyings
    # What the running bot runs with (it records that at start), not what this process was given.
    run = store.last_bot_run(settings.underlying)
    if run is not None:
        tag = "[DRY-RUN]" if run["dry_run"] else "[PAPER]" if run["exchange"].startswith("paper") else "[LIVE]"
        beat = (now - run["heartbeat"]).total_seconds()
        alive = (f"stopped {run['stopped_at'][:19].replace('T', ' ')} UTC" if run["stopped_at"]
                 else f"running since {run['started_at'][:19].replace('T', ' ')} UTC, last heartbeat {beat:.0f}s ago")
        lines = [f"{tag} {run['underlying']} covered calls - {run['exchange']}, {run['brain']} brain, {run['profile']} "
                 f"profile, approvals {run['approval_mode']}, channels {', '.join(run['channels']) or 'none'}",
                 f"Bot #{run['id']} (pid {run['pid']} on {run['host']}) {alive}"]
    else:
        lines = [f"No bot has run on {settings.underlying} with this database yet; these settings say: "
                 f"{live.get('tag') or settings.trading_tag} {','.join(coins)} {settings.exchange}, "
                 f"{settings.effective_decision_mode} brain, {settings.mode} profile, approvals {settings.approval_mode}"]
    paused = store.get_flag("paused", "0") == "1"
    lines.append("PAUSED (kill switch on): nothing is proposed or executed" if paused
                 else "Not running: the bot stopped" if run is not None and run["stopped_at"] else "Running")
    for coin in coins:
        i = ""  # a block per coin when there are several
        if len(coins) > 1:
            coin_paused = store.get_flag(f"paused:{coin}", "0") == "1"
            lines.append(f"{coin}: " + ("PAUSED (`resume " + coin + "`)" if coin_paused else "paused (kill switch)" if paused else "running"))
            i = "  "
        last = store.last_decision(underlying=coin)
        if last:
            age = (now - _dt(last["ts"])).total_seconds()
            lines.append(f"{i}Last tick #{last['id']} {age:.0f}s ago: {last['final_action']} {last.get('final_symbol') or ''}".rstrip())
            st = last.get("state") or {}
            fresh = (live.get("account_now") or {}).get(coin)
            if fresh and fresh[0] >= _dt(last["ts"]):  # read after an execution since that tick
                st = fresh[1]
                lines.append(f"{i}Account read {max((now - fresh[0]).total_seconds(), 0):.0f}s ago, after the last execution:")
                lines.append(f"{i}  spot {st.get('spot', 0):,.0f}, equity {st.get('eq', 0):.4f} {coin}, "
                             f"margin used {st.get('mu', 0):.1f}%, options delta {st.get('od', 0):+.3f}")
                for p in (named(x, POS_KEYS) for x in st.get("pos") or []):
                    lines.append(f"{i}  position {p['name']} size {p['size']:+g} avg {p['avg']:.4f} mark {p['mark']:.4f} "
                                 f"delta {p['delta']:.2f} {p['dte']:.1f} DTE")
            elif st:
                lines.append(f"{i}As of that tick: spot {st.get('spot', 0):,.0f}, equity {st.get('eq', 0):.4f} {coin}, "
                             f"margin used {st.get('mu', 0):.1f}%, options delta {st.get('od', 0):+.3f}")
                for p in (named(x, POS_KEYS) for x in st.get("pos") or []):
                    lines.append(f"{i}  position {p['name']} size {p['size']:+g} avg {p['avg']:.4f} mark {p['mark']:.4f} "
                                 f"delta {p['delta']:.2f} {p['dte']:.1f} DTE")
        else:
            lines.append(f"{i}No tick yet")
        pend = store.pending_proposals(coin)
        lines.append(f"{i}Pending proposals: {', '.join('#%d' % r.id for r in pend) if pend else 'none'}")
    llm = live.get("llm")
    if llm:
        lines.append(llm)
    for k in ("watchdog", "exchange", "leader"):
        if live.get(k):
            lines.append(str(live[k]))
    return "\n".join(lines)
