"""Dashboard figures: page and API latency, and how soon a change made in another process reaches an
open page.

    .venv/bin/python bench/web.py [-n 50]

Set-up, all on loopback: a real bot (chatops.app.Bot on the in-process paper exchange) serves the
dashboard with uvicorn in its own event loop, as `chatops run` does, with one pending proposal. The
client is another thread with its own httpx.Client (a browser would be another process), logged in
as an approver.

What is measured:
  - GET /, GET /api/v1/overview, GET /proposals/<id>: request sent -> whole response read;
  - change -> page: another connection to the same SQLite file (as `chatops pause` in another shell)
    pulls the kill switch on and off; the time from its commit to the `event: change` line arriving
    on an open /api/v1/stream (what the page's live refresh waits for). Bounded by the stream's
    0.5 s poll of the newest event id.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from agent.clock import SimClock  # noqa: E402
from agent.config import load_settings  # noqa: E402
from agent.exchange import open_exchange  # noqa: E402
from chatops.adapters.console import ConsoleChannel  # noqa: E402
from chatops.app import Bot  # noqa: E402
from chatops.approvals import ApprovalService  # noqa: E402
from chatops.store import Store  # noqa: E402
from chatops.web.server import WebServer, bind  # noqa: E402
from chatops.web.users import UserStore  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def line(name: str, xs: list[float]) -> str:
    return f"{name:<34} p50 {pct(xs, 50) * 1000:7.1f} ms   p95 {pct(xs, 95) * 1000:7.1f} ms   (n={len(xs)})"


def client_work(url: str, pid: int, n: int, db: str, settings) -> list[str]:
    out = []
    with httpx.Client(base_url=url, timeout=10) as c:
        form = c.get("/login").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
        r = c.post("/login", data={"username": "alice", "password": "alice-password", "csrf": csrf})
        assert r.status_code == 303, r.text
        for path in ("/", "/api/v1/overview", f"/proposals/{pid}"):
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                r = c.get(path)
                r.read()
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200
            out.append(line(f"GET {path}", times))

    # change -> page, over an open stream
    arrivals: list[float] = []
    got = threading.Condition()
    stop = threading.Event()

    def listen() -> None:
        with httpx.Client(base_url=url, timeout=30, cookies=c.cookies) as s:
            with s.stream("GET", "/api/v1/stream") as r:
                for ln in r.iter_lines():
                    if ln.startswith("data: "):
                        with got:
                            arrivals.append(time.perf_counter())
                            got.notify_all()
                    if stop.is_set():
                        return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    with got:
        got.wait_for(lambda: arrivals, timeout=10)  # the first event: the current mark
    other = Store(db)  # another connection, as another process would have
    svc = ApprovalService(other, settings)
    lat = []
    for i in range(n):
        before = len(arrivals)
        t0 = time.perf_counter()
        svc.set_paused(i % 2 == 0, "bench", "cli", "bench")
        with got:
            got.wait_for(lambda: len(arrivals) > before, timeout=10)
        lat.append(arrivals[-1] - t0)
        time.sleep(0.05 + (i % 7) * 0.07)  # land at different points of the stream's poll
    stop.set()
    other.close()
    out.append(line("change in another process -> page", lat))
    return out


async def main(n: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        users = Path(tmp) / "users.json"
        UserStore(users).set_password("alice", "alice-password")
        settings = load_settings(env_file=None, database_path=f"{tmp}/db.sqlite", paper_state_path=f"{tmp}/paper.json",
                                 console_allowed_users="alice,bench", web_users_file=str(users),
                                 web_allowed_users="alice")
        bot = Bot(settings, exchange=open_exchange(settings, clock=SimClock()),
                  channels=[ConsoleChannel(stdout=io.StringIO(), user="alice", read_input=False)])
        sock = bind("127.0.0.1", 0)
        bot.web = WebServer.for_bot(bot, sock=sock, announce=lambda _: None)
        await bot.start()
        try:
            await bot.tick()
            pid = bot.store.latest_proposal().id
            host, port = sock.getsockname()[:2]
            lines = await asyncio.to_thread(client_work, f"http://{host}:{port}", pid, n, settings.database_path,
                                            settings)
        finally:
            await bot.stop()
    print("dashboard served by the bot's own loop, client in another thread, loopback")
    print("\n".join(lines))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=50)
    asyncio.run(main(ap.parse_args().n))
