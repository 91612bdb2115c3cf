"""The bot's loop on APScheduler 3 (asyncio): decision ticks, the sweep, the daily summary, a
watchdog; and a clean stop on SIGINT/SIGTERM.

A tick never sends an order (it only proposes), so stopping mid-tick abandons nothing
half-written: the decision row and its proposal are written in their own transactions. An
execution in flight is allowed to finish and be recorded before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import datetime, timedelta, timezone

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from agent import gcpolicy

from .app import Bot

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 2.0
VOTE_WATCH_S = 0.05  # how often the database is asked whether another process wrote (one pragma)
STOP_GRACE_S = 20.0


class BotRunner:
    def __init__(self, bot: Bot, *, interval: float | None = None, ticks: int | None = None) -> None:
        self.bot = bot
        self.interval = interval or bot.settings.loop_interval_sec
        bot.interval = self.interval
        self.max_ticks = ticks
        self.stopping = asyncio.Event()
        self.scheduler = AsyncIOScheduler(timezone=timezone.utc)
        self._watchdog_said: str | None = None
        self._running: set[asyncio.Task] = set()
        self.lost_lease = False
        self._gc_before: tuple[int, int, int] | None = None  # set once the first tick settled the heap

    async def _job(self, coro_fn) -> None:
        """Run one job as a tracked task, so a stop can wait for it."""
        if self.stopping.is_set() or not self._leading():
            return
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await coro_fn()
        except asyncio.CancelledError:
            # Cut short by the stop's grace timeout, possibly while waiting for a write in a thread
            # (that write still completes, in its own transaction, before the store closes).
            log.info("job %s cut short by the stop", getattr(coro_fn, "__name__", coro_fn))
        except Exception:  # a job that raises is logged; the schedule goes on
            log.exception("job %s failed", getattr(coro_fn, "__name__", coro_fn))
        finally:
            if task is not None:
                self._running.discard(task)

    def _leading(self) -> bool:
        """False once this bot cannot be sure it leads: then it stops (a standby takes over)."""
        leader = self.bot.leader
        if leader is None or leader.acting():
            return True
        self.lost_lease = True
        self.stopping.set()
        return False

    async def lease_job(self) -> None:
        """The leadership renews in its own task (from the moment it leads); this only notices a loss."""
        if self.bot.leader.lost.is_set() or not self.bot.leader.acting():
            self.lost_lease = True
            self.stopping.set()

    def job_id(self, coin: str) -> str:
        """`tick` for a single coin (as before), `tick-BTC`, `tick-ETH` for several."""
        return "tick" if len(self.bot.underlyings) == 1 else f"tick-{coin}"

    async def tick_job(self, coin: str | None = None) -> None:
        coin = coin or self.bot.underlyings[0]
        await self._job(lambda: self.bot.tick(coin))
        if self._gc_before is None:  # everything the bot keeps is loaded now (see agent.gcpolicy)
            self._gc_before = gcpolicy.settle()
        if self.max_ticks is not None and self.bot.ticks_by[coin] >= self.max_ticks:
            self.scheduler.pause_job(self.job_id(coin))

    def _ticks_finished(self) -> bool:
        return self.max_ticks is not None and all(n >= self.max_ticks for n in self.bot.ticks_by.values())

    async def sweep_job(self) -> None:
        await self._job(self.bot.sweep)
        if self._ticks_finished() and self._nothing_in_flight():
            log.info("%d ticks done and nothing left to decide: stopping", self.bot.ticks_done)
            self.stopping.set()

    def _nothing_in_flight(self) -> bool:
        return not self.bot.store.proposals_in_status("pending", "approved", "executing")

    async def watchdog_job(self) -> None:
        if not self._leading():
            return
        problem = self.bot.watchdog_problem()
        if problem and problem != self._watchdog_said:
            await self.bot.core.notify("watchdog", problem)
        elif not problem and self._watchdog_said:
            await self.bot.core.notify("watchdog", "Watchdog: ticks are back to normal.")
        self._watchdog_said = problem

    async def daily_job(self) -> None:
        await self._job(self.bot.daily_summary)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests)
                pass
        s = self.scheduler
        if self.bot.leader is not None:
            s.add_job(self.lease_job, "interval", seconds=min(1.0, self.bot.leader.renew_every), id="lease",
                      max_instances=1, coalesce=True)
        # One tick job per coin, staggered across the interval: they share one client and its rate limits.
        coins = self.bot.underlyings
        start = datetime.now(timezone.utc)
        for i, coin in enumerate(coins):
            s.add_job(self.tick_job, "interval", args=[coin], seconds=self.interval, id=self.job_id(coin),
                      max_instances=1, coalesce=True, misfire_grace_time=int(self.interval),
                      next_run_time=start + timedelta(seconds=self.interval * i / len(coins)))
        s.add_job(self.sweep_job, "interval", seconds=SWEEP_EVERY_S, id="sweep", max_instances=1, coalesce=True)
        s.add_job(self.watchdog_job, "interval", seconds=max(min(self.interval, 60.0), 5.0), id="watchdog",
                  max_instances=1, coalesce=True)
        # After the 08:00 UTC expiry and settlement.
        s.add_job(self.daily_job, "cron", hour=8, minute=5, id="daily", max_instances=1, coalesce=True)
        s.start()
        for ch in self.bot.channels:
            if hasattr(ch, "on_quit") and ch.on_quit is None:
                ch.on_quit = self.stopping.set  # `quit` in the terminal
        await self.bot.core.quiet(self.bot.banner(next_tick=datetime.now(timezone.utc)))
        log.info("started: %s", self.bot.banner().replace("\n", " |"))
        watcher = asyncio.get_running_loop().create_task(self._watch_votes())
        try:
            await self.stopping.wait()
        finally:
            self.stopping.set()
            # Never cancelled mid-execution: it ends on its own once `stopping` is set.
            _, late = await asyncio.wait([watcher], timeout=STOP_GRACE_S)
            for t in late:
                t.cancel()
            await self.shutdown()

    async def _watch_votes(self) -> None:
        """A vote from `chatops approve` in another shell is executed within ~VOTE_WATCH_S, not at
        the next sweep. The check itself is one PRAGMA when nothing changed."""
        while not self.stopping.is_set():
            await asyncio.sleep(VOTE_WATCH_S)
            try:
                changed = self.bot.store.data_version() != self.bot._data_version
            except Exception:
                log.exception("vote watch: the database could not be read")
                continue
            if changed:
                await self._job(self.bot.pick_up_votes)

    def _on_signal(self, sig: int) -> None:
        log.info("received %s: stopping after the work in flight", signal.Signals(sig).name)
        self.stopping.set()

    async def shutdown(self) -> None:
        self.stopping.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self._running:
            done, pending = await asyncio.wait(list(self._running), timeout=STOP_GRACE_S)
            for t in pending:
                t.cancel()
        await self.bot.core.drain()
        if self._gc_before is not None:
            gcpolicy.unsettle(self._gc_before)
            self._gc_before = None
