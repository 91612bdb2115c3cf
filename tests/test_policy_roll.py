"""Rolls go into their own window over the whole chain; a deep in-the-money call with no credit roll
gets one notice with the numbers and the choices."""

from __future__ import annotations

from agent.models import ActionType
from agent.policy import decide_action, fee, roll_targets
from agent.risk import check_action_allowed
from tests.builders import candidate, settings, short_call, state

S = settings()


def test_roll_settings_come_from_the_profile_and_can_be_set_alone():
    assert (S.roll_min_dte, S.roll_max_dte, S.roll_target_delta, S.roll_max_delta) == (5.0, 21.0, 0.25, 0.30)
    r = settings(mode="research")
    assert (r.roll_min_dte, r.roll_max_dte, r.roll_max_delta) == (1.0, 30.0, 0.45)
    assert settings(roll_max_dte=14).roll_max_dte == 14


def test_roll_goes_into_the_roll_window_beyond_the_opening_window():
    # Spot at 98 % of strike: the 5-10 DTE opening window offers no credit, the 14-DTE call does.
    p = short_call(strike=100_000, dte=3, delta=0.45, ask=0.012, mark=0.0118)
    opening = candidate(1, strike=103_000, dte=8, delta=0.22, bid=0.008, ask=0.0082)  # debit: 0.008 < 0.012
    far = candidate(2, strike=104_000, dte=14, delta=0.26, bid=0.0155, ask=0.0158)
    too_far = candidate(3, strike=106_000, dte=28, delta=0.25, bid=0.03, ask=0.031)  # beyond ROLL_MAX_DTE 21
    s = state(positions=[p], candidates=[opening], roll_candidates=[far, too_far], spot=98_000)
    a = decide_action(s, S)
    assert a.action == ActionType.ROLL_COVERED_CALL and a.symbol == far.instrument_name
    assert "window 5-21 DTE, delta <= 0.3" in a.reasoning
    net = 0.0155 - 0.012 - fee(0.0155) - fee(0.012)
    assert f"{net:.4f}" in a.reasoning
    # Nearest first, debits included (the policy takes the nearest credit): too_far is outside the window.
    assert [c.instrument_name for c, _, _ in roll_targets(s, p, S)] == [opening.instrument_name, far.instrument_name]
    # The risk engine accepts a roll into the roll window (and only a roll: an open must be a candidate).
    assert check_action_allowed(s, a, S).allowed


def test_roll_picks_the_target_nearest_credit_and_names_the_runner_up():
    p = short_call(strike=100_000, dte=3, delta=0.55, ask=0.004, mark=0.0039)
    near = candidate(1, strike=104_000, dte=7, delta=0.25, bid=0.006, ask=0.0062)
    richer = candidate(2, strike=103_000, dte=12, delta=0.29, bid=0.011, ask=0.0112)
    a = decide_action(state(positions=[p], roll_candidates=[richer, near], spot=97_000), S)
    assert a.symbol == near.instrument_name and f"it beat {richer.instrument_name}" in a.reasoning


def test_deep_itm_without_a_credit_roll_holds_with_a_notice_of_the_choices():
    p = short_call(strike=100_000, dte=2, delta=0.9, ask=0.075, mark=0.074, bid=0.073, avg=0.006)
    c = candidate(1, strike=110_000, dte=9, delta=0.28, bid=0.02, ask=0.021)
    a = decide_action(state(positions=[p], roll_candidates=[c], spot=108_000), S)
    assert a.action == ActionType.DO_NOTHING and "no candidate" in a.reasoning and "net credit" in a.reasoning
    assert a.notice_key == f"deep_itm:{p.instrument_name}"
    assert "deep in the money" in a.notice and "108.0% of the 100,000 strike" in a.notice
    intrinsic = 0.1 * (108_000 - 100_000) / 108_000
    assert f"{intrinsic:.4f} BTC" in a.notice and "hold to expiry and be called away in cash" in a.notice
    debit = 0.1 * 0.075 + 0.1 * fee(0.075)
    assert f"close now at a debit of about {debit:.4f} BTC" in a.notice


def test_no_notice_when_not_deep_or_when_a_roll_exists():
    p = short_call(strike=100_000, dte=3, delta=0.6, ask=0.02, mark=0.019)
    a = decide_action(state(positions=[p], roll_candidates=[candidate(1, strike=104_000, dte=8, bid=0.006)], spot=99_000), S)
    assert a.action == ActionType.DO_NOTHING and a.notice is None  # roll wanted, not deep ITM
