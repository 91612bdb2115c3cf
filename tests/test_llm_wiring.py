"""One LLM wiring for every entry point (`chatops tick`, the bot's ticks, ask, why, what-if) and one
daily token budget over all of them; against the fake OpenAI server over HTTP."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3

from agent.models import ActionType
from tests.fakes.openai_server import Reply, fake_openai_server, json_reply
from tests.spine_helpers import make_bot

PICK = {"action": "OPEN_COVERED_CALL", "candidate_id": "c1", "position_id": None, "reasoning": "best score"}


async def _cli(argv, monkeypatch, tmp_path, **env):
    from chatops.cli import main

    monkeypatch.chdir(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return await asyncio.to_thread(main, argv)  # main runs its own event loop; the fake serves on ours


async def test_chatops_tick_json_uses_the_llm_and_records_the_call(tmp_path, monkeypatch, capsys):
    async with fake_openai_server(json_reply(PICK)) as fake:
        rc = await _cli(["tick", "--json"], monkeypatch, tmp_path, LLM_ENABLED="true", OPENAI_BASE_URL=fake.base_url,
                        OPENAI_API_KEY="sk-test-cli-0123456789")
        assert rc == 0 and len(fake.requests) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["decision_source"] == "llm" and out["proposed_action"]["action"] == "OPEN_COVERED_CALL"
    (rec,) = out["llm_calls"]
    assert rec["valid"] is True and rec["tokens_in"] > 0 and rec["attempts"] == 1
    db = sqlite3.connect(tmp_path / "data" / "chatops.db")
    rows = db.execute("SELECT mode, valid, tokens_in FROM llm_calls").fetchall()
    assert rows == [("drive", 1, rec["tokens_in"])]  # counted against the one budget


async def test_chatops_tick_with_a_reasoning_model(tmp_path, monkeypatch, capsys):
    async with fake_openai_server(json_reply(PICK), reasoning_model=True) as fake:
        rc = await _cli(["tick", "--json"], monkeypatch, tmp_path, LLM_ENABLED="true", OPENAI_BASE_URL=fake.base_url,
                        LLM_MODEL_NAME="gpt-5-mini")
        assert rc == 0 and "max_tokens" not in fake.last
    out = json.loads(capsys.readouterr().out)
    assert out["decision_source"] == "llm" and out["llm_calls"][0]["reasoning_tokens"] == 192


async def test_chatops_tick_respects_a_spent_budget(tmp_path, monkeypatch, capsys):
    async with fake_openai_server(json_reply(PICK), json_reply(PICK)) as fake:
        env = dict(LLM_ENABLED="true", OPENAI_BASE_URL=fake.base_url, LLM_DAILY_TOKEN_BUDGET="10")
        assert await _cli(["tick", "--json"], monkeypatch, tmp_path, **env) == 0
        capsys.readouterr()
        assert await _cli(["tick", "--json"], monkeypatch, tmp_path, **env) == 0
        assert len(fake.requests) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["decision_source"] == "rule" and out["llm_calls"] == []
    assert "LLM unavailable (daily token budget spent)" in out["proposed_action"]["reasoning"]


async def test_one_budget_covers_questions_whatifs_why_and_ticks(tmp_path):
    out = io.StringIO()
    async with fake_openai_server() as fake:
        fake.responder = lambda body: Reply(content="An answer.")
        b = make_bot(tmp_path, out=out, llm_enabled=True, openai_base_url=fake.base_url, llm_daily_token_budget=1000)
        await b.start()
        try:
            answers = [await b.core.ask(f"question {i}: how is it going?", "alice", "console") for i in range(50)]
            asked = len(fake.requests)
            assert 1 <= asked < 50  # the context is several hundred tokens: the budget runs out early
            assert answers[0].text == "An answer."
            spent = [a for a in answers if "budget spent" in a.text]
            assert len(spent) == 50 - asked and "refills" in spent[-1].text
            used = b.store.llm_stats()["tokens"]
            assert used >= 1000 and used < 1000 + 3000  # at most one call past the line
            # What-if, why and the tick: no request either, and the chat was told once in all.
            wi = await b.core.ask("what if spot drops 10%?", "alice", "console")
            assert "budget spent" in wi.text
            why = await b.core.why(None, "alice", "console")
            assert "budget spent" in why.text or "No decision yet" in why.text
            _, d = await b.tick()
            assert d.decision_source == "rule" and "budget spent" in d.proposed_action.reasoning
            assert len(fake.requests) == asked
            assert out.getvalue().count("[llm_fallback] LLM daily token budget spent") == 1  # told once
            answers_rows = list(b.store.iter_rows("answers"))
            assert sum("budget spent" in a["text"] for a in answers_rows) >= len(spent)
        finally:
            await b.stop()


async def test_whatif_in_llm_mode_with_budget_spent_still_answers_by_the_rules(tmp_path):
    async with fake_openai_server(json_reply(PICK)) as fake:
        b = make_bot(tmp_path, llm_enabled=True, openai_base_url=fake.base_url, llm_daily_token_budget=10)
        await b.start()
        try:
            _, d = await b.tick()
            assert d.decision_source == "llm"
            reply = await b.core.whatif("equity=0", "alice", "console")
            assert "Rules: DO_NOTHING" in reply.text and "LLM: not asked (LLM daily token budget spent" in reply.text
            assert len(fake.requests) == 1
        finally:
            await b.stop()


async def test_fallback_alert_names_the_most_common_reason(tmp_path):
    out = io.StringIO()
    async with fake_openai_server() as fake:
        fake.reasoning_model = True
        fake.reasoning_tokens = 50_000  # a model that thinks past any limit: every answer is cut off
        fake.responder = lambda body: json_reply(PICK)
        b = make_bot(tmp_path, out=out, llm_enabled=True, openai_base_url=fake.base_url, llm_model_name="acme-thinker")
        await b.start()
        try:
            for _ in range(5):
                _, d = await b.tick()
                assert d.decision_source == "llm_fallback" and d.final_action.action == ActionType.DO_NOTHING
                b.exchange.clock.advance(300)
            first = json.loads(next(b.store.iter_rows("llm_calls"))["extra_json"])
            assert first["adaptations"] == ["max_tokens not supported by acme-thinker: sent max_completion_tokens "
                                            "(with room for reasoning) and no temperature"]
            text = out.getvalue()
            assert text.count("[llm_fallback]") == 1
            assert "Most common reason: answer cut off (finish_reason=length)" in text
        finally:
            await b.stop()


async def test_a_key_echoed_in_a_401_body_reaches_no_row_and_no_chat(tmp_path):
    import random
    import string

    from tests.fakes.openai_server import error_reply

    rnd = random.Random(12)
    key = "kq" + "-live-" + "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(24))
    echo = f"Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com."
    out = io.StringIO()
    async with fake_openai_server() as fake:
        fake.responder = lambda body: error_reply(401, echo)
        b = make_bot(tmp_path, out=out, llm_enabled=True, openai_base_url=fake.base_url, openai_api_key=key)
        await b.start()
        try:
            _, d = await b.tick()
            assert d.decision_source == "llm_fallback" and "HTTP 401" in d.final_action.reasoning
            reply = await b.core.ask("how is it going?", "alice", "console")
            assert "HTTP 401" in reply.text
            await b.core.drain()
            assert fake.headers[0]["authorization"] == f"Bearer {key}"  # it was really sent, and echoed
            for table in ("llm_calls", "decisions", "answers", "events"):
                for row in b.store.iter_rows(table):
                    assert key not in json.dumps(row, default=str), table
            assert "Incorrect API key provided: ***" in next(b.store.iter_rows("llm_calls"))["error"]
            assert key not in out.getvalue() and key not in reply.text
        finally:
            await b.stop()


async def test_chatops_tick_prints_no_key_an_error_echoes(tmp_path, monkeypatch, capsys):
    from tests.fakes.openai_server import error_reply

    key = "kq" + "-live-" + "Zx9" * 8
    async with fake_openai_server(error_reply(401, f"Incorrect API key provided: {key}")) as fake:
        rc = await _cli(["tick", "--json"], monkeypatch, tmp_path, LLM_ENABLED="true", OPENAI_BASE_URL=fake.base_url,
                        OPENAI_API_KEY=key)
        assert rc == 0
    printed = capsys.readouterr().out
    out = json.loads(printed)
    assert out["decision_source"] == "llm_fallback" and "HTTP 401" in out["proposed_action"]["reasoning"]
    assert key not in printed and "Incorrect API key provided: ***" in printed
