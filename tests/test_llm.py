"""The LLM brain against a fake OpenAI-compatible server, over a real socket with the real client."""

from __future__ import annotations

import json
import socket
import time

import openai
import pytest

from agent.llm import (
    build_prompt, choose_action_with_llm, decision_schema, estimate_tokens, llm_brain, llm_decide, messages_text,
    validate_llm_choice,
)
from agent.models import ActionType
from tests.fakes.openai_server import Reply, error_reply, fake_openai_server, json_reply
from tests.llm_helpers import OPEN_STATE, SHORT_STATE, answer, assert_fallback, cand, cands, cfg, mkstate, pos


# Valid decisions -----------------------------------------------------------------------------


async def test_open_maps_candidate_id_to_symbol_and_configured_size():
    st = OPEN_STATE
    async with fake_openai_server(json_reply(answer("OPEN_COVERED_CALL", "c3", reasoning="Good yield, delta near target."))) as srv:
        out = await llm_decide(st, st.candidates, cfg(srv))
    a = out.action
    c3 = st.candidates[2]
    assert a.action == ActionType.OPEN_COVERED_CALL and a.decision_source == "llm"
    assert a.symbol == c3.instrument_name and a.size == 0.2 and a.roll_from is None
    assert a.ref_sell_price == c3.bid and a.ref_buy_price is None
    assert a.reasoning.startswith("Good yield, delta near target.")
    assert "strike 103,000" in a.reasoning and "DTE" in a.reasoning and "delta 0.27" in a.reasoning
    assert out.record.valid and out.record.error is None


async def test_size_is_rounded_down_to_the_instrument_minimum():
    st = mkstate([cand(1, mta=0.5)])
    async with fake_openai_server(json_reply(answer("OPEN_COVERED_CALL", "c1"))) as srv:
        out = await llm_decide(st, st.candidates, cfg(srv, default_order_size=1.2))
    assert out.action.size == 1.0


async def test_close_maps_position_id_and_uses_ask():
    st = SHORT_STATE
    async with fake_openai_server(json_reply(answer("CLOSE_COVERED_CALL", pid="p1", reasoning="Take it off."))) as srv:
        out = await llm_decide(st, st.candidates, cfg(srv))
    a = out.action
    assert a.action == ActionType.CLOSE_COVERED_CALL and a.decision_source == "llm"
    assert a.symbol == "BTC-1NOV26-98000-C" and a.size == 0.2 and a.ref_buy_price == 0.0125
    assert a.ref_sell_price is None and a.reasoning.startswith("Take it off.")


async def test_close_without_ask_uses_mark_and_is_capped_at_the_short():
    st = mkstate(cands(), [pos(1, ask=None, size=-0.1)])
    async with fake_openai_server(json_reply(answer("CLOSE_COVERED_CALL", pid="p1"))) as srv:
        out = await llm_decide(st, st.candidates, cfg(srv, default_order_size=0.5))
    assert out.action.ref_buy_price == 0.012 and out.action.size == 0.1


async def test_roll_maps_both_ids():
    st = SHORT_STATE
    async with fake_openai_server(json_reply(answer("ROLL_COVERED_CALL", "c4", "p1", reasoning="Delta 0.55: roll up and out."))) as srv:
        out = await llm_decide(st, st.candidates, cfg(srv))
    a = out.action
    assert a.action == ActionType.ROLL_COVERED_CALL and a.decision_source == "llm"
    assert a.symbol == st.candidates[3].instrument_name and a.roll_from == "BTC-1NOV26-98000-C"
    assert a.size == 0.2 and a.ref_sell_price == st.candidates[3].bid and a.ref_buy_price == 0.0125
    assert a.reasoning.startswith("Delta 0.55: roll up and out.") and "strike 98,000" in a.reasoning


async def test_do_nothing_is_a_valid_llm_decision():
    async with fake_openai_server(json_reply(answer("DO_NOTHING", reasoning="Yields are thin today."))) as srv:
        out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv))
    assert out.action.action == ActionType.DO_NOTHING and out.action.decision_source == "llm"
    assert out.action.reasoning == "Yields are thin today." and out.record.valid


async def test_choose_action_and_tick_brain_shapes():
    async with fake_openai_server(json_reply(answer("OPEN_COVERED_CALL", "c1")),
                                  json_reply(answer("OPEN_COVERED_CALL", "c2"))) as srv:
        a = await choose_action_with_llm(OPEN_STATE, OPEN_STATE.candidates, cfg(srv))
        b, rec = await llm_brain(OPEN_STATE, cfg(srv))
    assert a.symbol == OPEN_STATE.candidates[0].instrument_name
    assert b.symbol == OPEN_STATE.candidates[1].instrument_name
    assert rec["valid"] is True and rec["tokens_in"] > 0 and json.dumps(rec)  # JSON-able for the store


# The request ---------------------------------------------------------------------------------


async def test_request_has_strict_schema_temperature_zero_and_model():
    async with fake_openai_server(json_reply(answer("DO_NOTHING"))) as srv:
        await llm_decide(SHORT_STATE, SHORT_STATE.candidates, cfg(srv, llm_model_name="my-model"))
        body, headers = srv.requests[0], srv.headers[0]
    assert body["model"] == "my-model" and body["temperature"] == 0 and body.get("stream") in (None, False)
    rf = body["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    schema = rf["json_schema"]["schema"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"action", "candidate_id", "position_id", "reasoning"}
    assert schema["properties"]["action"]["enum"] == [t.value for t in ActionType]
    assert schema["properties"]["candidate_id"]["enum"] == [f"c{i}" for i in range(1, 9)] + [None]
    assert schema["properties"]["position_id"]["enum"] == ["p1", None]  # the put is no short call
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert headers["authorization"] == "Bearer not-needed"


async def test_api_key_is_sent_when_configured():
    async with fake_openai_server(json_reply(answer("DO_NOTHING"))) as srv:
        await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv, openai_api_key="sk-test-123"))
        assert srv.headers[0]["authorization"] == "Bearer sk-test-123"


async def test_prompt_carries_state_candidates_positions_and_previous():
    st = mkstate(cands(12), [pos(1)], previous="OPEN BTC-X: approved, filled at 0.0061")
    async with fake_openai_server(json_reply(answer("DO_NOTHING"))) as srv:
        await llm_decide(st, st.candidates, cfg(srv))
        user = srv.requests[0]["messages"][1]["content"]
        system = srv.requests[0]["messages"][0]["content"]
    assert "index 96,000" in user and "equity 1.0000 BTC" in user and "margin used 10.0%" in user
    assert "8 best by score of 12" in user and "812 options" in user
    assert "c8 " in user and "c9 " not in user  # at most 8 candidates
    assert "p1 BTC-1NOV26-98000-C -0.2" in user
    assert "Previous decision: OPEN BTC-X: approved, filled at 0.0061" in user
    assert "margin used <= 50%" in system and "0.2 BTC" in system and "DTE 5-10" in system
    # An explicit `previous` wins over the state's.
    msgs = build_prompt(st, st.candidates, cfg(), previous="CLOSE p1 rejected by alice")
    assert "CLOSE p1 rejected by alice" in msgs[1]["content"] and "BTC-X" not in msgs[1]["content"]


def test_prompt_shows_the_best_candidates_by_score():
    worst_first = [cand(i, score=float(i)) for i in range(1, 13)]  # c12 has the best score
    st = mkstate(worst_first)
    user = build_prompt(st, st.candidates, cfg())[1]["content"]
    assert "c12 " in user and "c5 " in user and "c4 " not in user
    schema = decision_schema(st, st.candidates)
    assert schema["properties"]["candidate_id"]["enum"][:-1] == [f"c{i}" for i in range(12, 4, -1)]
    # The model may not pick one it was not shown.
    assert isinstance(validate_llm_choice(answer("OPEN_COVERED_CALL", "c1"), st, st.candidates, cfg()), str)


def test_prompt_size_under_budget():
    st = mkstate(cands(8), [pos(1), pos(2, strike=102_000, dte=6, delta=0.3)],
                 previous="ROLL BTC-1NOV26-98000-C -> BTC-3DEC26-103000-C: approved by bob, filled " * 3)
    text = messages_text(build_prompt(st, st.candidates, cfg()))
    assert estimate_tokens(text) < 2500
    assert estimate_tokens(text) < 1200  # in practice well under the budget


def test_with_a_short_call_only_roll_targets_are_shown():
    st = mkstate([cand(1, strike=97_000, dte=7, score=99), cand(2, strike=104_000, dte=2, score=98),
                  cand(3, strike=103_000, dte=8, score=50)], [pos(1, strike=98_000, dte=3)])
    user = build_prompt(st, st.candidates, cfg())[1]["content"]
    assert "roll into" in user and "\nc3 " in user and "\nc1 " not in user and "\nc2 " not in user
    assert decision_schema(st, st.candidates)["properties"]["candidate_id"]["enum"] == ["c3", None]
    none = mkstate([cand(1, strike=97_000, dte=7)], [pos(1)])
    assert "nothing to roll into" in build_prompt(none, none.candidates, cfg())[1]["content"]
    assert decision_schema(none, none.candidates)["properties"]["candidate_id"] == {"type": "null"}


def test_schema_without_ids_uses_null_only():
    st = mkstate([])
    schema = decision_schema(st, [])
    assert schema["properties"]["candidate_id"] == {"type": "null"}
    assert schema["properties"]["position_id"] == {"type": "null"}


# Malformed, invalid, late and failing answers -------------------------------------------------

MALFORMED = [
    ("bad json", Reply(content="I think we should open c1 {not json"), OPEN_STATE, "bad JSON"),
    ("json list", Reply(content='["OPEN_COVERED_CALL", "c1"]'), OPEN_STATE, "not a JSON object"),
    ("unknown action", json_reply(answer("SELL_PUT", "c1")), OPEN_STATE, "unknown action"),
    ("lowercase action", json_reply(answer("open_covered_call", "c1")), OPEN_STATE, "unknown action"),
    ("unknown candidate", json_reply(answer("OPEN_COVERED_CALL", "c99")), OPEN_STATE, "unknown candidate_id"),
    ("symbol as id", json_reply(answer("OPEN_COVERED_CALL", "BTC-1DEC26-101000-C")), OPEN_STATE, "unknown candidate_id"),
    ("unknown position", json_reply(answer("CLOSE_COVERED_CALL", pid="p7")), SHORT_STATE, "unknown position_id"),
    ("extra size", json_reply(answer("OPEN_COVERED_CALL", "c1", size=5)), OPEN_STATE, "unexpected keys size"),
    ("extra symbol", json_reply(answer("OPEN_COVERED_CALL", "c1", symbol="BTC-X")), OPEN_STATE, "unexpected keys symbol"),
    ("extra price", json_reply(answer("OPEN_COVERED_CALL", "c1", price=0.1, amount=3)), OPEN_STATE, "amount, price"),
    ("action not string", json_reply(answer(3, "c1")), OPEN_STATE, "action missing or not a string"),  # type: ignore[arg-type]
    ("missing action", json_reply({"candidate_id": "c1", "position_id": None, "reasoning": ""}), OPEN_STATE, "action missing"),
    ("id not string", json_reply(answer("OPEN_COVERED_CALL", 1)), OPEN_STATE, "candidate_id must be a string"),  # type: ignore[arg-type]
    ("reasoning not string", json_reply(answer("DO_NOTHING", reasoning={"a": 1})), OPEN_STATE, "reasoning must be"),  # type: ignore[arg-type]
    ("empty content", Reply(content=""), OPEN_STATE, "empty content"),
    ("null content", Reply(content=None), OPEN_STATE, "empty content"),
    ("refusal", Reply(content=None, refusal="I can't help with trading."), OPEN_STATE, "refusal: I can't help"),
    ("tool calls", Reply(content=None, finish_reason="tool_calls", tool_calls=[
        {"id": "call_1", "type": "function", "function": {"name": "sell", "arguments": '{"size": 10}'}}]),
     OPEN_STATE, "tool calls instead of content"),
    ("length", Reply(content='{"action": "OPEN_COVERED_CALL", "candidate_id": "c1", "posi', finish_reason="length"),
     OPEN_STATE, "finish_reason=length"),
    ("content filter", Reply(content="", finish_reason="content_filter"), OPEN_STATE, "content filter"),
    ("no choices", Reply(no_choices=True), OPEN_STATE, "no choices"),
    ("broken body", Reply(raw_body='{"id": "x", "choices": [ {'), OPEN_STATE, "invalid response from the server"),
    ("open with short open", json_reply(answer("OPEN_COVERED_CALL", "c1")), SHORT_STATE, "already open"),
    ("open without id", json_reply(answer("OPEN_COVERED_CALL")), OPEN_STATE, "needs a candidate_id"),
    ("open with position", json_reply(answer("OPEN_COVERED_CALL", "c1", "p1")), SHORT_STATE, "takes no position_id"),
    ("close without id", json_reply(answer("CLOSE_COVERED_CALL")), SHORT_STATE, "needs a position_id"),
    ("close a put", json_reply(answer("CLOSE_COVERED_CALL", pid="p2")), SHORT_STATE, "not a short call"),
    ("close with candidate", json_reply(answer("CLOSE_COVERED_CALL", "c1", "p1")), SHORT_STATE, "takes no candidate_id"),
    ("roll without candidate", json_reply(answer("ROLL_COVERED_CALL", pid="p1")), SHORT_STATE, "needs a candidate_id"),
    ("roll without position", json_reply(answer("ROLL_COVERED_CALL", "c1")), SHORT_STATE, "needs a position_id"),
    # c1 is a roll target of p3 (strike 90,000, 1 DTE) but not of p1 (strike 98,000, 3 DTE).
    ("roll down", json_reply(answer("ROLL_COVERED_CALL", "c1", "p1")),
     mkstate([cand(1, strike=97_000, dte=7)], [pos(1), pos(3, strike=90_000, dte=1)]), "up and out"),
    ("roll in", json_reply(answer("ROLL_COVERED_CALL", "c1", "p1")),
     mkstate([cand(1, strike=99_000, dte=2)], [pos(1), pos(3, strike=90_000, dte=1)]), "up and out"),
    ("roll to unshown", json_reply(answer("ROLL_COVERED_CALL", "c1", "p1")),
     mkstate([cand(1, strike=97_000, dte=7)], [pos(1)]), "unknown candidate_id"),
]


@pytest.mark.parametrize("reply,state,words", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
async def test_malformed_answers_fall_back_with_reason(reply, state, words):
    async with fake_openai_server(reply) as srv:
        out = await llm_decide(state, state.candidates, cfg(srv))
        assert len(srv.requests) == 1
    assert_fallback(out.action, words)
    assert out.record.valid is False and out.record.error and words.lower() in out.record.error.lower()


async def test_fallback_records_the_parsed_answer_and_raw_text():
    bad = answer("OPEN_COVERED_CALL", "c1", size=99)
    async with fake_openai_server(json_reply(bad)) as srv:
        out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv))
    assert out.record.parsed == bad and json.loads(out.record.raw_response) == bad


async def test_answer_in_prose_with_fence_is_accepted():
    text = 'Sure.\n```json\n{"action": "OPEN_COVERED_CALL", "candidate_id": "c2", "position_id": null, "reasoning": "ok"}\n```'
    async with fake_openai_server(Reply(content=text)) as srv:
        out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv))
    assert out.action.symbol == OPEN_STATE.candidates[1].instrument_name


async def test_server_rejecting_response_format_gets_one_plain_text_retry():
    text = 'My choice: {"action": "OPEN_COVERED_CALL", "candidate_id": "c1", "position_id": null, "reasoning": "best {score}"} done'
    async with fake_openai_server(Reply(content=text), reject_response_format=True) as srv:
        out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv))
        assert len(srv.requests) == 2
        assert "response_format" in srv.requests[0] and "response_format" not in srv.requests[1]
        assert "only the JSON object" in srv.requests[1]["messages"][0]["content"]
        # Remembered: the next call goes straight to plain text.
        srv.push(json_reply(answer("DO_NOTHING")))
        again = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv))
        assert len(srv.requests) == 3 and "response_format" not in srv.requests[2]
    assert out.action.action == ActionType.OPEN_COVERED_CALL and out.action.decision_source == "llm"
    assert out.action.reasoning.startswith("best {score}")
    assert out.record.attempts == 2 and out.record.structured is False
    assert again.record.attempts == 1 and again.action.decision_source == "llm"


async def test_plain_text_retry_still_validates():
    reply = Reply(content='{"action": "OPEN_COVERED_CALL", "candidate_id": "c1", "size": 3}', reject_response_format=True)
    async with fake_openai_server(reply) as srv:
        out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv))
        assert len(srv.requests) == 2
    assert_fallback(out.action, "unexpected keys size")


async def test_422_naming_response_format_is_retried_too():
    reply = Reply(content=json.dumps(answer("DO_NOTHING")), reject_response_format=True)
    async with fake_openai_server(reply) as srv:
        srv.script[0].reject_status = 422
        out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv))
        assert len(srv.requests) == 2
    assert out.action.decision_source == "llm"


async def test_other_400_is_not_retried():
    async with fake_openai_server(error_reply(400, "context length exceeded")) as srv:
        out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv))
        assert len(srv.requests) == 1
    assert_fallback(out.action, "HTTP 400", "context length exceeded")


async def test_slow_answer_times_out_quickly_without_retry():
    async with fake_openai_server(json_reply(answer("DO_NOTHING"), delay=5)) as srv:
        t0 = time.perf_counter()
        out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv, llm_timeout_sec=0.5))
        elapsed = time.perf_counter() - t0
        assert len(srv.requests) == 1
    assert elapsed < 2.0
    assert_fallback(out.action, "timeout")
    assert out.record.error.startswith("timeout") and out.record.latency_ms >= 400


@pytest.mark.parametrize("status,words", [(429, "rate limited (HTTP 429)"), (500, "server error (HTTP 500)"),
                                          (503, "server error (HTTP 503)"), (401, "HTTP 401")])
async def test_http_errors_fall_back_after_one_request(status, words):
    async with fake_openai_server(error_reply(status, "nope")) as srv:
        out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv))
        assert len(srv.requests) == 1
    assert_fallback(out.action, words)


async def test_connection_error_falls_back():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    s = cfg(openai_base_url=f"http://127.0.0.1:{port}/v1")
    out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, s)
    assert_fallback(out.action, "connection error")


async def test_given_client_is_used_and_left_open():
    async with fake_openai_server(json_reply(answer("DO_NOTHING")), json_reply(answer("DO_NOTHING"))) as srv:
        client = openai.AsyncOpenAI(base_url=srv.base_url, api_key="mine", max_retries=0)
        await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(), client=client)
        await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(), client=client)
        await client.close()
        assert [h["authorization"] for h in srv.headers] == ["Bearer mine", "Bearer mine"]
