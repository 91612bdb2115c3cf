"""Secrets never reach the database, an export, a chat or a log line (issue 11): one redactor at
the store's write boundary, in the delivery layer, in exports and in logging (before formatting)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agent.clock import SimClock
from agent.config import load_settings
from agent.deribit.client import DeribitClient
from agent.deribit.paper import PaperExchange
from agent.deribit.paper_server import transport
from agent.exchange import open_exchange
from chatops.adapters.telegram import TelegramChannel, TelegramOptions
from chatops.app import Bot
from chatops.logs import setup_logging
from chatops.redact import REDACTED, RedactingFilter, Redactor
from tests.fakes.openai_server import Reply, fake_openai_server
from tests.fakes.telegram_server import fake_telegram_server

ROOT = Path(__file__).resolve().parents[1]
# Built at run time, and shaped like no known token: only the configured value can catch it. The
# quote and the backslash would survive a redaction done after JSON escaping.
KEY = "proj" + '"Q7' + "\\" + "x9ZL" + "4mK2vB8nW" * 2
BOT_TOKEN = "123456:" + "TEST"  # what the fake Bot API accepts


def test_the_redactor_knows_values_and_shapes():
    r = Redactor([KEY, "pw"])  # too short to redact ordinary text: ignored
    samples = {
        f"key={KEY} end": f"key={REDACTED} end",
        json.dumps({"k": KEY}): json.dumps({"k": REDACTED}),
        "Authorization: Bearer abcdefgh.ijkl-mnop": f"Authorization: Bearer {REDACTED}",
        "xoxb-" + "1234567890-abcdef": REDACTED,
        "xapp-" + "1-A0-123456789-abc": REDACTED,
        "sk-" + "a" * 24: REDACTED,
        "https://api.telegram.org/bot" + "123456789:" + "A" * 35 + "/getMe": f"https://api.telegram.org/bot{REDACTED}/getMe",
        "postgresql://app:" + "hunter2hunter" + "@db:5432/x": f"postgresql://app:{REDACTED}@db:5432/x",
        "public/auth?client_id=x&client_secret=" + "abc123XYZ": f"public/auth?client_id=x&client_secret={REDACTED}",
        "a pw is fine": "a pw is fine",
    }
    for raw, want in samples.items():
        assert r(raw) == want, raw


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_log_records_are_redacted_before_formatting(fmt):
    secret = 'sec"ret\\with\nnewline-0123456789'
    s = load_settings(env_file=None, openai_api_key=secret, log_format=fmt)
    out = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(s, stream=out)
        logging.getLogger("t").error("the server said %r and %s", {"auth": secret}, secret)
        try:
            raise RuntimeError(f"boom {secret}")
        except RuntimeError:
            logging.getLogger("t").exception("failed")
    finally:
        root.handlers[:], root.level = saved
    text = out.getvalue()
    for part in secret.split("\n") + [json.dumps(secret)[1:-1], repr(secret)[1:-1]]:
        assert part not in text, part
    assert text.count("\n") == 2 and text.count(REDACTED) >= 3
    if fmt == "json":
        assert all(json.loads(line)["msg"] for line in text.splitlines())


def test_the_filter_redacts_args_whole():
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "token %s in %s", (KEY, {"k": KEY}), None)
    assert RedactingFilter(Redactor([KEY])).filter(record)
    assert record.args is None and KEY not in record.msg and record.getMessage().count(REDACTED) == 2


async def test_deribit_auth_goes_as_a_post_body_never_a_query_string(tmp_path):
    paper = PaperExchange(clock=SimClock(), state_path=tmp_path / "paper.json")
    inner = transport(paper)
    seen: list[httpx.Request] = []

    async def record(request: httpx.Request):
        seen.append(request)
        return await inner.handle_async_request(request)

    secret = "dsec-" + "0123456789abcdef"
    async with DeribitClient("http://paper", "cid", secret, http_method="GET", max_retries=0,
                             transport=httpx.MockTransport(record)) as c:
        await c.get_account_summary("BTC")
    auth = [r for r in seen if r.url.path.endswith("public/auth")]
    assert auth and all(r.method == "POST" for r in auth)
    assert all(secret not in str(r.url) for r in seen)
    assert secret in auth[0].content.decode()  # it is sent, in the body
    assert any(r.method == "GET" for r in seen if not r.url.path.endswith("public/auth"))  # the rest stays GET


async def test_an_llm_server_echoing_the_key_leaves_it_nowhere(tmp_path):
    fast = TelegramOptions(poll_timeout=2, min_interval=0.0, group_per_minute=10_000, send_attempts=3,
                           backoff_base=0.01, backoff_max=0.05, outbox_interval=0.3, stop_timeout=2)
    log_stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    echo = [Reply(status=401, echo_authorization=True) for _ in range(8)]
    async with fake_openai_server(*echo) as llm, fake_telegram_server() as tg:
        settings = load_settings(
            env_file=None, database_path=str(tmp_path / "chatops.db"), paper_state_path=str(tmp_path / "paper.json"),
            telegram_bot_token=BOT_TOKEN, telegram_chat_id="-1001", telegram_allowed_user_ids="42",
            telegram_api_base_url=tg.base_url, console_enabled=False, llm_enabled=True,
            openai_base_url=llm.base_url, openai_api_key=KEY, log_format="json")
        setup_logging(settings, stream=log_stream)
        bot = Bot(settings, exchange=open_exchange(settings, clock=SimClock()),
                  channels=[TelegramChannel(settings, options=fast)])
        await bot.start()
        try:
            _, decision = await bot.tick()
            assert decision.decision_source == "llm_fallback"
            asked = tg.push_message(42, "why no trade?", -1001, chat_type="private")
            reply = await tg.wait_for(lambda: next((m for m in tg.sent(asked.chat_id)
                                                    if m.reply_to_message_id == asked.message_id), None))
            assert "Incorrect API key provided" in reply.text  # the error itself is shown...
            await bot.core.notify("info", f"LLM said: {decision.final_action.reasoning}")
            await bot.channels[0].idle()
        finally:
            await bot.stop()
            root.handlers[:], root.level = saved
        assert any(h.get("authorization") == f"Bearer {KEY}" for h in llm.headers)  # it was really sent
    # ...but the key is in no stored byte, no chat message, no log line and no export.
    needles = [KEY, json.dumps(KEY)[1:-1], KEY[8:]]
    for f in tmp_path.glob("chatops.db*"):
        data = f.read_bytes()
        assert not any(n.encode() in data for n in needles), f.name
    chat = json.dumps([m.text for m in tg.sent()] + [c.params for c in tg.calls_to("answerCallbackQuery")], default=str)
    assert "Incorrect API key" in chat and not any(n in chat for n in needles)
    assert not any(n in log_stream.getvalue() for n in needles)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "DATABASE_PATH": str(tmp_path / "chatops.db"),
           "HOME": str(tmp_path)}
    for table in ("decisions", "llm_calls", "answers", "events"):
        done = subprocess.run([sys.executable, "-m", "chatops", "audit", "export", table, "--format", "jsonl"],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout and not any(n in done.stdout for n in needles), table
    calls = subprocess.run([sys.executable, "-m", "chatops", "audit", "export", "llm_calls", "--format", "jsonl"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60).stdout
    assert "Incorrect API key provided" in calls and REDACTED in calls


def test_the_literal_precheck_never_skips_a_pattern_that_would_match():
    """Each pattern runs only when its literal is in the text: the same result as running them all."""
    from hypothesis import given, settings as hsettings, strategies as st

    from chatops.redact import PATTERNS, Redactor, _keep_prefix

    def all_patterns(text: str) -> str:
        for p in PATTERNS:
            text = p.sub(_keep_prefix, text)
        return text

    pieces = st.sampled_from(["xoxb-", "XOXB-", "xapp-", "sk-", "SK-", "123456789:", "Bearer ", "bearer\t", "https://u:",
                              "@host", "client_secret=", "CLIENT_SECRET\": \"", "abcdefghijklmnopqrstuvwxyz0123456789_-",
                              "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", " ", "{", "\"", ":", "/", "é"])

    @hsettings(max_examples=400, deadline=None)
    @given(st.lists(pieces, max_size=12).map("".join))
    def check(text):
        assert Redactor()(text) == all_patterns(text)

    check()
