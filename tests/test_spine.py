"""The chat-ops spine end to end on the paper exchange: proposals, votes, execution, expiry,
supersession, pause, auto mode, re-check, and the terminal channel."""

from __future__ import annotations

import asyncio
import io
import os
import sqlite3
import subprocess
import sys

import pytest

from agent.models import ActionType
from chatops.adapters.console import ConsoleChannel
from tests.spine_helpers import make_bot, orders_with_label, settle_orders


@pytest.fixture
async def bot(tmp_path):
    b = make_bot(tmp_path)
    await b.start()
    yield b
    await b.stop()


async def test_tick_creates_a_pending_proposal_shown_in_the_terminal(tmp_path):
    out = io.StringIO()
    b = make_bot(tmp_path, out=out)
    await b.start()
    try:
        decision_id, decision = await b.tick()
        assert decision.final_action.action == ActionType.OPEN_COVERED_CALL
        (p,) = b.store.pending_proposals()
        assert p.decision_id == decision_id and p.label == f"cc-{b.store.instance_id}-{p.id}"
        text = out.getvalue()
        assert f"#{p.id} Open covered call" in text and "[PAPER]" in text and f"approve {p.id}" in text
        for needle in ("Strike", "Expiry", "Delta", "Premium", "annualized", "Risk check", "Source      rule"):
            assert needle in text
    finally:
        await b.stop()


async def test_approve_executes_once_on_the_paper_exchange(bot):
    await bot.tick()
    (p,) = bot.store.pending_proposals()
    reply = await bot.core.approve(p.id, "alice", "console")
    assert reply.ok and "approved" in reply.text
    await settle_orders(bot)
    row = bot.store.get_proposal(p.id)
    assert row.status == "executed"
    orders = await orders_with_label(bot, p.label)
    assert len(orders) == 1 and orders[0].order_state == "filled" and orders[0].direction == "sell"
    again = await bot.core.approve(p.id, "bob", "console")
    assert not again.ok and "already decided" in again.text
    await bot.core.drain()
    assert len(await orders_with_label(bot, p.label)) == 1


async def test_fifty_concurrent_approvals_give_exactly_one_execution(tmp_path):
    users = ",".join(f"u{i}" for i in range(50))
    b = make_bot(tmp_path, console_allowed_users=users)
    await b.start()
    try:
        await b.tick()
        (p,) = b.store.pending_proposals()
        replies = await asyncio.gather(*(b.core.approve(p.id, f"u{i}", "console") for i in range(50)))
        await settle_orders(b)
        assert sum(1 for r in replies if r.ok) == 1
        assert len(b.store.executions(p.id)) == 1
        assert len(await orders_with_label(b, p.label)) == 1
        assert b.store.get_proposal(p.id).status == "executed"
    finally:
        await b.stop()


async def test_a_vote_from_a_stranger_changes_nothing_and_is_recorded(bot):
    await bot.tick()
    (p,) = bot.store.pending_proposals()
    reply = await bot.core.approve(p.id, "mallory", "console")
    assert reply.unauthorized and not reply.ok
    assert bot.store.get_proposal(p.id).status == "pending"
    assert bot.store.votes(p.id) == []
    assert any(e["actor"] == "mallory" for e in bot.store.list_events(kind="unauthorized_vote"))
    # the Telegram allowlist does not let a console user through either
    assert (await bot.core.approve(p.id, "alice", "telegram")).unauthorized


async def test_expired_proposal_never_executes(tmp_path):
    b = make_bot(tmp_path, approval_ttl_sec=30)
    await b.start()
    try:
        await b.tick()
        (p,) = b.store.pending_proposals()
        b.exchange.clock.advance(31)
        await b.sweep()
        assert b.store.get_proposal(p.id).status == "expired"
        reply = await b.core.approve(p.id, "alice", "console")
        assert not reply.ok
        await b.core.drain()
        assert await orders_with_label(b, p.label) == []
    finally:
        await b.stop()


async def test_late_vote_before_the_sweep_is_refused_as_expired(tmp_path):
    b = make_bot(tmp_path, approval_ttl_sec=30)
    await b.start()
    try:
        await b.tick()
        (p,) = b.store.pending_proposals()
        b.exchange.clock.advance(45)  # no sweep ran yet
        reply = await b.core.approve(p.id, "alice", "console")
        assert not reply.ok and "expired" in reply.text
        await b.core.drain()
        assert await orders_with_label(b, p.label) == []
    finally:
        await b.stop()


async def test_same_action_is_kept_a_different_one_supersedes(bot):
    _, d1 = await bot.tick()
    (p1,) = bot.store.pending_proposals()
    bot.exchange.clock.advance(5)
    _, d2 = await bot.tick()
    (p2,) = bot.store.pending_proposals()
    assert p2.id == p1.id  # same action on the same instrument: kept
    other = d2.state["cand"][1]["name"]
    assert other != d2.final_action.symbol
    changed = d2.model_copy(update={"final_action": d2.final_action.model_copy(update={"symbol": other})})
    result = bot.approvals.propose(bot.store.record_decision(changed), changed)
    assert result.kind == "created" and result.superseded == (p1.id,)
    assert bot.store.get_proposal(p1.id).status == "superseded"
    assert [r.id for r in bot.store.pending_proposals()] == [result.proposal_id]


async def test_pause_blocks_proposals_and_survives_a_restart(tmp_path):
    b = make_bot(tmp_path)
    await b.start()
    await b.tick()
    (p,) = b.store.pending_proposals()
    reply = await b.core.pause("alice", "console", "testing the kill switch")
    assert reply.ok and b.store.get_proposal(p.id).status == "cancelled"
    await b.stop()

    b2 = make_bot(tmp_path)
    await b2.start()
    try:
        assert b2.approvals.is_paused()
        _, decision = await b2.tick()
        assert decision.final_action.action == ActionType.OPEN_COVERED_CALL  # still decided and recorded...
        assert b2.store.pending_proposals() == []  # ...but nothing is proposed
        assert (await b2.core.resume("bob", "console")).ok
        await b2.tick()
        assert len(b2.store.pending_proposals()) == 1
    finally:
        await b2.stop()


async def test_approved_but_paused_does_not_execute(bot):
    await bot.tick()
    (p,) = bot.store.pending_proposals()
    bot.store.vote_and_maybe_approve(p.id, "alice", "cli", "approve", None, 1, now=bot.now())
    bot.approvals.pause("bob", "console", "stop")
    await bot.sweep()
    assert bot.store.get_proposal(p.id).status == "approved"
    assert await orders_with_label(bot, p.label) == []


async def test_auto_mode_inside_its_limits_executes_alone(tmp_path):
    b = make_bot(tmp_path, approval_mode="auto")
    await b.start()
    try:
        await b.tick()
        await settle_orders(b)
        (p,) = b.store.list_proposals()
        assert p.status == "executed"
        assert [(v.user, v.vote) for v in b.store.votes(p.id)] == [("auto", "approve")]
        assert len(await orders_with_label(b, p.label)) == 1
    finally:
        await b.stop()


async def test_auto_mode_outside_its_limits_waits_for_a_human(tmp_path):
    b = make_bot(tmp_path, approval_mode="auto", auto_approve_max_size=0.05)
    await b.start()
    try:
        await b.tick()
        (p,) = b.store.pending_proposals()
        assert b.store.votes(p.id) == []
        assert any("AUTO_APPROVE_MAX_SIZE" in (e["reason"] or "") for e in b.store.list_events(kind="auto_approve_declined"))
    finally:
        await b.stop()


async def test_price_drift_at_recheck_blocks_execution(bot):
    await bot.tick()
    (p,) = bot.store.pending_proposals()
    bot.exchange.paper.shock(-1.5)  # spot down 1.5 %: still a candidate, but its premium falls >10 %
    reply = await bot.core.approve(p.id, "alice", "console")
    assert reply.ok
    await bot.core.drain()
    row = bot.store.get_proposal(p.id)
    assert row.status == "blocked"
    assert "MAX_PRICE_DRIFT_PCT" in row.status_reason
    assert await orders_with_label(bot, p.label) == []


async def test_a_large_move_blocks_at_the_risk_recheck(bot):
    await bot.tick()
    (p,) = bot.store.pending_proposals()
    bot.exchange.paper.shock(-6.0)  # the call leaves the delta band: no longer a candidate
    await bot.core.approve(p.id, "alice", "console")
    await bot.core.drain()
    row = bot.store.get_proposal(p.id)
    assert row.status == "blocked" and "risk re-check failed" in row.status_reason
    assert await orders_with_label(bot, p.label) == []


async def test_a_tick_that_fails_is_recorded_and_the_loop_goes_on(bot):
    bot.exchange.paper.faults.fail_next("public/get_book_summary_by_currency", 11050, count=1)
    did, decision = await bot.tick()
    assert did is None and decision is None
    assert bot.store.list_events(kind="tick_failed")
    did, decision = await bot.tick()
    assert did is not None


async def test_approved_from_a_second_process_is_executed_by_the_running_bot(bot, tmp_path):
    await bot.tick()
    (p,) = bot.store.pending_proposals()
    env = {**os.environ, "DATABASE_PATH": bot.settings.database_path, "CONSOLE_ALLOWED_USERS": _os_user()}
    done = subprocess.run([sys.executable, "-m", "chatops", "approve", str(p.id)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "approved" in done.stdout
    assert bot.store.get_proposal(p.id).status == "approved"
    assert await bot.pick_up_votes()  # the running bot notices the other process's commit
    await settle_orders(bot)
    assert bot.store.get_proposal(p.id).status == "executed"
    assert len(await orders_with_label(bot, p.label)) == 1


async def test_reconcile_on_start_finds_the_order_by_label_and_sends_nothing(tmp_path):
    b = make_bot(tmp_path)
    await b.start()
    await b.tick()
    (p,) = b.store.pending_proposals()
    b.store.vote_and_maybe_approve(p.id, "alice", "console", "approve", None, 1, now=b.now())
    # What a crash between sending and recording leaves behind: executing, with the order on the exchange.
    assert b.store.transition(p.id, "approved", "executing", actor="agent", channel="executor")
    from agent.execution import execute_action

    await execute_action(b.exchange.client, p.to_action(), p.label, b.settings)
    await b.stop()

    b2 = make_bot(tmp_path)
    await b2.start()  # reconciles before anything else
    try:
        row = b2.store.get_proposal(p.id)
        assert row.status == "executed"
        (ex,) = b2.store.executions(p.id)
        assert all(o["reused"] for o in ex["orders"])
        assert len(await orders_with_label(b2, p.label)) == 1
    finally:
        await b2.stop()


async def test_console_reads_commands_and_answers(tmp_path):
    out = io.StringIO()
    b = make_bot(tmp_path, out=out)
    await b.start()
    try:
        await b.tick()
        (p,) = b.store.pending_proposals()
        console = b.channels[0]
        assert isinstance(console, ConsoleChannel)
        for line in (f"why {p.id}", "status", "pending", "history 5", "bogus words here", f"reject {p.id} too close to spot"):
            console.show_reply(await b.core.handle_text(line, "alice", "console"))
        text = out.getvalue()
        assert "Reasoning (rule)" in text and "Pending proposals" in text and "OPEN_COVERED_CALL" in text
        assert "LLM" in text  # free text without an LLM says which commands work
        row = b.store.get_proposal(p.id)
        assert row.status == "rejected"
        assert b.store.votes(p.id)[0].reason == "too close to spot"
    finally:
        await b.stop()


def test_audit_verify_catches_a_tampered_event(tmp_path, monkeypatch, capsys):
    from chatops.cli import main

    async def scenario():
        b = make_bot(tmp_path)
        await b.start()
        await b.tick()
        await b.stop()

    asyncio.run(scenario())
    monkeypatch.setenv("DATABASE_PATH", str(tmp_path / "chatops.db"))
    assert main(["audit", "verify"]) == 0
    assert "OK" in capsys.readouterr().out
    con = sqlite3.connect(tmp_path / "chatops.db")
    names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name='events'")]
    for n in names:
        con.execute(f"DROP TRIGGER {n}")
    con.execute("UPDATE events SET reason='nothing to see' WHERE id=2")
    con.commit()
    con.close()
    assert main(["audit", "verify"]) == 1
    assert "BROKEN: event 2" in capsys.readouterr().out


def _os_user() -> str:
    from chatops.identity import os_user

    return os_user()


async def test_a_resting_order_stops_the_next_proposal(tmp_path):
    b = make_bot(tmp_path, max_slippage_pct=0.0)  # never below mark: the sell rests above the bid
    await b.start()
    try:
        await b.tick()
        (p,) = b.store.pending_proposals()
        await b.core.approve(p.id, "alice", "console")
        await b.core.drain()
        (o,) = await orders_with_label(b, p.label)
        assert o.order_state == "open"
        b.exchange.clock.advance(3700)  # past the hysteresis window
        _, d = await b.tick()
        assert d.final_action.action == ActionType.DO_NOTHING and "still working" in d.final_action.reasoning
        assert b.store.pending_proposals() == []
    finally:
        await b.stop()


async def test_deribit_dry_run_reads_for_real_and_sends_nothing(tmp_path):
    """EXCHANGE=deribit against a Deribit-compatible server (the paper exchange over HTTP): the
    default dry run reads the account, proposes, and on approval simulates instead of sending."""
    from agent.clock import SimClock as Clock
    from agent.config import load_settings
    from agent.deribit.paper import PaperExchange
    from agent.exchange import open_exchange
    from chatops.app import Bot
    from tests.fakes.paper_http import paper_http

    paper = PaperExchange(clock=Clock(), state_path=None)
    async with paper_http(paper) as url:
        settings = load_settings(env_file=None, exchange="deribit", deribit_base_url=url, deribit_client_id="k",
                                 deribit_client_secret="s", database_path=str(tmp_path / "db"),
                                 console_allowed_users="alice")
        assert settings.effective_dry_run and settings.trading_tag == "[TESTNET DRY-RUN]"
        out = io.StringIO()
        b = Bot(settings, exchange=open_exchange(settings, clock=paper.clock),
                channels=[ConsoleChannel(stdout=out, user="alice", read_input=False)])
        await b.start()
        try:
            await b.tick()
            (p,) = b.store.pending_proposals()
            await b.core.approve(p.id, "alice", "console")
            await b.core.drain()
            (ex,) = b.store.executions(p.id)
            assert ex["status"] == "simulated" and ex["dry_run"]
            assert b.store.get_proposal(p.id).status == "executed"
            assert await b.exchange.client.get_order_state_by_label("BTC", p.label) == []
            assert "[TESTNET DRY-RUN] #1" in out.getvalue() and "(dry run)" in out.getvalue()
        finally:
            await b.stop()
