"""A bot SIGKILLed between sending an order and recording it, restarted, finds the order by its
label and sends nothing twice. Real processes: the paper exchange served over HTTP, and the bot
run twice as `python -m chatops run`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

from agent.deribit.client import DeribitClient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if needle in line:
            return
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"{needle!r} not seen")


async def _orders(url: str, label: str):
    async with DeribitClient(url, "probe", "probe") as c:
        return await c.get_order_state_by_label("BTC", label)


def test_sigkill_after_send_then_restart_sends_nothing_twice(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DATABASE_PATH": str(tmp_path / "chatops.db"), "PAPER_EXCHANGE_URL": url,
           "APPROVAL_MODE": "auto", "CONSOLE_ENABLED": "false", "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
           # The sell starts at the mid and reaches the bid in two reprices: seconds here, not minutes.
           "ORDER_REPRICE_SEC": "3", "ORDER_TIMEOUT_SEC": "14", "WEB_PORT": "0"}
    paper = subprocess.Popen([sys.executable, "-m", "chatops", "paper-exchange", "--port", str(port),
                              "--state", str(tmp_path / "paper.json")],
                             env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_line(paper, "listening")
        crash_env = {**env, "CHATOPS_TEST_CRASH_POINT": "after_send"}
        first = subprocess.run([sys.executable, "-m", "chatops", "run", "--ticks", "1", "--interval", "5"],
                               env=crash_env, cwd=tmp_path, capture_output=True, text=True, timeout=90,
                               stdin=subprocess.DEVNULL)
        assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]

        con = sqlite3.connect(tmp_path / "chatops.db")
        (status, label), = con.execute("SELECT status, label FROM proposals").fetchall()
        assert status == "executing"  # sent, never recorded
        assert con.execute("SELECT COUNT(*) FROM executions").fetchone()[0] == 0
        con.close()
        sent = asyncio.run(_orders(url, label))
        assert len(sent) == 1

        second = subprocess.run([sys.executable, "-m", "chatops", "run", "--ticks", "1", "--interval", "5"],
                                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90,
                                stdin=subprocess.DEVNULL)
        assert second.returncode == 0, second.stderr[-2000:]
        assert "reconciled proposal #1: working" in second.stderr  # found by label, then followed
        assert "proposal #1 executed" in second.stderr

        con = sqlite3.connect(tmp_path / "chatops.db")
        assert con.execute("SELECT status FROM proposals WHERE id=1").fetchone()[0] == "executed"
        reused = [r[0] for r in con.execute("SELECT reused FROM orders WHERE proposal_id=1")]
        assert reused == [1]
        con.close()
        after = asyncio.run(_orders(url, label))
        assert [o.order_id for o in after] == [o.order_id for o in sent]  # nothing sent twice
    finally:
        paper.terminate()
        paper.wait(timeout=10)
