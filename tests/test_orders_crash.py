"""A real SIGKILL between the two legs of a roll (the close leg filled and recorded, the new call
not yet sold), then a restart: the roll is `failed` with "roll half done", the chat is alerted,
nothing is sent after the restart, and the store agrees with the exchange leg by leg. Real
processes: the paper exchange served over HTTP, the bot run twice as `python -m chatops run`."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import timedelta

from agent.config import load_settings
from agent.deribit.client import DeribitClient
from agent.models import Action, ActionType
from agent.state import build_agent_state
from chatops.store import Store
from tests.test_crash_recovery import _free_port, _wait_for_line


async def _set_up_a_short_call_and_a_roll_target(url: str):
    """Sell X (the call to roll from) and pick Y (a candidate further up and out)."""
    settings = load_settings(env_file=None)
    async with DeribitClient(url, "probe", "probe") as c:
        state = await build_agent_state(c, settings)
        target = max(state.candidates, key=lambda x: (x.expiration_timestamp, x.strike))
        now_ms = state.timestamp.timestamp() * 1000
        calls = [i for i in await c.get_instruments("BTC", "option") if i.option_type == "call"
                 and now_ms + 86_400_000 < i.expiration_timestamp < target.expiration_timestamp
                 and i.strike < target.strike]
        # The latest, highest call whose buy-back can fill: its ask within MAX_SLIPPAGE_PCT of the
        # mark (a cheap wing's one-tick spread is wider than that, and the close leg would time out
        # by design). Which calls qualify moves with the wall clock; this choice does not.
        slip = 1 + settings.max_slippage_pct / 100
        for source in sorted(calls, key=lambda i: (i.expiration_timestamp, i.strike), reverse=True):
            t = await c.ticker(source.instrument_name)
            if t.best_bid_price and t.best_ask_price <= t.mark_price * slip:
                break
        else:
            raise AssertionError("no call to roll from whose buy-back can fill")
        await c.sell(source.instrument_name, 0.1, t.best_bid_price, label="setup-short")
        t = await c.ticker(source.instrument_name)
        return source.instrument_name, t.best_ask_price, target.instrument_name, target.bid


async def _by_label(url: str, label: str):
    async with DeribitClient(url, "probe", "probe") as c:
        return await c.get_order_state_by_label("BTC", label)


async def _positions(url: str):
    async with DeribitClient(url, "probe", "probe") as c:
        return {p.instrument_name: p.signed_size for p in await c.get_positions("BTC")}


def test_sigkill_between_roll_legs_then_restart_is_a_half_done_roll(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    db = tmp_path / "chatops.db"
    env = {**os.environ, "DATABASE_PATH": str(db), "PAPER_EXCHANGE_URL": url, "CONSOLE_ENABLED": "false",
           "CONSOLE_ALLOWED_USERS": "alice", "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1", "APPROVAL_TTL_SEC": "5",
           "ORDER_REPRICE_SEC": "3", "ORDER_TIMEOUT_SEC": "14", "WEB_PORT": "0"}
    paper = subprocess.Popen([sys.executable, "-m", "chatops", "paper-exchange", "--port", str(port),
                              "--state", str(tmp_path / "paper.json")],
                             env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_line(paper, "listening")
        x, x_ask, y, y_bid = asyncio.run(_set_up_a_short_call_and_a_roll_target(url))
        store = Store(db)
        roll = Action(action=ActionType.ROLL_COVERED_CALL, underlying="BTC", symbol=y, roll_from=x, size=0.1,
                      ref_sell_price=y_bid, ref_buy_price=x_ask, reasoning="test roll")
        p = store.create_proposal(None, roll, expires_at=store.now() + timedelta(minutes=5), approvals_required=1)
        assert store.vote_and_maybe_approve(p.id, "alice", "console", "approve").kind == "approved"
        store.close()

        first = subprocess.run([sys.executable, "-m", "chatops", "run", "--ticks", "1", "--interval", "600"],
                               env={**env, "CHATOPS_TEST_CRASH_POINT": "between_roll_legs"}, cwd=tmp_path,
                               capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
        con = sqlite3.connect(db)
        assert con.execute("SELECT status FROM proposals WHERE id = ?", [p.id]).fetchone()[0] == "executing"
        legs = con.execute("SELECT label, state, filled_amount FROM order_legs WHERE proposal_id = ? ORDER BY seq",
                           [p.id]).fetchall()
        assert legs == [(f"{p.label}-close", "filled", 0.1), (f"{p.label}-open", "new", 0.0)]
        con.close()
        assert asyncio.run(_positions(url)).get(x) is None  # bought back: X is flat now

        second = subprocess.run([sys.executable, "-m", "chatops", "run", "--ticks", "1", "--interval", "600"],
                                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL)
        assert second.returncode == 0, second.stderr[-3000:]

        con = sqlite3.connect(db)
        status, reason = con.execute("SELECT status, status_reason FROM proposals WHERE id = ?", [p.id]).fetchone()
        assert status == "failed"
        assert reason.startswith(f"roll half done: bought back 0.1 {x}, {y} not sold") and "no covered call is open" in reason
        rows = con.execute("SELECT label, order_state, filled_amount, order_id FROM orders WHERE proposal_id = ? "
                           "ORDER BY id", [p.id]).fetchall()
        alerts = [r[0] for r in con.execute("SELECT reason FROM events WHERE kind = 'notice'") if "roll half done" in r[0]]
        con.close()
        close_on_exchange = asyncio.run(_by_label(url, f"{p.label}-close"))
        assert [(o.order_state, o.filled_amount) for o in close_on_exchange] == [("filled", 0.1)]
        assert asyncio.run(_by_label(url, f"{p.label}-open")) == []  # nothing sent after the restart
        assert rows == [(f"{p.label}-close", "filled", 0.1, close_on_exchange[0].order_id),
                        (f"{p.label}-open", "not_sent", 0.0, None)]
        assert alerts, "the chat was not alerted"
        assert y not in asyncio.run(_positions(url))
    finally:
        paper.terminate()
        paper.wait(timeout=10)
