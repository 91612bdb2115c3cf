"""Operations: logging with secrets redacted, the watchdog, the daily summary, a clean SIGTERM
stop, the CLI's one-line errors, and exports."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time

from agent.config import load_settings
from chatops.cli import main
from chatops.logs import setup_logging
from tests.spine_helpers import make_bot

# Shaped like real credentials (so the redactor's patterns are exercised), built so no literal looks like one.
TOKEN = "123456789:" + "AAH" + "s3cret" * 6
OPENAI_KEY = "sk-" + "abcdefghijklmnopqrstuvwxyz"
STRANGER = "xoxb-" + "1234567890-abcdefghij"


def test_logs_are_one_line_and_never_show_a_secret():
    s = load_settings(env_file=None, telegram_bot_token=TOKEN, openai_api_key=OPENAI_KEY,
                      log_format="json")
    out = io.StringIO()
    setup_logging(s, stream=out)
    log = logging.getLogger("test")
    log.info("calling https://api.telegram.org/bot%s/getUpdates", TOKEN)
    log.warning("key %s and a stranger " + STRANGER, OPENAI_KEY)
    try:
        raise RuntimeError(f"boom with {TOKEN}\nsecond line")
    except RuntimeError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    records = [json.loads(x) for x in lines]
    assert [r["level"] for r in records] == ["INFO", "WARNING", "ERROR"]
    text = out.getvalue()
    assert TOKEN not in text and OPENAI_KEY[:12] not in text and STRANGER[:12] not in text
    assert "***" in records[0]["msg"]
    logging.getLogger().handlers.clear()


async def test_watchdog_notices_ticks_stopping_and_says_so(tmp_path):
    out = io.StringIO()
    b = make_bot(tmp_path, out=out, loop_interval_sec=60)
    await b.start()
    try:
        await b.tick()
        assert b.watchdog_problem() is None
        b.exchange.clock.advance(181)
        problem = b.watchdog_problem()
        assert problem and "no tick for 181s" in problem
        status = await b.core.status("alice", "console")
        assert "Last tick #1 181s ago" in status.text and "Watchdog" in status.text
    finally:
        await b.stop()


async def test_repeated_exchange_failures_are_announced(tmp_path):
    out = io.StringIO()
    b = make_bot(tmp_path, out=out)
    await b.start()
    try:
        b.exchange.paper.faults.fail_next("private/get_account_summary", 11050, count=3)
        for _ in range(3):
            assert (await b.tick()) == (None, None)
        assert "[watchdog] The exchange failed 3 ticks in a row" in out.getvalue()
        assert "exchange failed 3 ticks" in b.watchdog_problem()
    finally:
        await b.stop()


async def test_daily_summary_reaches_the_channels(tmp_path):
    out = io.StringIO()
    b = make_bot(tmp_path, out=out)
    await b.start()
    try:
        await b.tick()
        await b.daily_summary()
        assert "[daily_summary] Daily summary: 1 ticks, 1 proposals (1 pending)" in out.getvalue()
    finally:
        await b.stop()


def test_sigterm_stops_cleanly(tmp_path):
    env = {**os.environ, "DATABASE_PATH": str(tmp_path / "db.sqlite"), "PAPER_STATE_PATH": str(tmp_path / "p.json"),
           "PYTHONUNBUFFERED": "1", "CONSOLE_ENABLED": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "chatops", "run", "--interval", "600"], env=env, cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import sqlite3

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            with sqlite3.connect(tmp_path / "db.sqlite") as con:
                if con.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] >= 1:
                    break
        except sqlite3.Error:
            pass
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "received SIGTERM" in err
    with sqlite3.connect(tmp_path / "db.sqlite") as con:
        kinds = [r[0] for r in con.execute("SELECT kind FROM events ORDER BY id")]
    assert kinds[:2] == ["leader_elected", "bot_started"] and kinds[-1] == "bot_stopped"  # the lease first


def test_bad_config_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "MAX_MARGIN_USED_PCT": "lots", "DATABASE_PATH": str(tmp_path / "x.db")}
    done = subprocess.run([sys.executable, "-m", "chatops", "status"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "MAX_MARGIN_USED_PCT='lots'" in done.stderr
    assert "Traceback" not in done.stderr


def test_manual_mode_with_an_empty_allowlist_refuses_to_start(tmp_path):
    env = {**os.environ, "DATABASE_PATH": str(tmp_path / "x.db"), "PAPER_STATE_PATH": str(tmp_path / "p.json"),
           "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": "-100", "TELEGRAM_API_BASE_URL": "http://127.0.0.1:9/bot"}
    done = subprocess.run([sys.executable, "-m", "chatops", "run", "--ticks", "1"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert "TELEGRAM_ALLOWED_USER_IDS is empty" in done.stderr and TOKEN not in done.stderr


def test_audit_lists_and_exports(tmp_path, monkeypatch, capsys):
    async def scenario():
        b = make_bot(tmp_path)
        await b.start()
        for _ in range(3):
            await b.tick()
            b.exchange.clock.advance(60)
        await b.stop()

    asyncio.run(scenario())
    monkeypatch.setenv("DATABASE_PATH", str(tmp_path / "chatops.db"))
    assert main(["audit", "decisions", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and rows[0]["final_action"] == "OPEN_COVERED_CALL"
    assert main(["audit", "proposals"]) == 0
    assert "OPEN_COVERED_CALL" in capsys.readouterr().out
    assert main(["audit", "show", "1"]) == 0
    assert "What happened next" in capsys.readouterr().out
    out = tmp_path / "d.csv"
    assert main(["audit", "export", "decisions", "--format", "csv", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 4
    assert main(["audit", "export", "events", "--format", "jsonl"]) == 0
    events = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert events[0]["kind"] == "bot_started" and all("hash" in e for e in events)
    assert main(["audit", "decisions", "--since", "not-a-time"]) == 2
    assert "bad time" in capsys.readouterr().err
