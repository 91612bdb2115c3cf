"""What the dashboard's pages say: the audit page catches tampering, the P&L page shows fills and
equity, a decision's page its reasoning; all read from the store the bot wrote."""

from __future__ import annotations

import html
import json
import sqlite3

from chatops import pnl as pnl_mod
from tests.spine_helpers import settle_orders
from tests.web_harness import login, session_csrf, web_bot


async def test_audit_page_shows_the_head_and_catches_a_tampered_event(tmp_path):
    async with web_bot(tmp_path) as web:
        await web.propose()
        async with web.client() as c:
            await login(c, "alice")
            a = (await c.get("/api/v1/audit")).json()
            assert a["verify"]["ok"] and a["verify"]["audit"]["ok"]
            assert a["verify"]["audit"]["head"] == web.store.audit_head().as_text()
            assert a["verify"]["head_hash"] == web.store.verify_chain().head_hash
            page = await c.get("/audit")
            assert "verify: OK" in page.text and web.store.audit_head().hash in page.text
            con = sqlite3.connect(web.bot.settings.database_path)
            for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='trigger' AND tbl_name='events'"):
                con.execute(f"DROP TRIGGER {name}")
            con.execute("UPDATE events SET reason = 'nothing to see' WHERE id = 2")
            con.commit()
            con.close()
            page = await c.get("/audit", params={"fresh": 1})  # a raw UPDATE adds no event: ask for a rescan
            assert "verify: BROKEN at event 2" in page.text
            broken = (await c.get("/api/v1/audit", params={"fresh": 1})).json()["verify"]
            assert broken["ok"] is False and broken["first_broken_id"] == 2
            assert broken["audit"]["ok"] is False and any("rewritten" in p for p in broken["audit"]["problems"])


async def test_pnl_page_shows_the_fills_the_exchange_reported(tmp_path):
    async with web_bot(tmp_path) as web:
        pid = await web.propose()
        async with web.client() as c:
            await login(c, "alice")
            await c.post(f"/api/v1/proposals/{pid}/approve", headers={"X-CSRF-Token": await session_csrf(c)})
            await settle_orders(web.bot)  # the sell starts at the mid and steps toward the bid
            web.bot.exchange.clock.advance(600)
            await web.bot.tick()
            (order,) = web.store.executions(pid)[0]["orders"]
            p = (await c.get("/api/v1/pnl")).json()
            assert p["fills_total"] == 1 and p["fills"][0]["order_id"] == order["order_id"]
            assert abs(p["premium_sold"] - order["filled_amount"] * order["average_price"]) < 1e-12
            assert p["bought_back"] == 0 and len(p["equity"]) == 2 and p["shadow"]["decisions"] == 0
            page = await c.get("/pnl")
            assert "<svg" in page.text and "polyline" in page.text and order["order_id"] in page.text
            # The ledger's report (the exchange's fills, fees, equity check), as `chatops pnl` gives it.
            ledger = p["ledger"]["BTC"]
            assert ledger is not None and ledger["report"] == json.loads(json.dumps(pnl_mod.report(web.store, "BTC").to_dict()))
            assert html.escape(ledger["text"].splitlines()[0], quote=False) in page.text and 'id="ledger-BTC"' in page.text
            d = await c.get("/decisions/1")
            assert d.status_code == 200 and "Reasoning (rule)" in d.text and "Risk check" in d.text
            missing = await c.get("/decisions/999")
            assert missing.status_code == 404 and "No decision d999" in missing.text


async def test_a_secret_that_got_into_the_database_is_still_not_rendered(tmp_path):
    key = "sk-test-fake-openai-key-0123456789abcdef"
    secret = "paper-secret-never-shown-42"
    async with web_bot(tmp_path, openai_api_key=key, paper_client_secret=secret) as web:
        await web.propose()
        con = sqlite3.connect(web.bot.settings.database_path)  # behind the store's back: no redaction on write
        con.execute("INSERT INTO questions (ts, user, channel, kind, text) VALUES "
                    "('2026-01-01T00:00:00.000000Z', 'alice', 'web', 'ask', ?)",
                    [f"is {secret} my key? and {key}? Bearer abcdefghijkl12345"])
        con.commit()
        con.close()
        async with web.client() as c:
            await login(c, "alice")
            for path in ("/chat", "/api/v1/chat"):
                r = await c.get(path)
                assert r.status_code == 200 and "my key?" in r.text, path
                assert secret not in r.text and key not in r.text and "abcdefghijkl12345" not in r.text, path
                assert "***" in r.text
