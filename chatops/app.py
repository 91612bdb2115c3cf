"""Wiring: settings -> store, exchange, brains, approvals, core, channels, scheduler."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from datetime import datetime, timedelta, timezone
from typing import Any

from agent.clock import market_seconds, to_datetime
from agent.config import ConfigError, Settings
from agent.deribit.errors import DeribitError
from agent.exchange import Exchange, open_exchange
from agent.models import ActionType, Decision
from agent.tick import POS_KEYS, named, run_tick

from . import redact, render
from .approvals import ApprovalService
from .ask import Asker
from .core import Core
from .engine import Executor
from . import pnl as pnl_mod
from .leader import Leadership
from .ledger_service import LedgerService
from .llm_wiring import LLMWiring
from .store import LeaseLostError, Store, lease_line

log = logging.getLogger(__name__)
HEARTBEAT_EVERY_S = 10.0  # bot_runs.heartbeat_at: at most this often (wall time), whatever the tick rate


def enabled_channel_names(settings: Settings) -> tuple[str, ...]:
    names = []
    if settings.secret("telegram_bot_token"):
        names.append("telegram")
    if settings.secret("slack_bot_token"):
        names.append("slack")
    console = settings.console_enabled if settings.console_enabled is not None else not names
    if console:
        names.append("console")
    return tuple(names)


class Bot:
    """One running bot. `await bot.start()`, then ticks and sweeps (by the scheduler or by hand)."""

    def __init__(self, settings: Settings, *, exchange: Exchange | None = None, store: Store | None = None,
                 channels: list | None = None, llm_client: Any = None, web: Any = None, lead: bool = False) -> None:
        self.settings = settings
        redact.configure(settings)  # the one redactor knows this bot's secrets before anything is stored or sent
        self.exchange = exchange or open_exchange(settings)
        # The store stamps rows with market time, so TTLs and timestamps agree under a simulated clock.
        self.store = store or Store(settings.database_target, now=self.now)
        # With `lead`, this bot acts only while it holds the database's leader lease (chatops/leader.py).
        self.leader = Leadership(self.store, settings.leader_lease_sec) if lead else None
        # Every LLM call (ticks, shadow, questions) goes through this one wiring: one client, one budget.
        self.llm = LLMWiring(settings, self.store, client=llm_client, now=self.now)
        names = tuple(ch.name for ch in channels) if channels is not None else enabled_channel_names(settings)
        self.approvals = ApprovalService(self.store, settings, now=self.now, enabled_channels=names, clock=self.exchange.clock)
        self.asker = Asker(self)
        self.core = Core(self.store, self.approvals, settings, clock=self.exchange.clock, asker=self.asker,
                         status_provider=self.live_status)
        self.llm.notify = self.core.notify
        self.executor = Executor(self.store, self.approvals, self.exchange, settings, on_change=self._on_exec_change,
                                 notify=self._on_order_event)
        self.core.executor = self.executor
        self._channels = channels
        # The dashboard (chatops.web.server.WebServer): from WEB_PORT by default; with channels given
        # explicitly (tests, embedding), only the one passed (or set on .web before start).
        self.web = web
        self._web_from_settings = channels is None and web is None and bool(settings.web_port)
        # UNDERLYING=BTC,ETH: each coin its own tick on its own view of the settings (sizes, limits).
        self.views = {c: settings.for_underlying(c) for c in settings.underlyings}
        self.ticks_done = 0
        self.ticks_by: dict[str, int] = {c: 0 for c in self.views}
        self.failures_by: dict[str, int] = {c: 0 for c in self.views}
        self.errors_by: dict[str, str | None] = {c: None for c in self.views}
        self._tick_lock = asyncio.Lock()
        self._fallback_reasons: deque[str] = deque(maxlen=50)  # of the recent LLM fallbacks, for the alert
        self._fallback_alerted = False  # said once per spell of LLM fallbacks over the threshold
        self._anchored = self.store.audit_head().count  # chain entries covered by the last anchor written
        self.ledger = LedgerService(self.store, settings.underlying, self.core.notify)
        self.ledgers: dict[str, LedgerService] = {}  # the other coins of UNDERLYING=BTC,ETH
        self.run_id: int | None = None
        self._state = None  # the last tick's AgentState (for the ledger)
        self.inline_writes = False  # see _write
        self._heartbeat_at = -HEARTBEAT_EVERY_S  # monotonic time of the last bot_runs heartbeat
        self._data_version: int | None = None
        self.interval = settings.loop_interval_sec  # the runner sets what it schedules
        self.dashboard_url: str | None = None  # the web channel sets it when it serves one
        self.log_file: str | None = None  # where the log goes when not the terminal
        self.account_now: dict[str, tuple[Any, dict[str, Any]]] = {}  # coin -> (when, compressed state) read after a fill

    def now(self):
        return to_datetime(self.exchange.clock.now_ms())

    @property
    def underlyings(self) -> tuple[str, ...]:
        return tuple(self.views)

    @property
    def exchange_failures(self) -> int:
        return max(self.failures_by.values())

    @property
    def last_tick_error(self) -> str | None:
        return next((e for e in self.errors_by.values() if e), None)

    @property
    def channels(self):
        return self.core.channels

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.settings.check_min_trade()
        if self.leader is not None:  # stand by until this bot leads; only then reconcile and start channels
            await self.leader.wait_until_leader()
        self.approvals.check_startup()
        await self._check_network()
        # Before anything else: settle what a crash left in flight.
        reconciled = await self.executor.reconcile()
        for r in reconciled:
            log.info("reconciled proposal #%d: %s (%s)", r.proposal_id, r.status, r.message)
        channels = self._channels if self._channels is not None else self._make_channels()
        for ch in channels:
            await ch.start(self.core)
            self.core.channels.append(ch)
        s = self.settings
        brain = s.effective_decision_mode + (f" ({s.llm_model_name})" if s.effective_decision_mode != "rule" else "")
        self.run_id = self.store.record_bot_run(
            underlying=",".join(s.underlyings), brain=brain, profile=s.mode, dry_run=s.effective_dry_run,
            exchange=self.exchange.description, approval_mode=s.approval_mode,
            channels=tuple(c.name for c in self.core.channels))
        for r in reconciled:  # told now that the channels are up (the store has it already)
            if r.status in ("executed", "failed"):
                await self.core.notify("failure" if r.status == "failed" else "fill",
                                       f"After a restart: #{r.proposal_id} {r.status}: {r.message}", record=False)
        if self.web is None and self._web_from_settings:
            from .web.server import WebServer

            self.web = WebServer.for_bot(self)
        if self.web is not None and not await self.web.start():
            self.web = None  # logged; trading does not depend on the dashboard
        self.store.append_event("bot_started", actor="agent", channel="bot",
                                reason=f"{self.core.tag} {self.exchange.description}; channels "
                                       f"{', '.join(c.name for c in self.core.channels) or 'none'}")
        self.core.paused_seen = self.approvals.is_paused()
        if self.approvals.is_paused():
            await self.core.notify("pause", "Started PAUSED (kill switch on from before): `resume` to let it trade.")

    def banner(self, next_tick=None) -> str:
        s = self.settings
        people = ", ".join(sorted(self.approvals.directory.approvers())) or "nobody"
        if s.approval_mode == "auto":
            approvals = (f"auto: the policy approves orders up to {s.effective_auto_max_size:g} {s.underlying}; "
                         f"larger ones wait for {people}")
        else:
            approvals = f"manual: {s.approvals_required} of {people}, within {s.approval_ttl_sec:g} s"
        brain = s.effective_decision_mode + (f" ({s.llm_model_name})" if s.effective_decision_mode != "rule" else "")
        return render.banner(tag=self.core.tag, exchange=f"{self.exchange.description}, {s.underlying}",
                             brain=f"{brain}, {s.mode} profile", approvals=approvals, interval_s=self.interval,
                             next_tick=next_tick, database=s.database_path,
                             channels=tuple(c.name for c in self.core.channels), log_file=self.log_file,
                             dashboard_url=self.dashboard_url or (self.web.url if self.web is not None else None),
                             paused=self.approvals.is_paused())

    async def _check_network(self) -> None:
        """Which Deribit this is, by its own responses' `testnet` flag; mainnet only when allowed."""
        if self.settings.exchange != "deribit":
            return
        client = self.exchange.client
        if getattr(client, "testnet", None) is None:
            try:
                await client.get_index_price(self.settings.index_name)
            except DeribitError as exc:  # unreachable now: DERIBIT_BASE_URL decides the tag until it answers
                log.warning("could not read the exchange at start: %s", exc)
        testnet = getattr(client, "testnet", None)
        if testnet is False and not self.settings.allow_mainnet:
            raise ConfigError(f"config error: {self.settings.deribit_base_url} answers as Deribit production (mainnet, "
                              "real money): set ALLOW_MAINNET=true to trade there, or use https://test.deribit.com")
        self.core.tag = self.settings.tag_for(testnet)

    def _make_channels(self) -> list:
        out = []
        names = enabled_channel_names(self.settings)
        if "telegram" in names:
            from .adapters.telegram import TelegramChannel

            out.append(TelegramChannel(self.settings))
        if "slack" in names:
            from .adapters.slack import SlackChannel

            out.append(SlackChannel(self.settings))
        if "console" in names:
            from .adapters.console import ConsoleChannel

            out.append(ConsoleChannel())
        return out

    async def stop(self) -> None:
        self.executor.closed = True  # a recording still retrying gives up: the restart settles it by label
        if self.web is not None:
            await self.web.stop()
        await self.core.drain()
        for ch in reversed(self.core.channels):
            try:
                await ch.stop()
            except Exception:
                log.exception("channel %s did not stop cleanly", ch.name)
        self.core.channels.clear()
        await self.core.drain()  # a press handled while the channels stopped may have started an execution
        try:
            if self.run_id is not None:
                self.store.bot_heartbeat(self.run_id, stopped=True)
            self.store.append_event("bot_stopped", actor="agent", channel="bot", reason="clean stop")
            self.anchor("stop", force=True)
        except LeaseLostError:
            pass  # a deposed leader writes nothing more
        if self.leader is not None:
            self.leader.release()
        await self.exchange.aclose()
        await self.llm.aclose()
        self.store.close()

    # --- jobs -------------------------------------------------------------------------------------

    async def tick(self, underlying: str | None = None) -> tuple[int | None, Decision | None]:
        """One decision for one coin (default: the first of UNDERLYING): build state, decide, check,
        record, propose. Never raises. Ticks of different coins take turns on the one client."""
        coin = (underlying or self.settings.underlying).upper()
        if coin not in self.views:
            raise ValueError(f"{coin} is not traded here (UNDERLYING={','.join(self.views)})")
        on = f" ({coin})" if len(self.views) > 1 else ""
        async with self._tick_lock:
            try:
                return await self._tick(coin)
            except DeribitError as exc:
                self.failures_by[coin] += 1
                self.errors_by[coin] = str(exc)
                await self.core._off_loop(self.store.append_event, "tick_failed", actor="agent", channel="scheduler",
                                          reason=f"{coin}: {exc}"[:500])
                log.error("tick%s failed: %s", on, exc)
                if self.failures_by[coin] == 3:
                    await self.core.notify("watchdog", f"The exchange failed 3 ticks in a row{on}: {exc}")
                return None, None
            except Exception as exc:  # a tick that raises is recorded and the loop goes on
                self.errors_by[coin] = f"{type(exc).__name__}: {exc}"
                await self.core._off_loop(self.store.append_event, "tick_failed", actor="agent", channel="scheduler",
                                          reason=f"{coin}: {self.errors_by[coin]}"[:500])
                log.exception("tick%s failed", on)
                return None, None

    async def tick_all(self) -> list[tuple[int | None, Decision | None]]:
        """One tick per coin, in UNDERLYING order."""
        return [await self.tick(c) for c in self.views]

    async def _tick(self, coin: str) -> tuple[int | None, Decision | None]:
        settings = self.views[coin]
        # The realized vols only go into an LLM's prompt: with the rules alone they are not read.
        history = self.store.history_for_policy(settings.underlying, self.now(), realized_vol=self.llm.drives)
        brain = await self.llm.tick_brain()  # None: the rules decide (rule mode, or the budget is spent)
        off = "daily token budget spent" if brain is None and self.llm.drives else None
        decision = await run_tick(self.exchange.client, settings, clock=self.exchange.clock, history=history,
                                  llm_brain=brain, llm_off_reason=off, state_hook=self._keep_state)
        # Writes in a thread: a locked database delays the tick's record, not the buttons.
        decision_id = await self._write(self.store.record_decision, decision)
        self.ticks_done += 1
        self.ticks_by[coin] += 1
        self.failures_by[coin] = 0
        self.errors_by[coin] = None
        if self.run_id is not None and time.monotonic() - self._heartbeat_at >= HEARTBEAT_EVERY_S:
            self._heartbeat_at = time.monotonic()
            self.store.bot_heartbeat(self.run_id)
        await self._update_ledger()
        await self._say_once(decision.proposed_action)
        await self._check_llm_fallbacks(decision)
        if decision.final_action.action == ActionType.DO_NOTHING:
            cands = decision.state.get("cand") or []
            nxt = datetime.now(timezone.utc) + timedelta(seconds=self.interval)
            await self.core.quiet(render.quiet_tick(decision_id, decision.timestamp, decision.final_action.reasoning,
                                                    cands[0] if cands else None, nxt))
        result = await self._write(self.approvals.propose, decision_id, decision)
        for old in result.superseded:
            await self.core.refresh_proposal(old)
        if result.kind == "created" and result.proposal_id is not None:
            await self._write(self.approvals.auto_approve, result.proposal_id)
            await self.core.broadcast_proposal(result.proposal_id)
            await self.executor.execute_approved()
        return decision_id, decision

    async def _write(self, fn, *args):
        """A store write of the tick or the sweep: in a thread, so a locked database delays the
        write and never the loop (buttons, commands); inline when nothing else runs on the loop
        (a backtest: no channels, and the hop to a thread would be most of a tick's write)."""
        if self.inline_writes:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    def _keep_state(self, state):
        self._state = state
        return state

    async def _update_ledger(self) -> None:
        """Fills and settlements since the last tick (none read when nothing changed); never fails the tick."""
        if self._state is None:
            return
        try:
            coin = self._state.underlying  # one ledger per coin: its own cursor, records and snapshots
            if coin != self.ledger.underlying:
                self.ledgers.setdefault(coin, LedgerService(self.store, coin, self.core.notify))
                await self.ledgers[coin].update(self.exchange.client, self._state)
                return
            await self.ledger.update(self.exchange.client, self._state)
        except DeribitError as exc:
            log.warning("ledger: could not read trades or settlements this tick (%s); next tick retries", exc)

    async def _say_once(self, action) -> None:
        """A notice the policy wants told (e.g. deep in the money, no credit roll): once, not every tick."""
        if action.notice_key and action.notice and self.store.claim_notice(action.notice_key, "deep_itm", action.notice):
            await self.core.notify("deep_itm", action.notice)

    async def _check_llm_fallbacks(self, decision: Decision) -> None:
        if not decision.llm_calls:
            return
        for rec in decision.llm_calls:
            if not rec.get("valid"):
                self._fallback_reasons.append(str(rec.get("reason") or rec.get("error") or "unknown")[:300])
        stats = self.store.llm_stats(self.now() - timedelta(hours=24))
        calls, fallbacks = stats.get("calls", 0), stats.get("fallbacks", 0)
        pct = fallbacks / calls * 100 if calls else 0.0
        if calls >= 5 and pct >= self.settings.llm_fallback_alert_pct and not self._fallback_alerted:
            self._fallback_alerted = True
            why = ""
            if self._fallback_reasons:
                reason, n = Counter(self._fallback_reasons).most_common(1)[0]
                why = f" Most common reason: {reason} ({n} of the last {len(self._fallback_reasons)} fallbacks)."
            await self.core.notify("llm_fallback", f"LLM fell back on {fallbacks} of {calls} calls in 24 h "
                                                   f"({pct:.0f}%, threshold {self.settings.llm_fallback_alert_pct:g}%)."
                                                   + why)
        elif pct < self.settings.llm_fallback_alert_pct:
            self._fallback_alerted = False

    async def sweep(self) -> None:
        """Expire what is due, execute what is approved (from any process), follow every order still
        working or whose outcome is not known yet, and anchor the audit chain."""
        await self.core.announce_pause_change()
        for pid in await self._write(self.approvals.expire_due):
            await self.core.refresh_proposal(pid)
        if not self.approvals.is_paused():
            await self.executor.execute_approved()
        await self.executor.follow()
        self.anchor(f"every {self.settings.audit_anchor_every}")

    def anchor(self, why: str, *, force: bool = False):
        """Append the audit chain's head to AUDIT_ANCHOR_FILE when AUDIT_ANCHOR_EVERY entries were
        added since the last anchor (or whenever it moved, with force); the head, or None."""
        from .store.chain import append_anchor

        head = self.store.audit_head()
        due = head.count - self._anchored
        if due <= 0 or (not force and due < self.settings.audit_anchor_every):
            return None
        try:
            append_anchor(self.settings.effective_audit_anchor_file, head, why=why)
        except OSError as exc:  # never stops the bot; said in the log, tried again next sweep
            log.error("audit anchor not written to %s: %s", self.settings.effective_audit_anchor_file, exc)
            return None
        self._anchored = head.count
        return head


    async def pick_up_votes(self) -> bool:
        """Execute what another process approved, as soon as it commits: PRAGMA data_version (behind
        `Store.data_version`) changes only when another connection writes, so an idle check costs
        one pragma. True when something changed."""
        version = self.store.data_version()
        if version == self._data_version:
            return False
        self._data_version = version
        if not self.approvals.is_paused():
            await self.executor.execute_approved()
        return True

    async def _on_order_event(self, pid: int, kind: str, text: str) -> None:
        """One chat line per fill, partial fill, cancel, lost answer and found order (the store
        already holds its `order_<kind>` event)."""
        notice = "fill" if kind in ("fill", "partial_fill") else "failure" if kind == "alert" else "info"
        await self.core.notify(notice, text, record=kind == "alert")

    async def _on_exec_change(self, pid: int) -> None:
        await self.core.refresh_proposal(pid)
        row = self.store.get_proposal(pid)
        if row is None:
            return
        if row.status == "executed":
            await self._read_account(row.underlying)
            filled = " filled" in (row.status_reason or "") or (row.status_reason or "").startswith("filled")
            await self.core.notify("fill" if filled else "order", f"#{pid} executed: {row.status_reason or ''}".strip())
        elif row.status in ("failed", "blocked"):
            await self.core.notify("failure", f"#{pid} {row.status}: {row.status_reason or ''}".strip())

    async def _read_account(self, coin: str) -> None:
        """After a fill, read the account again so `status` shows it, not the tick before."""
        from agent.state import build_agent_state
        from agent.tick import compress_state

        try:
            state = await build_agent_state(self.exchange.client, self.views.get(coin, self.settings), clock=self.exchange.clock)
        except DeribitError as exc:
            log.warning("could not read the account after an execution: %s", exc)
            return
        self.account_now[coin] = (state.timestamp, compress_state(state))

    async def daily_summary(self) -> None:
        since = self.now() - timedelta(days=1)
        decisions = self.store.list_decisions(since=since, limit=100000)
        props = self.store.list_proposals(since=since, limit=100000)
        by_status: dict[str, int] = {}
        for p in props:
            by_status[p.status] = by_status.get(p.status, 0) + 1
        text = (f"Daily summary: {len(decisions)} ticks, {len(props)} proposals "
                f"({', '.join(f'{v} {k}' for k, v in sorted(by_status.items())) or 'none'}).")
        for coin in self.views:
            last = self.store.last_decision(underlying=coin)
            if last and last.get("state"):
                st = last["state"]
                n = sum(1 for p in props if p.underlying == coin and p.status == "executed")
                if len(self.views) == 1:
                    text += f" Equity {st.get('eq', 0):.4f} {coin}, {len(st.get('pos') or [])} open positions."
                else:
                    text += f" {coin}: equity {st.get('eq', 0):.4f} {coin}, {len(st.get('pos') or [])} open positions, {n} executed."
        for coin in self.views:
            last = self.store.last_decision(underlying=coin)
            pos = [named(p, POS_KEYS) for p in ((last or {}).get("state") or {}).get("pos") or []]
            text += f" {coin} " + pnl_mod.daily_text(self.store, coin, self.now(), pos)
        # The chain's head, outside the database: `chatops audit verify --head HASH:N` checks it later.
        self.anchor("daily summary", force=True)
        text += f" Audit head {self.store.audit_head().as_text()}."
        await self.core.notify("daily_summary", text)

    def watchdog_problem(self) -> str | None:
        last = self.store.last_tick_at()
        # The loop runs on wall time; under PAPER_SPEED a wall second is `speed` market seconds.
        per_wall_s = market_seconds(self.exchange.clock, 1.0)
        limit = 3 * self.settings.loop_interval_sec
        if last is not None:
            age = (self.now() - last).total_seconds() / per_wall_s
            if age > limit:
                return f"Watchdog: no tick for {age:.0f}s (expected every {self.settings.loop_interval_sec:g}s)"
        if self.exchange_failures >= 3:
            return f"Watchdog: the exchange failed {self.exchange_failures} ticks in a row ({self.last_tick_error})"
        return None

    def live_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"exchange": self.exchange.description, "tag": self.core.tag}
        stats = self.store.llm_stats(self.now() - timedelta(hours=24))
        if self.settings.effective_decision_mode != "rule" or stats.get("calls"):
            calls, fb = stats.get("calls", 0), stats.get("fallbacks", 0)
            out["llm"] = (f"LLM ({self.settings.llm_model_name}, {self.settings.effective_decision_mode} mode): {calls} calls in 24 h, "
                          f"{fb} fallbacks ({(fb / calls * 100) if calls else 0:.0f}%), {stats.get('tokens', 0)} tokens "
                          f"of a {self.settings.llm_daily_token_budget} daily budget")
        problem = self.watchdog_problem()
        if problem:
            out["watchdog"] = problem
        if self.leader is not None:
            out["leader"] = lease_line(self.store.lease_status(self.settings.leader_lease_sec))
        if self.account_now:
            out["account_now"] = dict(self.account_now)
        return out
