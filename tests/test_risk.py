"""The risk engine: examples for each limit, and properties stated with hypothesis."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings as hsettings, strategies as st

from agent.models import Action, ActionType
from agent.risk import apply_risk, check_action_allowed, short_call_margin
from tests.builders import NOW, candidate, settings, short_call, state

S = settings()


def open_(c, size=0.1):
    return Action(action=ActionType.OPEN_COVERED_CALL, underlying="BTC", symbol=c.instrument_name, size=size)


def test_a_sensible_open_is_allowed_with_its_checks_listed():
    c = candidate()
    r = check_action_allowed(state(candidates=[c]), open_(c), S)
    assert r.allowed, r.reasons
    assert any("covered" in x for x in r.checks) and any("margin" in x for x in r.checks)


def test_invented_symbol_is_blocked():
    c = candidate()
    a = Action(action=ActionType.OPEN_COVERED_CALL, underlying="BTC", symbol="BTC-1JAN30-1000-C", size=0.1)
    r = check_action_allowed(state(candidates=[c]), a, S)
    assert not r.allowed and "not among the candidates" in r.reasons[0]


def test_size_must_be_multiple_and_within_default():
    c = candidate()
    assert "not a multiple" in " ".join(check_action_allowed(state(candidates=[c]), open_(c, 0.15), S).reasons)
    assert "exceeds DEFAULT_ORDER_SIZE" in " ".join(check_action_allowed(state(candidates=[c]), open_(c, 0.2), S).reasons)
    assert not check_action_allowed(state(candidates=[c]), open_(c, -0.1), S).allowed


def test_uncovered_is_blocked():
    c = candidate()
    r = check_action_allowed(state(candidates=[c], equity=0.05), open_(c), S)
    assert not r.allowed and any("uncovered" in x for x in r.reasons)


def test_margin_limit():
    c = candidate()
    r = check_action_allowed(state(candidates=[c], im=0.49), open_(c), S)
    assert not r.allowed and any("margin used would be" in x for x in r.reasons)


def test_options_delta_limit():
    c = candidate(delta=0.3)
    r = check_action_allowed(state(candidates=[c], options_delta=-0.99), open_(c), S)
    assert not r.allowed and any("options delta" in x for x in r.reasons)


def test_expiry_exposure_limit():
    c = candidate(dte=7)
    s = settings(max_expiry_exposure=0.1, default_order_size=0.2)
    r = check_action_allowed(state(candidates=[c], equity=5), open_(c, 0.2), s)
    assert not r.allowed and any("in one expiry" in x for x in r.reasons)


def test_stale_state_is_blocked():
    c = candidate()
    r = check_action_allowed(state(candidates=[c]), open_(c), S, now=NOW + timedelta(seconds=31))
    assert not r.allowed and "s old" in r.reasons[0]


def test_state_age_is_wall_time_under_paper_speed():
    """At PAPER_SPEED 3600 a state read one wall second ago is an hour old in market time: still
    fresh (MAX_STATE_AGE_SEC counts the seconds since the bot read it); 40 wall seconds is stale."""
    c = candidate()
    fast = settings(paper_speed=3600.0, max_state_age_sec=30.0)
    st = state(candidates=[c])
    ok = check_action_allowed(st, open_(c), fast, now=NOW + timedelta(seconds=3600))
    assert ok.allowed, ok.reasons
    assert any("1.0 s of wall time at speed 3600" in x for x in ok.checks)
    stale = check_action_allowed(st, open_(c), fast, now=NOW + timedelta(seconds=40 * 3600))
    assert not stale.allowed and "40.0 s of wall time" in stale.reasons[0]
    # Against a paper exchange elsewhere (its own wall clock) or Deribit, market time is wall time.
    remote = settings(paper_speed=3600.0, max_state_age_sec=30.0, paper_exchange_url="http://127.0.0.1:9")
    assert not check_action_allowed(st, open_(c), remote, now=NOW + timedelta(seconds=3600)).allowed


def test_reducing_close_is_allowed_even_when_everything_is_over_the_limit():
    p = short_call(size=-0.5)
    a = Action(action=ActionType.CLOSE_COVERED_CALL, underlying="BTC", symbol=p.instrument_name, size=0.5)
    s = state(positions=[p], equity=0.01, im=5.0, options_delta=-9)
    r = check_action_allowed(s, a, S, now=NOW + timedelta(hours=2))
    assert r.allowed


def test_close_of_something_not_short_is_blocked():
    a = Action(action=ActionType.CLOSE_COVERED_CALL, underlying="BTC", symbol="BTC-X-1-C", size=0.1)
    assert not check_action_allowed(state(), a, S).allowed


def test_roll_must_go_up_and_out():
    p = short_call(strike=100_000, dte=5)
    down = candidate(1, strike=99_000, dte=8)
    a = Action(action=ActionType.ROLL_COVERED_CALL, underlying="BTC", symbol=down.instrument_name, roll_from=p.instrument_name, size=0.1)
    r = check_action_allowed(state(positions=[p], candidates=[down]), a, S)
    assert not r.allowed and any("up and out" in x for x in r.reasons)


def test_blocked_action_becomes_do_nothing_with_reason():
    c = candidate()
    result, final = apply_risk(state(candidates=[c], equity=0.05), open_(c), S)
    assert not result.allowed
    assert final.action == ActionType.DO_NOTHING
    assert "Risk engine blocked: uncovered" in final.reasoning


# --- properties -------------------------------------------------------------------------

sizes = st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3, 1.0, 2.5, -0.1])


@st.composite
def scenarios(draw):
    n_c = draw(st.integers(0, 4))
    cands = [candidate(i + 1, strike=draw(st.sampled_from([96_000, 100_000, 104_000, 110_000])),
                       dte=draw(st.sampled_from([2, 5, 7, 9])), delta=draw(st.floats(0.05, 0.6)),
                       bid=draw(st.floats(0.0005, 0.03))) for i in range(n_c)]
    n_p = draw(st.integers(0, 2))
    pos = [short_call(i + 1, strike=draw(st.sampled_from([95_000, 100_000])), dte=draw(st.sampled_from([1, 3, 6])),
                      size=-draw(st.sampled_from([0.1, 0.2, 0.5])), delta=draw(st.floats(0.01, 0.9))) for i in range(n_p)]
    s = state(candidates=cands, positions=pos, equity=draw(st.sampled_from([0.0, 0.1, 0.3, 1.0, 3.0])),
              im=draw(st.floats(0, 1)))
    symbols = [c.instrument_name for c in cands] + [p.instrument_name for p in pos] + ["BTC-INVENTED-1-C", None]
    action = Action(action=draw(st.sampled_from(list(ActionType))), underlying="BTC",
                    symbol=draw(st.sampled_from(symbols)), roll_from=draw(st.sampled_from(symbols)), size=draw(sizes))
    cfg = settings(default_order_size=draw(st.sampled_from([0.1, 0.2, 1.0])),
                   max_expiry_exposure=draw(st.sampled_from([0.1, 0.5, 2.0])))
    return s, action, cfg


@hsettings(max_examples=400, deadline=None)
@given(scenarios())
def test_nothing_allowed_leaves_the_book_uncovered_over_a_limit_or_invented(scn):
    s, a, cfg = scn
    r = check_action_allowed(s, a, cfg)
    if not r.allowed or a.action == ActionType.DO_NOTHING:
        return
    known = {c.instrument_name for c in s.candidates} | {p.instrument_name for p in s.positions}
    assert a.symbol in known
    if a.action == ActionType.ROLL_COVERED_CALL:
        assert a.roll_from in known
    if a.action == ActionType.CLOSE_COVERED_CALL:
        return  # reducing: the book only gets smaller
    shorts = {p.instrument_name: abs(p.size) for p in s.short_calls}
    if a.roll_from:
        shorts[a.roll_from] -= a.size
    shorts[a.symbol] = shorts.get(a.symbol, 0.0) + a.size
    assert sum(shorts.values()) <= s.account.equity + 1e-9
    assert a.size <= cfg.default_order_size + 1e-9 or a.action == ActionType.ROLL_COVERED_CALL
    new = s.candidate(a.symbol)
    added = a.size * short_call_margin(new.strike, new.forward, new.mark)
    if a.action == ActionType.OPEN_COVERED_CALL:
        assert (s.account.initial_margin + added) / s.account.equity * 100 <= cfg.max_margin_used_pct + 1e-6


@hsettings(max_examples=200, deadline=None)
@given(st.sampled_from([0.1, 0.2, 0.5]), st.floats(0, 10), st.floats(-20, 20), st.floats(0, 5), st.integers(0, 3600))
def test_a_reducing_close_is_never_blocked(size, im, delta, equity, age_s):
    p = short_call(size=-size)
    a = Action(action=ActionType.CLOSE_COVERED_CALL, underlying="BTC", symbol=p.instrument_name, size=size)
    s = state(positions=[p], equity=equity, im=im, options_delta=delta)
    assert check_action_allowed(s, a, S, now=NOW + timedelta(seconds=age_s)).allowed


def test_a_resting_sell_counts_as_short_for_coverage():
    from agent.models import WorkingOrder

    c = candidate()
    resting = WorkingOrder(order_id="BTC-9", instrument_name="BTC-9OTHER-100000-C", direction="sell", amount=0.3,
                           filled_amount=0.0, price=0.01, label="manual", expiration_timestamp=c.expiration_timestamp)
    s = state(candidates=[c], equity=0.35).model_copy(update={"open_orders": (resting,)})
    r = check_action_allowed(s, open_(c), S)
    assert not r.allowed and any("uncovered: 0.4 short" in x for x in r.reasons)


def test_deltas_are_premium_adjusted_like_deribits_options_delta():
    # A 0.25-delta call worth 0.006 BTC changes the book by size * (0.25 - 0.006).
    c = candidate(delta=0.25, bid=0.006, ask=0.0062)
    r = check_action_allowed(state(candidates=[c]), open_(c), S)
    assert r.allowed
    assert f"options delta (premium-adjusted) after {-0.1 * (0.25 - c.mark):+.3f}" in r.checks


def test_the_net_limit_counts_the_coin_held_and_never_refuses_what_lowers_it():
    c = candidate(delta=0.3)
    tight = settings(max_net_delta_abs=0.5)
    # 1 BTC held: net +1.0 is over 0.5, but a covered call lowers it: allowed.
    r = check_action_allowed(state(candidates=[c]), open_(c), tight)
    assert r.allowed and any("net delta (coin held + options) after +0.97" in x for x in r.checks)
    # A roll that raises it past the limit is refused, and the reason names the coin held.
    p = short_call(strike=100_000, dte=3, delta=0.9, mark=0.05, ask=0.051)
    up = candidate(2, strike=110_000, dte=8, delta=0.1, bid=0.06, mark=0.0005, ask=0.0007)
    roll = Action(action=ActionType.ROLL_COVERED_CALL, underlying="BTC", symbol=up.instrument_name,
                  roll_from=p.instrument_name, size=0.1)
    r = check_action_allowed(state(candidates=[up], positions=[p]), roll, tight)
    assert not r.allowed and any("net delta (coin held 1.0000 + options)" in x for x in r.reasons)
    assert check_action_allowed(state(candidates=[up], positions=[p]), roll, S).allowed  # no net limit by default
