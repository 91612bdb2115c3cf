"""Rejections teach: a rejected action is not proposed again for REJECT_COOLDOWN_MIN unless its
price moved beyond MAX_PRICE_DRIFT_PCT, and the LLM is told what was rejected and why."""

from __future__ import annotations

from datetime import timedelta

from agent import cooldown
from agent.llm import user_prompt
from agent.models import ActionType, PositionHistory, Rejection
from agent.policy import decide_action
from tests import builders as b
from tests.spine_helpers import make_bot


def _rejected(symbol: str, minutes_ago: float, *, price: float = 0.006, action: str = "OPEN_COVERED_CALL",
              reason: str | None = "strike too close") -> Rejection:
    return Rejection(proposal_id=1, action=action, symbol=symbol, at=b.NOW - timedelta(minutes=minutes_ago), by="alice",
                     reason=reason, ref_price=price)


def _state(*rejections, positions=()):
    c1 = b.candidate(1, strike=100_000, bid=0.006, score=50)
    c2 = b.candidate(2, strike=104_000, bid=0.005, delta=0.2, score=40)
    return b.state(candidates=(c1, c2), positions=positions, history=PositionHistory(rejections=tuple(rejections)))


def test_a_rejected_open_is_left_out_and_the_next_best_is_chosen():
    s = b.settings()
    st = _state(_rejected("BTC-1TEST-100000-C", 10))
    assert decide_action(st, s).symbol == "BTC-1TEST-100000-C"  # without the cool-down: the same trade again
    hidden, notes = cooldown.hide_rejected(st, s)
    assert [c.instrument_name for c in hidden.candidates] == ["BTC-2TEST-104000-C"]
    assert decide_action(hidden, s).symbol == "BTC-2TEST-104000-C"
    (note,) = notes
    assert "rejected at 11:50Z by alice: strike too close" in note and "until 12:50Z" in note


def test_the_cool_down_ends_after_reject_cooldown_min():
    s = b.settings(reject_cooldown_min=30)
    assert cooldown.active(_state(_rejected("BTC-1TEST-100000-C", 29)), s)
    assert not cooldown.active(_state(_rejected("BTC-1TEST-100000-C", 31)), s)
    assert not cooldown.active(_state(_rejected("BTC-1TEST-100000-C", 5)), b.settings(reject_cooldown_min=0))


def test_a_market_move_beyond_the_drift_limit_reopens_the_question():
    s = b.settings(max_price_drift_pct=10)
    assert cooldown.active(_state(_rejected("BTC-1TEST-100000-C", 5, price=0.0056)), s)  # 7 % move: still cooling
    assert not cooldown.active(_state(_rejected("BTC-1TEST-100000-C", 5, price=0.005)), s)  # 20 % move


def test_a_rejected_close_is_held_back_as_do_nothing_reasoning():
    s = b.settings()
    pos = b.short_call(1, avg=0.02, ask=0.002, mark=0.002, dte=5)  # 90 % captured: the rules want to close
    st = _state(_rejected(pos.instrument_name, 5, price=0.002, action="CLOSE_COVERED_CALL", reason="let it ride"),
                positions=(pos,))
    action = decide_action(st, s)
    assert action.action == ActionType.CLOSE_COVERED_CALL
    why = cooldown.blocked(action, st, s)
    assert why and "let it ride" in why
    assert cooldown.blocked(action, _state(positions=(pos,)), s) is None


def test_the_llm_prompt_names_the_rejection_and_its_reason():
    st = _state(_rejected("BTC-1TEST-100000-C", 5))
    text = user_prompt(st, st.candidates)
    assert "Rejected by the operators lately" in text and "BTC-1TEST-100000-C" in text and "strike too close" in text
    assert "Rejected by the operators" not in user_prompt(_state(), _state().candidates)


async def test_reject_then_tick_proposes_a_different_call_and_says_why(tmp_path):
    bot = make_bot(tmp_path)
    await bot.start()
    try:
        await bot.tick()
        (p1,) = bot.store.pending_proposals()
        r = await bot.core.handle_text(f"reject {p1.id} strike too close", "alice", "console")
        assert r.ok
        history = bot.store.history_for_policy("BTC", bot.now())
        (rej,) = history.rejections
        assert (rej.symbol, rej.reason, rej.by) == (p1.symbol, "strike too close", "alice") and rej.ref_price
        _, decision = await bot.tick()
        assert decision.final_action.symbol != p1.symbol
        assert "strike too close" in decision.final_action.reasoning
        # An hour later the first call may come back.
        bot.exchange.clock.advance(61 * 60)
        assert not bot.store.history_for_policy("BTC", bot.now()).rejections or not cooldown.active(
            (await _state_of(bot)), bot.settings)
    finally:
        await bot.stop()


async def _state_of(bot):
    from agent.state import build_agent_state

    return await build_agent_state(bot.exchange.client, bot.settings, clock=bot.exchange.clock,
                                   history=bot.store.history_for_policy("BTC", bot.now()))
