"""`/cancel N` from Telegram and `/cc cancel N` from Slack (allowlisted users) cancels proposal N's working order on the
exchange, records who did it, and edits the card to its final state; a stranger is refused. The
real client libraries against fake Telegram / Slack servers; the paper exchange in process."""

from __future__ import annotations

from chatops.adapters.slack import ACTION_APPROVE
from tests import slack_helpers as slack
from tests import test_telegram as tg


async def _working(h, press) -> int:
    pid, card = await h.tick_card()
    await press(pid, card)
    await h.fake.wait_for(lambda: h.status(pid) == "executing")
    await h.bot.core.drain()
    (order,) = h.paper_orders(h.store.get_proposal(pid).label)
    assert order.order_state == "open"  # a sell at the mid rests
    return pid


async def test_telegram_cancel_cancels_the_working_order(tmp_path):
    async with tg.running(tmp_path) as h:
        pid = await _working(h, lambda pid, card: h.press(tg.ALICE, f"a:{pid}", card.message_id))
        refused = await h.say(tg.STRANGER, f"/cancel {pid}")
        assert refused.visible.startswith("Not authorized") and h.status(pid) == "executing"
        reply = await h.say(tg.ALICE, f"/cancel {pid}")
        assert f"Cancel of #{pid}" in reply.visible and "now failed" in reply.visible
        row = h.store.get_proposal(pid)
        assert row.status == "failed" and f"cancelled by {tg.ALICE}" in row.status_reason
        (order,) = h.paper_orders(row.label)
        assert order.order_state == "cancelled" and order.filled_amount == 0
        events = h.store.list_events(proposal_id=pid, kind="cancel_requested")
        assert [(e["actor"], e["channel"]) for e in events] == [(str(tg.ALICE), "telegram")]
        card = h.card_message(pid)
        await h.fake.wait_for(lambda: "Execution failed" in card.visible and not card.buttons)


async def test_slack_cancel_cancels_the_working_order(tmp_path):
    async with slack.running(tmp_path) as h:
        pid = await _working(h, lambda pid, card: h.press(slack.ALICE, ACTION_APPROVE, pid, card))
        url = await h.command(slack.STRANGER, "/cc", f"cancel {pid}")
        assert "Not authorized" in str(await h.answer(url)) and h.status(pid) == "executing"
        url = await h.command(slack.ALICE, "/cc", f"cancel {pid}")
        assert f"Cancel of #{pid}" in str(await h.answer(url))
        row = h.store.get_proposal(pid)
        assert row.status == "failed" and f"cancelled by {slack.ALICE}" in row.status_reason
        (order,) = h.paper_orders(row.label)
        assert order.order_state == "cancelled"
        events = h.store.list_events(proposal_id=pid, kind="cancel_requested")
        assert [(e["actor"], e["channel"]) for e in events] == [(slack.ALICE, "slack")]
