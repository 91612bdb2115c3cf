"""The dashboard with UNDERLYING=BTC,ETH: a row per coin, its pause and pending proposal."""

from __future__ import annotations

from tests.web_harness import login, web_bot


async def test_the_overview_has_a_row_per_coin(tmp_path):
    async with web_bot(tmp_path, underlying="BTC,ETH") as web:
        await web.bot.tick_all()
        (btc,), (eth,) = web.store.pending_proposals("BTC"), web.store.pending_proposals("ETH")
        await web.bot.core.handle_text("pause ETH", "alice", "console")
        async with web.client() as c:
            assert (await login(c, "victor")).status_code == 303
            home = (await c.get("/")).text
            btc_row = home.split('id="coin-BTC"')[1].split("</tr>")[0]
            eth_row = home.split('id="coin-ETH"')[1].split("</tr>")[0]
            assert "running" in btc_row and f"#{btc.id}" in btc_row and "1.0000 BTC" in btc_row
            assert "PAUSED (resume ETH)" in eth_row and f"#{eth.id}" not in eth_row and "27.1429 ETH" in eth_row
            coins = (await c.get("/api/v1/overview")).json()["coins"]
            assert [x["underlying"] for x in coins] == ["BTC", "ETH"] and coins[1]["paused"] and coins[1]["pending"] == []
