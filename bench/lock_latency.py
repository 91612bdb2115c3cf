"""A locked database delays writes, not the buttons: press answers and Slack acks under a held lock.

    .venv/bin/python bench/lock_latency.py [--hold 10] [-n 5]

Another process opens the bot's SQLite file and holds `BEGIN EXCLUSIVE` for `--hold` seconds
(longer than the store's 5 s busy timeout by default). Meanwhile, on loopback:

- Telegram: an allowlisted user presses Approve (fake Bot API, real python-telegram-bot long
  polling). Measured: from the fake handing the press to the bot, to the bot's
  answerCallbackQuery arriving (target < 100 ms). Then what became of the vote: it lands when
  the lock is released within the busy timeout, or it fails and a message in the chat says so.
- Slack (HTTP mode): a signed block_actions press is POSTed to the bot's /slack/events. Measured:
  the HTTP response time, i.e. the ack Slack wants within 3 s.

Each press is on a fresh proposal; the figures are printed, nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from agent.clock import SimClock  # noqa: E402
from agent.config import load_settings  # noqa: E402
from agent.exchange import open_exchange  # noqa: E402
from chatops.adapters.slack import ACTION_APPROVE, SlackChannel  # noqa: E402
from chatops.adapters.telegram import TelegramChannel, TelegramOptions  # noqa: E402
from chatops.app import Bot  # noqa: E402
from tests.fakes.slack_server import fake_slack_server  # noqa: E402
from tests.fakes.telegram_server import fake_telegram_server  # noqa: E402
from tests.slack_helpers import FAST as SLACK_FAST, SECRET, block_actions, free_port, sign  # noqa: E402

CHAT, USER = -1001, 42

HOLDER = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
con.execute("BEGIN EXCLUSIVE")
con.execute("INSERT INTO flags (key, value, updated_at) VALUES ('bench_lock', '1', 'x') "
            "ON CONFLICT(key) DO UPDATE SET value = '1'")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("COMMIT")
"""


def hold_lock(db: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, db, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


async def wait_for(pred, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (v := pred()):
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.005)
    return v


async def telegram(n: int, hold: float) -> tuple[list[float], list[str]]:
    answers, outcomes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        async with fake_telegram_server() as tg:
            settings = load_settings(env_file=None, database_path=f"{tmp}/chatops.db",
                                     paper_state_path=f"{tmp}/paper.json", telegram_bot_token="123456:TEST",
                                     telegram_chat_id=str(CHAT), telegram_allowed_user_ids=str(USER),
                                     telegram_api_base_url=tg.base_url, console_enabled=False)
            channel = TelegramChannel(settings, options=TelegramOptions(poll_timeout=5, min_interval=0.0,
                                                                        group_per_minute=1_000_000))
            bot = Bot(settings, exchange=open_exchange(settings, clock=SimClock()), channels=[channel])
            await bot.start()
            try:
                for _ in range(n):
                    for p in bot.store.pending_proposals():  # a fresh proposal each round
                        bot.store.transition(p.id, "pending", "cancelled", actor="agent", channel="bench")
                    await bot.tick()
                    row = bot.store.latest_proposal()
                    if row is None or row.status != "pending":
                        break  # no fresh proposal (e.g. a call is open now): fewer presses
                    refs = await wait_for(lambda: bot.core.message_refs(row.id, "telegram"))
                    await channel.idle()
                    holder = hold_lock(settings.database_path, hold)
                    qid = tg.push_callback(USER, f"a:{row.id}", int(refs[0][1]), CHAT)
                    await wait_for(lambda: tg.answer(qid))
                    served = tg.served_at_query(qid)
                    at = next(c.at for c in tg.calls_to("answerCallbackQuery")
                              if c.params.get("callback_query_id") == qid)
                    answers.append((at - served) * 1000)
                    t0 = time.monotonic()

                    def said():
                        return [m.visible for m in tg.sent(CHAT) if f"#{row.id} was NOT recorded" in m.visible]

                    # The vote's outcome: it lands (approved, then executed) or a chat message says it failed.
                    await wait_for(lambda: bot.store.get_proposal(row.id).status not in ("pending", "approved")
                                   or said(), timeout=hold + 30)
                    await bot.core.drain()
                    status = bot.store.get_proposal(row.id).status
                    outcomes.append(f"#{row.id} {status} {time.monotonic() - t0:.1f}s after the press"
                                    + (f"; chat: {said()[-1][:120]!r}" if said() else ""))
                    await wait_for(lambda: holder.poll() is not None, timeout=hold + 30)
            finally:
                await bot.stop()
    return answers, outcomes


async def slack(n: int, hold: float) -> list[float]:
    acks = []
    with tempfile.TemporaryDirectory() as tmp:
        async with fake_slack_server() as fake:
            settings = load_settings(env_file=None, database_path=f"{tmp}/chatops.db",
                                     paper_state_path=f"{tmp}/paper.json", slack_bot_token=fake.bot_token,
                                     slack_signing_secret=SECRET, slack_channel_id="C0CHAN", slack_allowed_user_ids="U1",
                                     slack_api_base_url=fake.base_url, slack_http_port=free_port(),
                                     console_enabled=False)
            channel = SlackChannel(settings, options=SLACK_FAST)
            bot = Bot(settings, exchange=open_exchange(settings, clock=SimClock()), channels=[channel])
            await bot.start()
            url = f"http://127.0.0.1:{channel.http_port}/slack/events"
            try:
                async with aiohttp.ClientSession() as http:
                    for _ in range(n):
                        for p in bot.store.pending_proposals():
                            bot.store.transition(p.id, "pending", "cancelled", actor="agent", channel="bench")
                        await bot.tick()
                        row = bot.store.latest_proposal()
                        if row is None or row.status != "pending":
                            break
                        await channel.idle()
                        holder = hold_lock(settings.database_path, hold)
                        body = urlencode({"payload": json.dumps(block_actions("U1", ACTION_APPROVE, row.id, None))})
                        t0 = time.monotonic()
                        async with http.post(url, data=body.encode(), headers={
                                "Content-Type": "application/x-www-form-urlencoded", **sign(body)}) as resp:
                            await resp.read()
                            acks.append((time.monotonic() - t0) * 1000)
                        await wait_for(lambda: holder.poll() is not None, timeout=hold + 30)
                        await wait_for(lambda: not channel._tasks, timeout=30)  # the vote, done or refused
            finally:
                await bot.stop()
    return acks


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"p50 {statistics.median(xs):.1f} ms, max {xs[-1]:.1f} ms over {len(xs)}"


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hold", type=float, default=10.0, help="seconds the other process holds BEGIN EXCLUSIVE")
    ap.add_argument("-n", type=int, default=3)
    args = ap.parse_args()
    for hold in (args.hold, 2.0):
        answers, outcomes = await telegram(args.n, hold)
        print(f"Telegram press answered, DB locked {hold:g}s by another process: {summary(answers)} (target < 100 ms)")
        for o in outcomes:
            print(f"  vote: {o}")
    acks = await slack(args.n, args.hold)
    print(f"Slack button ack (HTTP mode), DB locked {args.hold:g}s: {summary(acks)} (Slack wants < 3000 ms)")


if __name__ == "__main__":
    asyncio.run(main())
