"""Orders followed to a final state the exchange agrees with, over real HTTP against the paper
exchange with its own faults injected in front of `private/sell`: a timeout then a late order, a
bare 502 before and after processing, a connection dropped after processing, a locked database
right after the send. Each test asserts that the proposal's status, its order rows and the
exchange's own orders agree (tests/orders_helpers.assert_agree)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

from tests.orders_helpers import assert_agree, harness


async def test_timeout_then_the_order_arrives_late_and_fills(tmp_path):
    async with harness(tmp_path, timeout=0.3) as h:
        h.paper.faults.add_latency(0.8, "private/sell")  # the exchange gets it after the client gave up
        pid = await h.approved_open()
        (leg,) = h.legs(pid)
        assert h.bot.store.get_proposal(pid).status == "executing" and leg["state"] == "unknown"
        assert h.event_kinds(pid) == ["unknown"]  # nothing resent, nothing guessed
        h.paper.faults.clear()
        await asyncio.sleep(1.0)  # the late request is processed meanwhile (real time)
        await h.step(1.0)  # the lookup by label (after its back-off) finds it
        assert "found" in h.event_kinds(pid)
        assert await h.until_settled() == "executed"
        facts = await assert_agree(h, pid)
        assert facts["filled"] > 0 and facts["legs"][0]["fee"] > 0
        kinds = h.event_kinds(pid)
        assert kinds.index("unknown") < kinds.index("found") < kinds.index("fill")
        assert "found by label after a lost answer" in h.out.getvalue()


async def test_502_before_processing_is_unknown_then_failed_with_nothing_on_the_exchange(tmp_path):
    async with harness(tmp_path, order_unknown_giveup_sec=30) as h:
        h.paper.faults.http_status_next("private/sell", 502)
        pid = await h.approved_open()
        assert h.bot.store.get_proposal(pid).status == "executing"  # not "executed" on a guess
        assert h.legs(pid)[0]["state"] == "unknown"
        await h.step(5.0, times=3)
        assert h.bot.store.get_proposal(pid).status == "executing"  # still looking, never resent
        assert await h.until_settled(5.0) == "failed"
        facts = await assert_agree(h, pid)
        assert facts["filled"] == 0 and "never got there" in facts["reason"] and "nothing was resent" in facts["reason"]
        assert await h.client.get_order_state_by_label("BTC", facts["legs"][0]["label"]) == []
        assert h.event_kinds(pid) == ["unknown", "not_found"]


async def test_502_after_processing_is_found_by_label_and_followed(tmp_path):
    async with harness(tmp_path) as h:
        h.paper.faults.http_status_next("private/sell", 502, after_processing=True)
        pid = await h.approved_open()
        assert h.event_kinds(pid)[:2] == ["unknown", "found"]  # the immediate lookup found it
        assert await h.until_settled() == "executed"
        await assert_agree(h, pid)


async def test_connection_dropped_after_processing_is_found_by_label(tmp_path):
    async with harness(tmp_path) as h:
        h.paper.faults.drop_next("private/sell", after_processing=True)
        pid = await h.approved_open()
        assert h.event_kinds(pid)[:2] == ["unknown", "found"]
        assert await h.until_settled() == "executed"
        facts = await assert_agree(h, pid)
        (ex,) = h.bot.store.executions(pid)
        assert ex["orders"][0]["reused"] == 1 and facts["filled"] > 0


async def test_a_locked_database_right_after_the_send_is_retried_until_released(tmp_path, caplog):
    async with harness(tmp_path, busy_timeout=0.1) as h:
        db = h.bot.settings.database_path
        holder: dict = {}
        original = h.paper.handle

        async def handle(method, params, token, request_id=None):
            answer = await original(method, params, token, request_id)
            if method == "private/sell":  # another process takes the write lock right after the send
                con = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
                con.execute("BEGIN IMMEDIATE")
                holder["con"] = con
                asyncio.get_running_loop().call_later(0.8, lambda: (con.execute("COMMIT"), con.close()))
            return answer

        h.paper.handle = handle
        caplog.set_level(logging.WARNING, logger="chatops.engine")
        pid = await h.approved_open()
        assert "con" in holder
        assert any("retrying" in r.getMessage() for r in caplog.records)  # it waited, it did not give up
        (leg,) = h.legs(pid)
        assert leg["order_id"] and leg["state"] == "open"  # recorded once the lock went
        assert await h.until_settled() == "executed"
        await assert_agree(h, pid)


async def test_a_proposal_left_executing_by_a_hiccup_is_settled_by_the_next_sweep(tmp_path):
    async with harness(tmp_path) as h:
        pid = await h.approved_open()
        assert h.bot.store.get_proposal(pid).status == "executing"
        # No restart: the sweep alone follows and settles it.
        assert await h.until_settled() == "executed"
        await assert_agree(h, pid)
