"""A working order's life over real HTTP against the paper exchange, on a simulated clock: it
starts at the mid, is repriced toward the bid until it fills, is cancelled after ORDER_TIMEOUT_SEC,
fills partly then is cancelled, is cancelled when the price drifts against the approval, and is
cancelled on request (`cancel N`, `chatops cancel N`). Each asserts the proposal's status, its
order rows and the exchange's own orders agree."""

from __future__ import annotations

import os
import subprocess
import sys

from agent.pricing import is_on_grid
from tests.orders_helpers import assert_agree, harness

GRID = [{"above_price": 0.005, "tick_size": 0.0005}]


async def test_a_resting_sell_starts_at_the_mid_and_is_repriced_until_it_fills(tmp_path):
    async with harness(tmp_path) as h:
        pid = await h.approved_open()
        (leg,) = h.legs(pid)
        t = await h.client.ticker(leg["instrument"])
        start = leg["price"]
        assert leg["state"] == "open" and start > t.best_bid_price  # rests above the bid
        assert start >= (t.best_bid_price + t.best_ask_price) / 2 - 1e-12 and is_on_grid(start, 0.0001, GRID)
        await h.step(5.0)  # before ORDER_REPRICE_SEC: left alone
        assert h.legs(pid)[0]["price"] == start and "repriced" not in h.event_kinds(pid)
        assert await h.until_settled() == "executed"
        kinds = h.event_kinds(pid)
        assert kinds[0] == "sent" and kinds.count("repriced") >= 1 and kinds[-1] == "fill"
        facts = await assert_agree(h, pid)
        (o,) = await h.client.get_order_state_by_label("BTC", leg["label"])
        assert o.price < start and o.order_state == "filled"  # the same order, moved by private/edit
        assert o.price >= t.mark_price * (1 - h.bot.settings.max_slippage_pct / 100) - 1e-12
        assert "filled" in facts["reason"]
        (pos,) = await h.client.get_positions("BTC")
        assert pos.signed_size == -0.1


async def test_a_resting_order_is_cancelled_after_the_timeout(tmp_path):
    # No slippage at all: it may not go below the mark, the bid never comes up to it.
    async with harness(tmp_path, max_slippage_pct=0.0, order_timeout_sec=100) as h:
        pid = await h.approved_open()
        await h.step(20.0, times=4)
        assert h.bot.store.get_proposal(pid).status == "executing"  # still within the timeout
        assert await h.until_settled() == "failed"
        facts = await assert_agree(h, pid)
        assert "not filled within ORDER_TIMEOUT_SEC (100 s), cancelled" in facts["reason"]
        assert facts["legs"][0]["state"] == "cancelled" and facts["filled"] == 0
        assert h.event_kinds(pid)[-1] == "cancelled"
        assert await h.client.get_positions("BTC") == []


async def test_a_partial_fill_then_cancel_ends_executed_saying_how_much(tmp_path):
    async with harness(tmp_path, default_order_size=0.3) as h:
        await h.bot.tick()
        (p,) = h.bot.store.pending_proposals()
        h.paper.limit_depth(p.symbol, 0.1)  # the bid holds only 0.1 contracts
        await h.bot.core.approve(p.id, "alice", "console")
        await h.bot.core.drain()
        assert await h.until_settled() == "executed"
        facts = await assert_agree(h, p.id)
        assert facts["filled"] == 0.1 and facts["legs"][0]["state"] == "cancelled"
        assert "partly filled 0.1 of 0.3" in facts["reason"] and "ORDER_TIMEOUT_SEC" in facts["reason"]
        kinds = h.event_kinds(p.id)
        assert "partial_fill" in kinds and kinds[-1] == "cancelled" and "fill" not in kinds
        (ex,) = h.bot.store.executions(p.id)
        assert ex["status"] == "partially_filled"
        (pos,) = await h.client.get_positions("BTC")
        assert pos.signed_size == -0.1
        # The terminal tells it on the card's own line (Telegram and Slack get a line per fill too).
        assert "order BTC-1 cancelled, filled 0.1 at" in h.out.getvalue()
        assert [e["reason"] for e in h.bot.store.list_events(proposal_id=p.id, kind="order_partial_fill")]


async def test_an_adverse_drift_while_repricing_cancels(tmp_path):
    async with harness(tmp_path) as h:
        pid = await h.approved_open()
        h.paper.shock(-6.0)  # spot falls: the call's bid falls far below what was approved
        assert await h.until_settled() == "failed"
        facts = await assert_agree(h, pid)
        assert "MAX_PRICE_DRIFT_PCT" in facts["reason"] and facts["legs"][0]["state"] == "cancelled"
        assert facts["filled"] == 0 and "repriced" not in h.event_kinds(pid)


async def test_cancel_in_the_terminal_cancels_the_working_order_and_records_who(tmp_path):
    async with harness(tmp_path) as h:
        pid = await h.approved_open()
        reply = await h.bot.core.handle_text(f"cancel {pid}", "alice", "console")
        assert reply.ok, reply.text
        assert h.bot.store.get_proposal(pid).status == "failed"
        facts = await assert_agree(h, pid)
        assert "cancelled by alice" in facts["reason"]
        events = h.bot.store.list_events(proposal_id=pid, kind="cancel_requested")
        assert [(e["actor"], e["channel"]) for e in events] == [("alice", "console")]
        refused = await h.bot.core.handle_text(f"cancel {pid}", "mallory", "console")
        assert not refused.ok and refused.unauthorized


async def test_chatops_cancel_from_another_process_is_done_by_the_running_bot(tmp_path):
    async with harness(tmp_path) as h:
        pid = await h.approved_open()
        env = {**os.environ, "DATABASE_PATH": h.bot.settings.database_path,
               "CONSOLE_ALLOWED_USERS": _os_user()}
        done = subprocess.run([sys.executable, "-m", "chatops", "cancel", str(pid)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "the running bot cancels it" in done.stdout
        await h.step(0.1)  # the next sweep
        facts = await assert_agree(h, pid)
        assert facts["status"] == "failed" and f"cancelled by {_os_user()}" in facts["reason"]


def _os_user() -> str:
    import getpass

    return getpass.getuser()
