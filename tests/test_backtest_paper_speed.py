"""Simulated time live (PAPER_SPEED): human-facing durations on wall time, one paper clock kept
with the paper state and resumed after a restart, and every command in that one world."""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta

import pytest

from agent.clock import SimClock, WallClock, market_seconds
from agent.config import load_settings
from agent.exchange import market_now_ms, open_exchange
from chatops.adapters.delivery import DeliveryQueue
from chatops.app import Bot
from chatops.cli import main

SPEED = 60.0  # fast enough to matter; slow enough that a state read stays within MAX_STATE_AGE_SEC


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    vals = {"PAPER_SPEED": str(SPEED), "PAPER_STATE_PATH": str(tmp_path / "paper.json"),
            "DATABASE_PATH": str(tmp_path / "bot.db"), "APPROVAL_TTL_SEC": "300", "LOOP_INTERVAL_SEC": "300",
            "CONSOLE_ALLOWED_USERS": "alice"}
    for k, v in vals.items():
        monkeypatch.setenv(k, v)
    return tmp_path


def test_market_seconds():
    assert market_seconds(WallClock(), 300) == 300
    assert market_seconds(SimClock(0), 300) == 300  # a manual clock (tests, backtests): as given
    assert market_seconds(SimClock(0, speed=SPEED), 300) == 300 * SPEED


async def test_approval_ttl_and_watchdog_run_on_wall_time(env):
    settings = load_settings(env_file=None)
    bot = Bot(settings, channels=[])
    await bot.start()
    try:
        _, decision = await bot.tick()
        assert decision is not None and decision.final_action.action.value == "OPEN_COVERED_CALL", \
            (decision.proposed_action.reasoning, decision.risk_check)
        row = bot.store.latest_proposal()
        # The card lives 300 wall seconds: 300 * SPEED seconds of market time (the clock runs while
        # the proposal is written: a few wall milliseconds are hours of market time).
        ttl = (row.expires_at - row.created_at).total_seconds()
        assert abs(ttl - 300 * SPEED) < 5 * SPEED
        clock = bot.exchange.clock
        clock.advance(60 * SPEED)  # a wall minute later: the market moved 60 hours, the card is still up
        assert bot.approvals.expire_due() == []
        assert bot.store.get_proposal(row.id).status == "pending"
        # The watchdog counts wall seconds too: ticks every 300 s, a minute is no alarm ...
        assert bot.watchdog_problem() is None
        clock.advance(900 * SPEED)  # ... 16 wall minutes without a tick is
        problem = bot.watchdog_problem()
        assert problem is not None and re.search(r"no tick for 96\ds", problem), problem
        clock.advance(300 * SPEED)
        assert bot.approvals.expire_due() == [row.id]
    finally:
        await bot.stop()


def test_outbox_retry_delay_runs_on_wall_time(env):
    settings = load_settings(env_file=None)
    from chatops.store import Store

    clock = SimClock(1_800_000_000_000, speed=SPEED)
    from agent.clock import to_datetime

    store = Store(settings.database_path, now=lambda: to_datetime(clock.now_ms()))

    class Core:
        def __init__(self):
            self.store, self.clock = store, clock

    core = Core()
    from chatops.adapters.slack import Job

    q = DeliveryQueue("slack", core=lambda: core, deliver=None, give_up=(), job_type=Job, outbox_interval=30.0,
                      outbox_backoff_max=600.0, clean=str, stats={"outboxed": 0}, log=logging.getLogger("t"),
                      wall_clock_retries=False, leftovers_due_now=False, keep_interrupted=True)
    job = Job("message", "C1", text="Filled.")
    q.to_outbox(job, "503 from Slack")
    try:
        item = store.outbox_item(job.outbox_id)
        assert abs((item.next_attempt_at - store.now()).total_seconds() - 30 * SPEED) < 5 * SPEED
        assert store.due_outbox("slack") == []  # not a flood: nothing is due a wall second later either
    finally:
        store.close()


async def test_paper_clock_resumes_after_a_restart_and_every_command_sees_it(env, capsys):
    settings = load_settings(env_file=None)
    ex = open_exchange(settings)
    try:
        ex.clock.advance(10 * 86_400)  # ten simulated days
        t_before = await ex.client.get_time()
    finally:
        await ex.aclose()  # a clean stop saves the clock with the paper state
    wall = WallClock().now_ms()
    assert t_before > wall + 9 * 86_400_000
    assert market_now_ms(settings) == t_before
    again = open_exchange(settings)
    try:
        t_after = await again.client.get_time()
    finally:
        await again.aclose()
    assert t_before <= t_after < t_before + 60_000 * SPEED  # resumed, not reset to the wall clock

    # `run` (the bot) and `status` agree: the last tick's age is small and never negative.
    bot = Bot(load_settings(env_file=None), channels=[])
    await bot.start()
    try:
        await bot.tick()
        tick_ms = int(bot.store.last_tick_at().timestamp() * 1000)
    finally:
        await bot.stop()
    assert tick_ms >= t_after
    assert main(["status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert 0 <= st["last_tick_age_s"] < 3600
    # `audit` windows are in the same world: the tick is within the last day of market time.
    assert main(["audit", "decisions", "--since", "24h", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    # `tick` reads the same simulated market, after the bot's tick.
    import asyncio

    assert await asyncio.to_thread(main, ["tick", "--json"]) == 0  # its own event loop
    d = json.loads(capsys.readouterr().out)
    from datetime import datetime

    assert int(datetime.fromisoformat(d["timestamp"]).timestamp() * 1000) >= tick_ms
