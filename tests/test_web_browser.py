"""A real browser on the real dashboard: Debian's headless Chromium driven by Playwright (never a
downloaded browser build) logs in, sees the pending card change live when a vote lands from another
channel, clicks Approve, and sees the proposal executed on the paper exchange. Screenshots go under
the test's temporary directory.

CI installs `chromium` with apt-get (.ci/run): there a missing browser fails the test. Elsewhere it
is skipped with the command that installs it.
"""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from tests.spine_helpers import until_executed
from tests.web_harness import PASSWORDS, web_bot

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"

if not os.path.exists(CHROMIUM) and not os.environ.get("CI"):
    pytest.skip("Chromium is not installed (apt-get install -y chromium); CI installs it and runs this test",
                allow_module_level=True)


async def test_log_in_see_the_card_update_live_approve_and_see_it_executed(tmp_path):
    from playwright.async_api import async_playwright, expect

    async with web_bot(tmp_path, approvals_required=2) as web:
        pid = await web.propose()
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = await browser.new_page()
                page.set_default_timeout(20_000)
                await page.goto(web.url + "/")
                await expect(page).to_have_url(web.url + "/login?next=/")
                await page.fill("input[name=username]", "alice")
                await page.fill("input[name=password]", PASSWORDS["alice"])
                await page.click("#login")
                await expect(page).to_have_url(web.url + "/")
                card = page.locator(f"#card-{pid}")
                await expect(card).to_contain_text(f"#{pid} Open covered call")
                await expect(card).to_contain_text("0/2 approvals")
                await page.screenshot(path=str(tmp_path / "1-pending.png"), full_page=True)

                # A vote from another channel (the terminal's bob) shows up without a reload.
                reply = await web.bot.core.approve(pid, "bob", "console")
                assert reply.ok and "1/2" in reply.text
                await expect(page.locator(f"#status-{pid}")).to_contain_text("1/2 approvals")

                await page.click(f"#approve-{pid}")
                # The sell starts at the mid: let it step to the bid on the simulated clock meanwhile.
                driver = asyncio.ensure_future(until_executed(web.bot, pid, timeout=20))
                await expect(page).to_have_url(web.url + f"/proposals/{pid}")
                await expect(page.locator(f"#status-{pid}")).to_contain_text("Executed", timeout=20_000)
                await driver
                await page.reload()  # the orders box is drawn with the page (the status is the live part)
                await expect(page.locator("#orders")).to_contain_text("filled")
                shot = tmp_path / "2-executed.png"
                await page.screenshot(path=str(shot), full_page=True)
            finally:
                await browser.close()
        assert shot.stat().st_size > 5_000
        row = web.store.get_proposal(pid)
        assert row.status == "executed"
        assert sorted((v.user, v.channel) for v in web.store.votes(pid)) == [("alice", "web"), ("bob", "console")]
        orders = await web.bot.exchange.client.get_order_state_by_label(web.bot.settings.underlying, row.label)
        assert len(orders) == 1 and orders[0].order_state == "filled"
