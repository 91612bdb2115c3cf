"""/pnl and /chart deliver a text and a PNG through the fake Telegram Bot API (sendPhoto) and the
fake Slack Web API (files_upload_v2: getUploadURLExternal, the upload, completeUploadExternal)."""

from __future__ import annotations

import pytest

from tests.slack_helpers import ALICE as SLACK_ALICE
from tests.slack_helpers import CHANNEL_ID, running as slack_running
from tests.test_telegram import ALICE, CHAT, running as telegram_running

PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")


async def open_and_tick(h, approver: str, channel: str) -> None:
    await h.bot.tick()
    (p,) = h.store.pending_proposals()
    r = await h.bot.core.approve(p.id, approver, channel)
    assert r.ok, r.text
    await h.bot.core.drain()
    for _ in range(20):  # the order works from mid toward the touch: a minute at a time until it fills
        if h.store.ledger_fills("BTC"):
            break
        h.clock.advance(60)
        await h.bot.sweep()
        await h.bot.core.drain()
        await h.bot.tick()
    for _ in range(3):
        h.clock.advance(300)
        await h.bot.tick()
    assert len(h.store.ledger_fills("BTC")) == 1 and len(h.store.snapshots("BTC")) >= 4


async def test_pnl_and_chart_on_telegram(tmp_path):
    async with telegram_running(tmp_path) as h:
        await open_and_tick(h, str(ALICE), "telegram")
        assert {"pnl", "chart"} <= {c["command"] for c in h.fake.commands}
        reply = await h.say(ALICE, "/pnl")
        assert "premium collected" in reply.visible and "vs HODL" in reply.visible and "check OK" in reply.visible
        photo = await h.fake.wait_for(lambda: h.fake.photos)
        assert photo[0]["chat_id"] == CHAT and photo[0]["data"].startswith(PNG) and photo[0]["filename"] == "pnl.png"
        await h.say(ALICE, "/chart")
        await h.fake.wait_for(lambda: len(h.fake.photos) == 2)
        assert h.fake.photos[1]["filename"] == "chart.png" and h.fake.photos[1]["data"].startswith(PNG)


async def test_pnl_on_slack_answers_and_uploads_the_chart(tmp_path):
    async with slack_running(tmp_path) as h:
        await open_and_tick(h, SLACK_ALICE, "slack")
        answer = await h.answer(await h.command(SLACK_ALICE, "/cc", "pnl 30d"))
        assert "premium collected" in answer.visible and "check OK" in answer.visible
        (up,) = await h.fake.wait_for(lambda: h.fake.files_shared(CHANNEL_ID))
        assert up["filename"] == "pnl.png" and up["data"].startswith(PNG) and len(up["data"]) == up["length"]
        assert h.fake.calls_to("files.getUploadURLExternal") and h.fake.calls_to("files.completeUploadExternal")
        bad = await h.answer(await h.command(SLACK_ALICE, "/cc", "pnl yesterday-ish"))
        assert "use 30d, 12h, 2w, all or a date" in bad.text
