"""The LLM driving the bot: its choice flows through the same risk engine and proposals; failures
fall back to DO_NOTHING visibly; the fallback rate and the daily token budget are watched."""

from __future__ import annotations

import io

from agent.models import ActionType
from tests.fakes.openai_server import Reply, fake_openai_server, json_reply
from tests.spine_helpers import make_bot


def pick(cid: str, reasoning: str = "best yield for the risk"):
    return json_reply({"action": "OPEN_COVERED_CALL", "candidate_id": cid, "position_id": None, "reasoning": reasoning})


async def test_llm_choice_becomes_a_proposal_through_the_same_risk_engine(tmp_path):
    async with fake_openai_server(pick("c2")) as fake:
        b = make_bot(tmp_path, llm_enabled=True, openai_base_url=fake.base_url, openai_api_key="sk-test")
        await b.start()
        try:
            _, d = await b.tick()
            assert d.decision_source == "llm" and d.final_action.action == ActionType.OPEN_COVERED_CALL
            assert d.risk_check.allowed
            (p,) = b.store.pending_proposals()
            assert p.symbol == d.state["cand"][1]["name"]  # the second candidate, as the LLM chose
            assert p.size == 0.1
            (call,) = b.store.iter_rows("llm_calls")
            assert call["mode"] == "drive" and call["valid"] == 1 and call["decision_id"] == 1 and call["tokens_in"] > 0
        finally:
            await b.stop()


async def test_fallbacks_are_visible_and_alert_past_the_threshold(tmp_path):
    out = io.StringIO()
    garbage = [Reply(content="sell everything!!!") for _ in range(6)]
    async with fake_openai_server(*garbage) as fake:
        b = make_bot(tmp_path, out=out, llm_enabled=True, openai_base_url=fake.base_url, openai_api_key="sk-test")
        await b.start()
        try:
            for _ in range(6):
                _, d = await b.tick()
                assert d.final_action.action == ActionType.DO_NOTHING
                assert d.decision_source == "llm_fallback" and "LLM fallback" in d.final_action.reasoning
                b.exchange.clock.advance(300)
            assert b.store.pending_proposals() == []
            assert out.getvalue().count("[llm_fallback]") == 1  # said once, not every tick
            status = await b.core.status("alice", "console")
            assert "6 fallbacks (100%)" in status.text
        finally:
            await b.stop()


async def test_daily_token_budget_hands_back_to_the_rules(tmp_path):
    out = io.StringIO()
    async with fake_openai_server(pick("c1")) as fake:
        b = make_bot(tmp_path, out=out, llm_enabled=True, openai_base_url=fake.base_url, openai_api_key="sk-test",
                     llm_daily_token_budget=50)
        await b.start()
        try:
            _, d1 = await b.tick()
            assert d1.decision_source == "llm"
            b.exchange.clock.advance(60)
            _, d2 = await b.tick()
            assert len(fake.requests) == 1  # no second call: the budget is spent
            assert d2.decision_source == "rule" and "LLM unavailable" in d2.proposed_action.reasoning
            assert "token budget spent" in out.getvalue()
        finally:
            await b.stop()
