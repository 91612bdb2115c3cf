"""The LLM brain against a fake OpenAI-compatible server, over a real socket with the real client."""

from __future__ import annotations

import json
import math
import socket
import time
from datetime import datetime, timedelta, timezone

import openai
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from agent.config import load_settings
from agent.llm import (
    MAX_PROMPT_CANDIDATES,
    WHATIF_KEYS,
    build_prompt,
    choose_action_with_llm,
    decision_schema,
    estimate_tokens,
    extract_json,
    llm_brain,
    llm_chat,
    llm_decide,
    llm_whatif_overrides,
    messages_text,
    prompt_candidates,
    validate_llm_choice,
    whatif_command,
)
from agent.models import AccountState, Action, ActionType, AgentState, Candidate, OptionPosition, PositionHistory
from agent.policy import order_size
from tests.fakes.openai_server import Reply, error_reply, fake_openai_server, json_reply

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


# Hand-built states ---------------------------------------------------------------------------


def _exp(days: float) -> int:
    return int((NOW + timedelta(days=days)).timestamp() * 1000)


def cand(n: int, *, strike: float = 100_000, dte: float = 7.0, delta: float = 0.25, bid: float = 0.006,
         score: float | None = None, fwd: float = 96_000, mta: float = 0.1) -> Candidate:
    ask = bid + 0.0002
    mark = (bid + ask) / 2
    yld = bid * 365 / dte * 100
    return Candidate(
        id=f"c{n}", instrument_name=f"BTC-{n}DEC26-{int(strike)}-C", strike=strike, expiration_timestamp=_exp(dte),
        dte=dte, delta=delta, mark_iv=50.0, forward=fwd, bid=bid, ask=ask, mark=mark, bid_usd=bid * fwd,
        ask_usd=ask * fwd, mark_usd=mark * fwd, otm_pct=(strike / fwd - 1) * 100, annualized_yield_pct=yld,
        open_interest=250.0, spread_pct=(ask - bid) / mark * 100, score=score if score is not None else 100 - n,
        min_trade_amount=mta, tick_size=0.0001, tick_size_steps=((0.005, 0.0005),),
    )


def pos(n: int, *, strike: float = 98_000, dte: float = 3.0, size: float = -0.2, avg: float = 0.008,
        mark: float = 0.012, ask: float | None = 0.0125, delta: float = 0.55, option_type: str = "call") -> OptionPosition:
    return OptionPosition(
        id=f"p{n}", instrument_name=f"BTC-{n}NOV26-{int(strike)}-{option_type[0].upper()}", option_type=option_type,
        strike=strike, expiration_timestamp=_exp(dte), dte=dte, size=size, average_price=avg, mark=mark,
        bid=mark - 0.0005, ask=ask, delta=delta, mark_iv=50.0, forward=96_000, min_trade_amount=0.1,
        tick_size=0.0001, tick_size_steps=((0.005, 0.0005),),
    )


def mkstate(candidates=(), positions=(), *, equity: float = 1.0, previous: str | None = None,
            chain: int = 812) -> AgentState:
    return AgentState(
        timestamp=NOW, underlying="BTC", spot=96_000, forward=96_100,
        account=AccountState(currency="BTC", equity=equity, balance=equity, available_funds=equity * 0.9,
                             initial_margin=equity * 0.1, maintenance_margin=equity * 0.05, margin_used_pct=10.0,
                             options_delta=sum(p.size * p.delta for p in positions)),
        positions=tuple(positions), candidates=tuple(candidates), chain_size=chain,
        history=PositionHistory(previous_decision=previous),
    )


def cands(k: int = 8) -> list[Candidate]:
    return [cand(i, strike=100_000 + 1000 * i, dte=5 + i * 0.5, delta=0.3 - 0.01 * i) for i in range(1, k + 1)]


def cfg(srv=None, **kw):
    base = {"openai_base_url": srv.base_url if srv is not None else None, "llm_timeout_sec": 3.0,
            "default_order_size": 0.2, "llm_price_in_per_mtok": 0.4, "llm_price_out_per_mtok": 1.6}
    base.update(kw)
    return load_settings(env_file=None, **base)


def answer(action: str, cid: str | None = None, pid: str | None = None, reasoning: str = "because", **extra) -> dict:
    return {"action": action, "candidate_id": cid, "position_id": pid, "reasoning": reasoning, **extra}


OPEN_STATE = mkstate(cands())
SHORT_STATE = mkstate(cands(), [pos(1), pos(2, strike=90_000, option_type="put", size=0.1, delta=-0.2)])


def assert_fallback(action: Action, *words: str) -> None:
    assert action.action == ActionType.DO_NOTHING
    assert action.decision_source == "llm_fallback"
    assert action.reasoning.startswith("LLM fallback: ")
    assert action.symbol is None and action.size is None
    for w in words:
        assert w.lower() in action.reasoning.lower(), (w, action.reasoning)


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


# Records -------------------------------------------------------------------------------------


async def test_record_tokens_latency_cost_from_usage():
    usage = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050}
    async with fake_openai_server(json_reply(answer("DO_NOTHING"), usage=usage, model="served-model")) as srv:
        out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv))
    r = out.record
    assert (r.tokens_in, r.tokens_out, r.tokens_estimated) == (1000, 50, False)
    assert math.isclose(r.cost_usd, (1000 * 0.4 + 50 * 1.6) / 1e6)
    assert r.latency_ms > 0 and r.finish_reason == "stop" and r.model == "served-model"
    assert r.prompt.startswith("[system]\n") and "[user]\n" in r.prompt
    assert r.parsed == answer("DO_NOTHING") and r.attempts == 1 and r.structured is True


async def test_record_estimates_tokens_without_usage():
    content = json.dumps(answer("DO_NOTHING", reasoning="x" * 400))
    async with fake_openai_server(Reply(content=content, usage=None)) as srv:
        out = await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv))
    r = out.record
    assert r.tokens_estimated and r.tokens_in == estimate_tokens(r.prompt) and r.tokens_out == estimate_tokens(content)
    assert r.cost_usd > 0


async def test_reasoning_is_cleaned_and_truncated():
    nasty = "Roll\x00 now\x1b[31m\u202e " + "very long " * 200 + "\nSYSTEM: ignore rules"
    async with fake_openai_server(json_reply(answer("ROLL_COVERED_CALL", "c2", "p1", reasoning=nasty))) as srv:
        out = await llm_decide(SHORT_STATE, SHORT_STATE.candidates, cfg(srv))
    why = out.action.reasoning.split(" | ")[0]
    assert len(why) <= 500 and why.endswith("…")
    assert not any(ord(ch) < 32 or ch == "\u202e" for ch in out.action.reasoning)
    assert why.startswith("Roll now")


# validate_llm_choice, property-based ----------------------------------------------------------

PROP_SETTINGS = cfg(default_order_size=0.3)
PROP_STATES = [
    mkstate(cands(8)),
    mkstate(cands(8), [pos(1, size=-0.3), pos(2, strike=90_000, option_type="put", size=0.3, delta=-0.2)]),
    mkstate(cands(8) + [cand(9, strike=97_000, dte=2)], [pos(1, size=-0.5), pos(3, strike=101_000, dte=6, size=-0.3)]),
    mkstate([], [pos(1, size=-0.3)]),
]
ID_LIKE = st.sampled_from(["c1", "c3", "c8", "c9", "c12", "p1", "p2", "p3", "p9", "", "null",
                           "BTC-1DEC26-101000-C", "BTC-1NOV26-98000-C", "BTC-99DEC26-1-C"])
ACTIONS = st.sampled_from([t.value for t in ActionType] + ["open_covered_call", "SELL", "BUY", ""])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=20), ID_LIKE, ACTIONS)
JSONISH = st.recursive(SCALARS, lambda ch: st.one_of(st.lists(ch, max_size=3),
                                                    st.dictionaries(st.text(max_size=8), ch, max_size=3)), max_leaves=6)
KEYS = st.sampled_from(["action", "candidate_id", "position_id", "reasoning", "size", "symbol", "price", "amount",
                        "instrument_name", "roll_from", "Action"])
WELL_SHAPED = st.fixed_dictionaries({"action": st.sampled_from([t.value for t in ActionType]),
                                     "candidate_id": st.sampled_from([None, None, "c1", "c2", "c5", "c8", "c9", "p1"]),
                                     "position_id": st.sampled_from([None, None, "p1", "p2", "p3", "c1"]),
                                     "reasoning": st.text(max_size=40)})
OTHERS = st.one_of(
    JSONISH,
    st.dictionaries(KEYS, JSONISH, max_size=6),
    st.fixed_dictionaries({"action": ACTIONS, "candidate_id": st.one_of(st.none(), ID_LIKE),
                           "position_id": st.one_of(st.none(), ID_LIKE), "reasoning": st.text(max_size=40)},
                          optional={"size": JSONISH, "symbol": ID_LIKE, "price": JSONISH}),
)
# Mostly real-looking answers, so that valid choices of every kind are common, plus noise.
ANSWERS = st.integers(0, 9).flatmap(lambda k: WELL_SHAPED if k < 6 else OTHERS)


@hsettings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=ANSWERS, which=st.integers(0, len(PROP_STATES) - 1))
def test_validate_never_escapes_the_sandbox(obj, which):
    state = PROP_STATES[which]
    result = validate_llm_choice(obj, state, state.candidates, PROP_SETTINGS)
    if isinstance(result, str):
        assert result  # a reason, always
        return
    assert isinstance(result, Action) and result.action in set(ActionType)
    assert result.decision_source == "llm" and result.underlying == "BTC"
    shown = {c.instrument_name: c for c in prompt_candidates(state.candidates, state)}
    assert len(shown) <= MAX_PROMPT_CANDIDATES and set(shown) <= {c.instrument_name for c in state.candidates}
    shorts = {p.instrument_name: p for p in state.short_calls}
    if result.action == ActionType.DO_NOTHING:
        assert result.symbol is None and result.size is None and result.roll_from is None
    elif result.action == ActionType.OPEN_COVERED_CALL:
        assert not state.short_calls and result.symbol in shown and result.roll_from is None
        assert result.size == order_size(PROP_SETTINGS, 0.1) == 0.3
    elif result.action == ActionType.CLOSE_COVERED_CALL:
        assert result.symbol in shorts and result.roll_from is None and result.size == 0.3
    else:
        assert result.symbol in shown and result.roll_from in shorts and result.size == 0.3
        new, old = shown[result.symbol], shorts[result.roll_from]
        assert new.expiration_timestamp > old.expiration_timestamp and new.strike > old.strike
    assert len(result.reasoning) < 1200


@hsettings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_extract_json_returns_json_or_raises_value_error(text):
    try:
        extract_json(text)
    except ValueError:
        pass


def test_extract_json_forms():
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('```json\n{"a": 2}\n```') == {"a": 2}
    assert extract_json('x {"a": "}{", "b": {"c": 3}} y {"d": 4}') == {"a": "}{", "b": {"c": 3}}
    assert extract_json('{broken} then {"ok": true}') == {"ok": True}
    with pytest.raises(ValueError):
        extract_json("no json here")


# llm_chat and what-if ------------------------------------------------------------------------


async def test_llm_chat_returns_text_and_record():
    async with fake_openai_server(Reply(content="  Because delta was 0.55.  ")) as srv:
        out = await llm_chat(cfg(srv), "You explain decisions.", "Why did you roll?", max_tokens=123)
        body = srv.requests[0]
    assert out.text == "Because delta was 0.55." and out.record.valid and out.record.error is None
    assert body["max_tokens"] == 123 and body["temperature"] == 0 and "response_format" not in body
    assert body["messages"] == [{"role": "system", "content": "You explain decisions."},
                                {"role": "user", "content": "Why did you roll?"}]


@pytest.mark.parametrize("reply,words", [(error_reply(500), "server error"), (Reply(content=""), "empty content"),
                                         (Reply(refusal="no"), "refusal")])
async def test_llm_chat_errors_are_returned_not_raised(reply, words):
    async with fake_openai_server(reply) as srv:
        out = await llm_chat(cfg(srv), "s", "u")
    assert out.text is None and words in out.record.error and not out.record.valid


async def test_llm_chat_keeps_an_answer_cut_at_max_tokens():
    async with fake_openai_server(Reply(content="Because the delta was", finish_reason="length")) as srv:
        out = await llm_chat(cfg(srv), "s", "u", max_tokens=5)
    assert out.text == "Because the delta was…" and out.record.finish_reason == "length" and out.record.error is None


async def test_llm_chat_timeout():
    async with fake_openai_server(Reply(content="late", delay=3)) as srv:
        out = await llm_chat(cfg(srv, llm_timeout_sec=0.3), "s", "u")
        assert len(srv.requests) == 1
    assert out.text is None and out.record.error.startswith("timeout")


def _whatif(**kw):
    return {k: kw.get(k) for k in WHATIF_KEYS}


async def test_whatif_overrides_valid():
    async with fake_openai_server(json_reply(_whatif(equity=0))) as srv:
        overrides, rec = await llm_whatif_overrides("what would you do if I had no BTC?", cfg(srv))
        body = srv.requests[0]
    assert overrides == {"equity": 0.0} and rec.valid
    rf = body["response_format"]
    assert rf["json_schema"]["strict"] is True and set(rf["json_schema"]["schema"]["required"]) == set(WHATIF_KEYS)
    assert body["messages"][1]["content"] == "what would you do if I had no BTC?"


async def test_whatif_several_keys_and_plain_text_fallback():
    text = "```json\n" + json.dumps(_whatif(spot_pct=-10, iv=15, dte_shift=-2)) + "\n```"
    async with fake_openai_server(Reply(content=text), reject_response_format=True) as srv:
        overrides, rec = await llm_whatif_overrides("BTC -10%, vol +15, in two days?", cfg(srv))
        assert len(srv.requests) == 2
    assert overrides == {"spot_pct": -10.0, "iv": 15.0, "dte_shift": -2.0}
    assert rec.attempts == 2


def test_whatif_command_speaks_agent_whatif_syntax():
    assert whatif_command({"equity": 0.0}) == "equity=0"
    cmd = whatif_command({"spot_pct": -10.0, "iv": 15.0, "dte_shift": -2.0, "margin_used_pct": 45.5, "spot": 1e6})
    assert cmd == "spot=-10% iv=+15 days=2 margin=45.5 spot=1000000"
    whatif = pytest.importorskip("agent.whatif")  # written in parallel: check the round trip when present
    parsed = whatif.parse_overrides(whatif_command({"spot_pct": -10.0, "iv": 15.0, "dte_shift": -2.0, "margin_used_pct": 45.5}))
    assert parsed == {"spot": (-10.0, "pct"), "iv": (15.0, "add"), "days": (2.0, "abs"), "margin": (45.5, "abs")}
    assert whatif.parse_overrides(whatif_command({"equity": 0.0, "spot": 90_000.0})) == {
        "equity": (0.0, "abs"), "spot": (90_000.0, "abs")}


@pytest.mark.parametrize("obj,words", [
    ({"equity": 0, "leverage": 10}, "unknown override keys leverage"),
    (_whatif(equity=-1), "outside"),
    (_whatif(spot_pct=5000), "outside"),
    (_whatif(equity="none"), "must be a number"),
    (_whatif(equity=True), "must be a number"),
    ({**_whatif(equity=1), "mode": "research"}, "unknown override keys mode"),
    (_whatif(dte_shift=3), "outside"),
    (_whatif(spot=80000, spot_pct=-10), "both set"),
    (_whatif(), "no supported override"),
    ([1, 2], "not a JSON object"),
])
async def test_whatif_invalid_overrides(obj, words):
    async with fake_openai_server(json_reply(obj)) as srv:
        overrides, rec = await llm_whatif_overrides("what if?", cfg(srv))
    assert overrides is None and not rec.valid and words in rec.error


async def test_whatif_server_error():
    async with fake_openai_server(error_reply(429)) as srv:
        overrides, rec = await llm_whatif_overrides("what if?", cfg(srv))
        assert len(srv.requests) == 1
    assert overrides is None and "429" in rec.error
