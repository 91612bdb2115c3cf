"""The synthetic market: seeded, clustered stochastic vol, jumps, negative spot-vol correlation,
implied above expected realized by the VRP; and the paper exchange on it listing new strikes."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pytest

from agent.clock import SimClock
from agent.config import load_settings
from agent.deribit.paper import PaperExchange
from agent.deribit.paper_market import GRID, grid_spacing
from agent.market import model_from_dict, synthetic
from agent.market.synthetic import realized_vol
from agent.backtest_client import InProcessClient
from agent.state import build_agent_state

T0 = int(datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)
HOUR = 3_600_000
DAY = 24 * HOUR
YEAR = 365 * DAY


def _hourly_log_returns(path, days: int) -> np.ndarray:
    logs = np.log([path.spot(T0 + h * HOUR) for h in range(days * 24 + 1)])
    return np.diff(logs)


def test_seeded_and_independent_of_sampling_order():
    a, b = synthetic("BTC", 11, T0, 95_000.0), synthetic("BTC", 11, T0, 95_000.0)
    late = T0 + 200 * DAY + 12_345
    assert b.spot(late) == a.spot(late)  # b jumps straight there
    assert [a.spot(T0 + h * 7 * HOUR) for h in range(300)] == [b.spot(T0 + h * 7 * HOUR) for h in range(300)]
    assert synthetic("BTC", 12, T0, 95_000.0).spot(late) != a.spot(late)
    assert synthetic("ETH", 11, T0, 95_000.0).spot(late) != a.spot(late)
    # Saved and rebuilt (the paper state file), it is the same path.
    assert model_from_dict(a.to_dict()).spot(late) == a.spot(late)


def test_implied_vol_is_above_the_realized_that_follows_by_about_the_vrp():
    gaps = {0.0: [], 0.05: []}
    for seed in range(6):
        for vrp in gaps:
            p = synthetic("BTC", seed, T0, 95_000.0, vrp=vrp)
            for t in range(T0, T0 + YEAR - 7 * DAY, 7 * DAY):
                gaps[vrp].append(p.atm_vol(t, 7 / 365) - realized_vol(p, t, t + 7 * DAY))
    mean0, mean5 = float(np.mean(gaps[0.0])), float(np.mean(gaps[0.05]))
    assert mean5 - mean0 == pytest.approx(0.05, abs=1e-9)  # the premium is exactly what --vrp adds
    assert 0.03 < mean5 < 0.09  # and on a realized path the seller keeps about that on average


def test_volatility_clusters_jumps_happen_and_spot_falls_when_vol_rises():
    p = synthetic("BTC", 3, T0, 95_000.0)
    r = _hourly_log_returns(p, 365)
    # Clustering: a stormy day follows a stormy day (log daily realized variance is autocorrelated;
    # on the constant-vol random walk it is not).
    daily = np.log((r * r).reshape(365, 24).sum(axis=1))
    assert np.corrcoef(daily[:-1], daily[1:])[0, 1] > 0.3
    # Jumps: moves far in the tails of a normal with the path's own vol.
    assert np.sum(np.abs(r) > 6 * r.std()) >= 1
    # Negative spot-vol correlation: daily spot returns against the change in implied vol.
    days = np.arange(T0, T0 + 365 * DAY, DAY)
    spot = np.log([p.spot(int(t)) for t in days])
    iv = np.array([p.atm_vol(int(t), 30 / 365) for t in days])
    assert np.corrcoef(np.diff(spot), np.diff(iv))[0, 1] < -0.2
    # A smile: wings above the money.
    atm = p.atm_vol(T0, 7 / 365)
    assert p.smile_iv(atm, 95_000, 80_000, 7 / 365) > atm and p.smile_iv(atm, 95_000, 110_000, 7 / 365) > atm


@pytest.mark.parametrize("on_synthetic", [False, True])
async def test_new_strikes_list_as_spot_moves(on_synthetic):
    """After +16 % the weekly grid listed at the old forward no longer reaches a 0.15-0.30 delta
    call; the exchange lists more strikes on Deribit's grid and candidates are there at once."""
    clock = SimClock(T0 + 9 * HOUR)  # Wednesday 09:00, after the day's listing
    models = {"BTC": synthetic("BTC", 5, T0, 95_000.0)} if on_synthetic else None
    ex = PaperExchange(clock=clock, state_path=None, models=models, client_id=None, client_secret=None)
    market = ex.markets["BTC"]
    before = {ms: e.strikes for ms, e in market.expiries.items()}
    clock.advance(60)
    ex.shock(16.0)
    client = InProcessClient(ex)
    settings = load_settings(env_file=None)
    try:
        state = await build_agent_state(client, settings, clock=clock)
    finally:
        await client.aclose()
    assert state.candidates, "no candidate after a +16 % move"
    grown = [ms for ms, e in market.expiries.items() if len(e.strikes) > len(before[ms])]
    assert grown
    for ms in grown:
        e = market.expiries[ms]
        sp = grid_spacing(e.listing_forward, e.kind)
        assert set(before[ms]) <= set(e.strikes)  # nothing unlisted
        assert all(abs(k / sp - round(k / sp)) < 1e-9 for k in e.strikes)  # on the expiry's own grid
        steps = np.diff(e.strikes)
        assert np.allclose(steps, sp)  # contiguous
        assert max(e.strikes) >= state.forward * (1 + GRID[e.kind][1] / 2) - sp
    best = state.candidates[0]
    assert best.instrument_name in {i for i in market.options}
    assert best.strike > max(before[best.expiration_timestamp])  # a strike that did not exist before
    assert math.isfinite(best.bid) and best.bid > 0
