"""The prompt carries what an options trader decides with (IV, the volatility line, the rule
policy's pick, the rolls with their net credit, the cool-down, the last fills), stays compact, and
the schema puts reasoning first for non-reasoning models."""

from __future__ import annotations

from datetime import timedelta

from agent.llm import build_prompt, decision_schema, estimate_tokens, llm_decide, messages_text, prompt_candidates
from agent.models import PositionHistory
from agent.policy import close_cost, fee
from tests.fakes.openai_server import fake_openai_server, json_reply
from tests.llm_helpers import NOW, OPEN_STATE, answer, cand, cands, cfg, mkstate, pos
from tests.spine_helpers import make_bot, settle_orders


def user_text(state, **kw) -> str:
    return build_prompt(state, state.candidates, cfg(**kw))[1]["content"]


def test_iv_per_candidate_and_position_and_the_volatility_line():
    st = mkstate([cand(1, strike=101_000, dte=7)], [pos(1)]).model_copy(update={"atm_iv": 47.25, "atm_iv_dte": 6.9})
    text = user_text(st)
    assert "id strike dte delta iv bid" in text and "\nc1 101000 7.0 0.25 50.0 " in text
    assert "ask delta iv dte" in text and " 0.55 50.0 3.0 " in text
    assert "Volatility: ATM IV 47.2% (6.9 DTE expiry); shown calls IV 50.0-50.0%." in text


def test_rolls_list_each_shorts_targets_with_net_credit_after_fees():
    p1, p2 = pos(1, strike=98_000, dte=3), pos(2, strike=104_000, dte=9, delta=0.3)
    c1, c2, c3 = cand(1, strike=99_000, dte=7), cand(2, strike=105_000, dte=14, bid=0.012), cand(3, strike=97_000, dte=9)
    st = mkstate([c1, c2, c3], [p1, p2])
    text = user_text(st)
    net = lambda c, p: c.bid - close_cost(p) - fee(c.bid) - fee(close_cost(p))  # noqa: E731
    assert f"p1 -> c1 {net(c1, p1):+.4f}, c2 {net(c2, p1):+.4f}" in text
    assert f"p2 -> c2 {net(c2, p2):+.4f}" in text and "c3" not in text.split("Rolls:")[1]


def test_several_shorts_each_get_their_roll_targets_shown():
    near = pos(1, strike=98_000, dte=3)
    far = pos(2, strike=110_000, dte=20, delta=0.3)
    many = [cand(i, strike=99_000 + 100 * i, dte=7, score=100 - i) for i in range(1, 12)]  # near's targets only
    mine = [cand(20 + i, strike=111_000 + 1000 * i, dte=30, score=10 - i) for i in range(3)]  # far's, low score
    st = mkstate(many + mine, [near, far])
    shown = {c.id for c in prompt_candidates(st.candidates, st)}
    assert len(shown) == 8 and {"c20", "c21", "c22"} & shown


def test_rule_pick_cooldown_and_recent_fills():
    history = PositionHistory(last_action_at={"BTC-1NOV26-98000-C": NOW - timedelta(minutes=12)},
                              recent_fills=("11-25 11:48Z OPEN BTC-1NOV26-98000-C 0.2: filled 0.2 @ 0.008",))
    st = mkstate(cands(), [pos(1)]).model_copy(update={"history": history})
    text = user_text(st, hysteresis_min=30)
    assert "Cool-down: BTC-1NOV26-98000-C acted on 12 min ago (< 30 min): the rules wait 18 min more" in text
    assert "Recent fills: 11-25 11:48Z OPEN BTC-1NOV26-98000-C 0.2: filled 0.2 @ 0.008." in text
    assert "Rule policy picks: DO_NOTHING: Hold" in text
    assert "Cool-down: none" in user_text(OPEN_STATE) and "Rule policy picks: OPEN_COVERED_CALL c" in user_text(OPEN_STATE)


def test_reasoning_first_for_non_reasoning_models_only():
    plain = decision_schema(OPEN_STATE, OPEN_STATE.candidates, cfg(llm_model_name="gpt-4.1-mini"))
    thinker = decision_schema(OPEN_STATE, OPEN_STATE.candidates, cfg(llm_model_name="gpt-5-mini"))
    assert list(plain["properties"])[0] == "reasoning" and plain["required"][0] == "reasoning"
    assert list(thinker["properties"])[-1] == "reasoning"
    system = build_prompt(OPEN_STATE, OPEN_STATE.candidates, cfg())[0]["content"]
    assert '{"reasoning": "one or two short sentences", "action"' in system


def test_prompt_stays_compact_on_a_full_chain():
    st = mkstate(cands(40), [pos(1), pos(2, strike=102_000, dte=6, delta=0.3)],
                 previous="ROLL BTC-1NOV26-98000-C -> BTC-3DEC26-103000-C: approved by bob, filled " * 3)
    st = st.model_copy(update={"atm_iv": 50.0, "atm_iv_dte": 7.0, "history": st.history.model_copy(update={
        "recent_fills": tuple(f"11-2{i} 10:00Z OPEN BTC-{i}DEC26-100000-C 0.1: filled 0.1 @ 0.006" for i in range(3))})})
    assert estimate_tokens(messages_text(build_prompt(st, st.candidates, cfg()))) < 1500


async def test_the_last_fills_come_from_the_exchange_reported_execution(tmp_path):
    async with fake_openai_server() as fake:
        b = make_bot(tmp_path, llm_enabled=True, openai_base_url=fake.base_url, hysteresis_min=30)
        fake.push(json_reply(answer("OPEN_COVERED_CALL", "c1")), json_reply(answer("DO_NOTHING")))
        await b.start()
        try:
            _, d = await b.tick()
            (p,) = b.store.pending_proposals()
            assert (await b.core.approve(p.id, "alice", "console")).ok
            await settle_orders(b)  # the sell starts at the mid and steps toward the bid
            assert b.store.get_proposal(p.id).status == "executed"
            b.exchange.clock.advance(300)
            await b.tick()
            user = fake.last["messages"][1]["content"]
            assert f"Recent fills: " in user and p.symbol in user.split("Recent fills: ")[1]
            assert f"Cool-down: {p.symbol} acted on" in user
        finally:
            await b.stop()


async def test_the_rule_pick_is_in_the_request():
    async with fake_openai_server(json_reply(answer("DO_NOTHING"))) as srv:
        await llm_decide(OPEN_STATE, OPEN_STATE.candidates, cfg(srv))
        user = srv.last["messages"][1]["content"]
    # c4 (delta 0.26, 7 DTE) is nearest the targets (0.25, 7 DTE): the policy's pick, not the top score.
    assert "Rule policy picks: OPEN_COVERED_CALL c4: Open: sell" in user


def test_realized_vol_from_the_index_price_of_past_ticks(tmp_path):
    """Hourly samples of the spot the ticks recorded: no exchange request; in the volatility line."""
    import math

    from agent.models import Action, ActionType, Decision, RiskResult
    from agent.pricing import realized_vol_pct
    from chatops.store import Store

    store = Store(tmp_path / "rv.db")
    nothing = Action(action=ActionType.DO_NOTHING, underlying="BTC")
    start = NOW - timedelta(days=8)
    for h in range(8 * 24):  # +1 % / -1 % every hour, two ticks an hour (the last one of each hour counts)
        for minute, jitter in ((10, 1.003), (50, 1.0)):
            spot = 95_000 * math.exp(0.01 * (h % 2)) * jitter
            store.record_decision(Decision(
                timestamp=start + timedelta(hours=h, minutes=minute), underlying="BTC", state={"spot": spot},
                proposed_action=nothing, risk_check=RiskResult(allowed=True), final_action=nothing))
    history = store.history_for_policy("BTC", NOW)
    expected = math.sqrt(1e-4 * 24 * 365) * 100  # squared log return 1e-4 every hour
    assert math.isclose(history.realized_vol_7d, expected, rel_tol=1e-3)
    assert history.realized_vol_30d is not None  # 8 days: enough hourly returns for the 30-day figure too
    assert store.history_for_policy("BTC", start + timedelta(hours=10)).realized_vol_7d is None  # too few samples
    assert realized_vol_pct([(0, 1.0)] * 30) is None
    st = OPEN_STATE.model_copy(update={"history": history})
    assert f"realized 7d {expected:.1f}%, 30d " in user_text(st)
    store.close()


def test_realized_vol_kept_between_ticks_matches_a_fresh_read(tmp_path):
    """The hours kept between calls (only new hours are read each tick) give what a store reading
    the whole month from scratch gives, tick after tick, across the window's edge and a clock set back."""
    import math

    from agent.models import Action, ActionType, Decision, RiskResult
    from chatops.store import Store

    path = tmp_path / "rv-live.db"
    live = Store(path)
    nothing = Action(action=ActionType.DO_NOTHING, underlying="BTC")
    start = NOW - timedelta(days=33)
    checked = 0
    for h in range(33 * 24):
        for minute in (5, 35):
            t = start + timedelta(hours=h, minutes=minute)
            spot = 95_000 * math.exp(0.02 * math.sin(h * 0.7) + 0.001 * minute / 35)
            live.record_decision(Decision(timestamp=t, underlying="BTC", state={"spot": spot},
                                          proposed_action=nothing, risk_check=RiskResult(allowed=True),
                                          final_action=nothing))
            got = live.history_for_policy("BTC", t + timedelta(minutes=1))
            if h % 97 == 0 or h > 32 * 24:
                fresh = Store(path)
                want = fresh.history_for_policy("BTC", t + timedelta(minutes=1))
                fresh.close()
                assert (got.realized_vol_7d, got.realized_vol_30d) == (want.realized_vol_7d, want.realized_vol_30d)
                checked += 1
    assert checked > 40 and got.realized_vol_30d is not None
    back = NOW - timedelta(days=20)  # the clock set back: hours after it are not used
    fresh = Store(path)
    assert live.history_for_policy("BTC", back).realized_vol_7d == fresh.history_for_policy("BTC", back).realized_vol_7d
    fresh.close()
    live.close()
