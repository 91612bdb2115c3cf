"""Models people run today: reasoning families start right, a server's 400 is adapted to once (and
remembered), and every mode of the fake OpenAI server ends in valid LLM decisions."""

from __future__ import annotations

import logging
import math

import pytest

from agent.llm import llm_chat, llm_decide, llm_whatif_overrides
from agent.llm.caps import PRICES, classify_rejection, is_reasoning_model, price
from agent.models import ActionType
from tests.fakes.openai_server import (
    REJECT_MAX_TOKENS_BODY, REJECT_TEMPERATURE_BODY, Reply, fake_openai_server, json_reply,
)
from tests.llm_helpers import OPEN_STATE, answer, assert_fallback, cfg

PICK = answer("OPEN_COVERED_CALL", "c2", reasoning="rich premium for the delta")


def adaptation_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agent.llm" and "remembered" in r.getMessage()]


@pytest.mark.parametrize("model,reasoning", [
    ("gpt-5-mini", True), ("gpt-5", True), ("gpt-5.1", True), ("gpt-5-nano-2025-08-07", True), ("o1", True),
    ("o3-mini", True), ("o4-mini", True), ("openai/gpt-5-mini", True), ("gpt-6", True),
    ("gpt-4.1-mini", False), ("gpt-4o", False), ("gpt-5-chat-latest", False), ("llama3.1:8b", False),
    ("qwen2.5-7b-instruct", False), ("omni-7b", False),
])
def test_reasoning_families(model, reasoning):
    assert is_reasoning_model(model) is reasoning


async def test_known_reasoning_model_starts_right_and_decides_in_one_request():
    async with fake_openai_server(json_reply(PICK), reasoning_model=True) as srv:
        out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv, llm_model_name="gpt-5-mini",
                                                                      llm_price_in_per_mtok=None,
                                                                      llm_price_out_per_mtok=None))
        (body,) = srv.requests
    assert out.action.decision_source == "llm" and out.action.action == ActionType.OPEN_COVERED_CALL
    assert "max_tokens" not in body and "temperature" not in body
    assert body["max_completion_tokens"] >= 300 + 4000 and body["reasoning_effort"] == "low"
    assert body["response_format"]["type"] == "json_schema"
    # A reasoning model thinks first: the schema asks for the action before the reasoning.
    assert list(body["response_format"]["json_schema"]["schema"]["properties"])[0] == "action"
    r = out.record
    assert r.attempts == 1 and r.adaptations == () and r.reasoning_tokens == 192 and r.cached_tokens is not None
    p_in, p_cached, p_out = PRICES["gpt-5-mini"]
    cached = r.cached_tokens or 0
    assert math.isclose(r.cost_usd, ((r.tokens_in - cached) * p_in + cached * p_cached + r.tokens_out * p_out) / 1e6,
                        rel_tol=1e-6)


async def test_reasoning_effort_setting_is_sent_and_sizes_the_token_limit():
    async with fake_openai_server(json_reply(PICK), reasoning_model=True) as srv:
        await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv, llm_model_name="o4-mini",
                                                                llm_reasoning_effort="MEDIUM"))
        body = srv.last
    assert body["reasoning_effort"] == "medium" and body["max_completion_tokens"] >= 12_000


async def test_unlisted_reasoning_model_adapts_once_and_remembers(caplog):
    """The server's own 400 (param max_tokens, code unsupported_parameter) teaches the client."""
    caplog.set_level(logging.INFO, logger="agent.llm")
    async with fake_openai_server(json_reply(PICK), json_reply(answer("DO_NOTHING")), reasoning_model=True) as srv:
        settings = cfg(srv, llm_model_name="acme-reasoner")
        first = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, settings)
        second = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, settings)
        bodies = srv.requests
    assert first.action.decision_source == "llm" and second.action.decision_source == "llm"
    assert len(bodies) == 3  # one refused request in all
    assert "max_tokens" in bodies[0] and "temperature" in bodies[0]
    for b in bodies[1:]:
        assert "max_tokens" not in b and "temperature" not in b and b["max_completion_tokens"] > 300
    assert first.record.attempts == 2 and first.record.adaptations == (
        "max_tokens not supported by acme-reasoner: sent max_completion_tokens (with room for reasoning) "
        "and no temperature",)
    assert second.record.attempts == 1 and second.record.adaptations == ()
    (line,) = adaptation_lines(caplog)  # one log line, saying what changed
    assert "acme-reasoner" in line and "max_completion_tokens" in line and "127.0.0.1" in line


@pytest.mark.parametrize("model", ["gpt-5-mini", "o3-mini"])
async def test_reasoning_model_that_rejects_response_format_too(model, caplog):
    caplog.set_level(logging.INFO, logger="agent.llm")
    prose = 'Thinking done. {"action": "OPEN_COVERED_CALL", "candidate_id": "c2", "position_id": null, "reasoning": "ok"}'
    async with fake_openai_server(Reply(content=prose), json_reply(answer("DO_NOTHING")), reasoning_model=True,
                                  reject_response_format=True) as srv:
        settings = cfg(srv, llm_model_name=model)
        first = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, settings)
        second = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, settings)
        assert len(srv.requests) == 3 and "response_format" not in srv.requests[2]
    assert first.action.decision_source == "llm" and first.action.symbol == OPEN_STATE.candidates[1].instrument_name
    assert first.record.adaptations == (f"response_format not supported by {model}: asked for plain-text JSON",)
    assert first.record.structured is False and second.record.attempts == 1
    assert len(adaptation_lines(caplog)) == 1


async def test_server_rejecting_response_format_only():
    async with fake_openai_server(json_reply(PICK), json_reply(PICK), reject_response_format=True) as srv:
        settings = cfg(srv, llm_model_name="gpt-4.1-mini")
        outs = [await llm_decide(OPEN_STATE, OPEN_STATE.candidates, settings) for _ in range(2)]
        assert len(srv.requests) == 3
        assert srv.requests[1]["temperature"] == 0 and srv.requests[1]["max_tokens"] == 300
    assert all(o.action.decision_source == "llm" for o in outs)
    assert [len(o.record.adaptations) for o in outs] == [1, 0]


async def test_temperature_refused_alone_is_dropped_once():
    refused = Reply(status=400, error_body=REJECT_TEMPERATURE_BODY)
    async with fake_openai_server(refused, json_reply(PICK)) as srv:
        out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv, llm_model_name="local-model"))
        assert srv.requests[0]["temperature"] == 0 and "temperature" not in srv.requests[1]
        assert srv.requests[1]["max_tokens"] == 300  # only what was refused changes
    assert out.action.decision_source == "llm"
    assert out.record.adaptations == ("temperature 0 not supported by local-model: sent no temperature",)


async def test_reasoning_effort_refused_is_dropped_once():
    async with fake_openai_server(json_reply(PICK), reasoning_model=True, reject_reasoning_effort=True) as srv:
        out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv, llm_model_name="gpt-5-mini"))
        assert len(srv.requests) == 2 and "reasoning_effort" not in srv.requests[1]
    assert out.action.decision_source == "llm" and len(out.record.adaptations) == 1


async def test_the_same_refusal_twice_is_not_retried_in_a_loop():
    refused = Reply(status=400, error_body=REJECT_TEMPERATURE_BODY)
    async with fake_openai_server(refused, Reply(status=400, error_body=REJECT_TEMPERATURE_BODY)) as srv:
        out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv))
        assert len(srv.requests) == 2
    assert_fallback(out.action, "HTTP 400", "temperature 0 not supported")
    assert out.record.reason and "after: temperature 0 not supported" in out.record.reason


async def test_reasoning_that_eats_the_token_limit_is_a_clear_fallback():
    async with fake_openai_server(json_reply(PICK), reasoning_model=True) as srv:
        srv.reasoning_tokens = 5000  # more than minimal effort leaves room for
        out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv, llm_model_name="gpt-5-nano",
                                                                      llm_reasoning_effort="minimal"))
    assert_fallback(out.action, "finish_reason=length", "tokens went to reasoning")


async def test_chat_and_whatif_work_with_a_reasoning_model():
    whatif = json_reply({"equity": 0, "spot": None, "spot_pct": None, "iv": None, "dte_shift": None,
                         "margin_used_pct": None})
    async with fake_openai_server(Reply(content="Delta was 0.55."), whatif, reasoning_model=True) as srv:
        settings = cfg(srv, llm_model_name="acme-thinker")
        chat = await llm_chat(settings, "You explain.", "Why?", max_tokens=200)
        overrides, record = await llm_whatif_overrides("what if I had no BTC?", settings)
        assert len(srv.requests) == 3  # one adaptation for both calls
    assert chat.text == "Delta was 0.55." and chat.record.reasoning_tokens == 192
    assert overrides == {"equity": 0.0} and record.valid and record.attempts == 1


class _Err:
    def __init__(self, status, body, param=None, code=None):
        self.status_code, self.body, self.param, self.code = status, body, param, code
        self.message = f"Error code: {status} - {body}"


@pytest.mark.parametrize("err,kind", [
    (_Err(400, REJECT_MAX_TOKENS_BODY["error"], "max_tokens", "unsupported_parameter"), "max_tokens"),
    (_Err(400, REJECT_TEMPERATURE_BODY["error"], "temperature", "unsupported_value"), "temperature"),
    (_Err(400, {"message": "max_tokens is not supported, use max_completion_tokens"}), "max_tokens"),
    (_Err(400, {"message": "'response_format.type' : value is not one of the allowed values"}), "response_format"),
    (_Err(422, {"message": "json_schema response format is unsupported"}), "response_format"),
    # By param and code first: a too-large max_tokens is not "unsupported".
    (_Err(400, {"message": "max_tokens is too large: 99999"}, "max_tokens", "integer_above_max_value"), None),
    (_Err(400, {"message": "max_tokens not supported here"}, "messages", "context_length_exceeded"), None),
    (_Err(400, {"message": "context length exceeded"}), None),
    (_Err(500, {"message": "max_tokens unsupported"}), None),
])
def test_classify_rejection(err, kind):
    assert classify_rejection(err) == kind


def test_price_table_and_overrides():
    assert price(cfg(llm_price_in_per_mtok=None, llm_price_out_per_mtok=None), "gpt-5-mini-2025-08-07") == PRICES["gpt-5-mini"]
    assert price(cfg(llm_price_in_per_mtok=None, llm_price_out_per_mtok=None), "gpt-4.1") == PRICES["gpt-4.1"]
    # Unlisted served model: the configured one's row; neither listed: free (a local server).
    assert price(cfg(llm_model_name="gpt-4o-mini", llm_price_in_per_mtok=None, llm_price_out_per_mtok=None),
                 "some-proxy-name") == PRICES["gpt-4o-mini"]
    assert price(cfg(llm_model_name="llama3", llm_price_in_per_mtok=None, llm_price_out_per_mtok=None),
                 "llama3") == (0.0, 0.0, 0.0)
    assert price(cfg(llm_price_in_per_mtok=3.0, llm_price_out_per_mtok=9.0), "gpt-5-mini") == (3.0, 3.0, 9.0)


async def test_unlisted_name_on_a_server_refusing_both_takes_two_adaptations_then_none():
    async with fake_openai_server(json_reply(PICK), json_reply(PICK), reasoning_model=True,
                                  reject_response_format=True) as srv:
        settings = cfg(srv, llm_model_name="acme-reasoner")
        first = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, settings)
        second = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, settings)
        assert len(srv.requests) == 4
    assert first.action.decision_source == "llm" and second.action.decision_source == "llm"
    assert [a.split(":")[0] for a in first.record.adaptations] == ["max_tokens not supported by acme-reasoner",
                                                                   "response_format not supported by acme-reasoner"]
    assert second.record.attempts == 1 and second.record.adaptations == ()
