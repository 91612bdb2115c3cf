"""Hostile answers cannot hurt the bot: bounded size, bounded nesting, one linear scan; each is an
llm_fallback with its reason and an llm_calls row (the fake OpenAI server over HTTP, a real tick)."""

from __future__ import annotations

import json

import pytest

from agent.llm import extract_json, llm_decide
from agent.llm.parse import MAX_ANSWER_CHARS, MAX_DEPTH
from agent.models import ActionType
from tests.fakes.openai_server import Reply, fake_openai_server
from tests.llm_helpers import OPEN_STATE, answer, assert_fallback, cfg
from tests.spine_helpers import make_bot

VALID = json.dumps(answer("OPEN_COVERED_CALL", "c1"))

HOSTILE = [
    ("100k [", "[" * 100_000, "too long"),
    ("20k {", "{" * 20_000, "too long"),
    ("15k [ within the size limit", "[" * 15_000, "nested deeper"),
    ("15k { within the size limit", "{" * 15_000, "nested deeper"),
    ("deep inside an object", '{"action": ' + "[" * 40 + "]" * 40 + "}", "nested deeper"),
    ("unclosed strings", '{"a": "{"b": "' * 1000, "no JSON object"),
    ("braces and quotes", '{"x": "}' * 1500 + '{' * 3000, "no JSON object"),
]


@pytest.mark.parametrize("text,words", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_text_is_a_value_error_with_its_reason(text, words):
    with pytest.raises(ValueError) as info:
        extract_json(text)
    assert words in str(info.value)


def test_limits():
    assert MAX_ANSWER_CHARS >= 4 * len(VALID) and MAX_DEPTH >= 3
    # Just under the size limit, prose first: still found.
    prose = "x" * (MAX_ANSWER_CHARS - len(VALID) - 1) + " " + VALID
    assert extract_json(prose)["candidate_id"] == "c1"
    # Nesting noise, then the answer: the scan goes on past it.
    assert extract_json("{" * 5_000 + " " + VALID)["action"] == "OPEN_COVERED_CALL"
    assert extract_json("[" * 5_000 + " " + VALID)["action"] == "OPEN_COVERED_CALL"
    assert extract_json('{"a": ' + "[" * 10 + "]" * 10 + "}") == {"a": [[[[[[[[[[]]]]]]]]]]}
    # An unclosed brace before the answer.
    assert extract_json("{ I pick " + VALID)["candidate_id"] == "c1"


@pytest.mark.parametrize("text,words", [h[1:] for h in HOSTILE[:4]], ids=[h[0] for h in HOSTILE[:4]])
async def test_hostile_answer_is_a_fallback_with_a_record(text, words):
    async with fake_openai_server(Reply(content=text)) as srv:
        out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv))
    assert_fallback(out.action, "bad JSON", words)
    assert out.record.valid is False and words in (out.record.error or "")
    assert len(out.record.raw_response) < 5_000  # the record keeps a bounded part of the answer


@pytest.mark.parametrize("text,words", [h[1:] for h in HOSTILE[:2]], ids=[h[0] for h in HOSTILE[:2]])
async def test_hostile_answer_in_a_tick_loses_nothing(tmp_path, text, words):
    async with fake_openai_server(Reply(content=text)) as fake:
        b = make_bot(tmp_path, llm_enabled=True, openai_base_url=fake.base_url, openai_api_key="sk-test")
        await b.start()
        try:
            decision_id, d = await b.tick()
            assert decision_id is not None  # the tick is not lost
            assert d.decision_source == "llm_fallback" and d.final_action.action == ActionType.DO_NOTHING
            assert words in d.final_action.reasoning
            (call,) = b.store.iter_rows("llm_calls")
            assert call["valid"] == 0 and words in call["error"] and call["decision_id"] == decision_id
        finally:
            await b.stop()


async def test_even_a_bug_in_the_brain_is_a_recorded_fallback(tmp_path, monkeypatch):
    import agent.llm.brain as brain

    def broken(*a, **k):
        raise KeyError("boom")

    monkeypatch.setattr(brain, "build_prompt", broken)
    async with fake_openai_server() as fake:
        b = make_bot(tmp_path, llm_enabled=True, openai_base_url=fake.base_url)
        await b.start()
        try:
            decision_id, d = await b.tick()
            assert decision_id is not None and d.decision_source == "llm_fallback"
            assert "unexpected error: KeyError" in d.final_action.reasoning
            (call,) = b.store.iter_rows("llm_calls")
            assert call["valid"] == 0 and "KeyError" in call["error"] and fake.requests == []
        finally:
            await b.stop()
