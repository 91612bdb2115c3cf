"""Hand-built agent states for tests of the pure policy and risk engine."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from agent.config import Settings, load_settings
from agent.models import AccountState, AgentState, Candidate, OptionPosition, PositionHistory

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
DAY_MS = 86_400_000


def settings(**kw) -> Settings:
    return load_settings(env_file=None, **kw)


def expiry_ms(days: float) -> int:
    return int((NOW + timedelta(days=days)).timestamp() * 1000)


def candidate(n: int = 1, *, strike: float = 100_000, dte: float = 7, delta: float = 0.25, bid: float = 0.006,
              ask: float | None = 0.0062, mark: float | None = None, forward: float = 96_000, oi: float = 200,
              score: float | None = None, min_trade: float = 0.1) -> Candidate:
    mark = mark if mark is not None else bid if ask is None else (bid + ask) / 2
    yld = bid * 365 / dte * 100
    return Candidate(
        id=f"c{n}", instrument_name=f"BTC-{n}TEST-{int(strike)}-C", strike=strike, expiration_timestamp=expiry_ms(dte),
        dte=dte, delta=delta, mark_iv=50.0, forward=forward, bid=bid, ask=ask, mark=mark, bid_usd=bid * forward,
        ask_usd=ask * forward if ask else None, mark_usd=mark * forward, otm_pct=(strike / forward - 1) * 100,
        annualized_yield_pct=yld, open_interest=oi, spread_pct=((ask or bid) - bid) / mark * 100,
        score=score if score is not None else yld - 100 * abs(delta - 0.25) - 2 * abs(dte - 7),
        min_trade_amount=min_trade, tick_size=0.0001, tick_size_steps=((0.005, 0.0005),),
    )


def short_call(n: int = 1, *, strike: float = 100_000, dte: float = 5, size: float = -0.1, avg: float = 0.006,
               mark: float = 0.004, ask: float | None = 0.0042, bid: float | None = 0.0038, delta: float = 0.2,
               forward: float = 96_000) -> OptionPosition:
    return OptionPosition(
        id=f"p{n}", instrument_name=f"BTC-{n}POS-{int(strike)}-C", option_type="call", strike=strike,
        expiration_timestamp=expiry_ms(dte), dte=dte, size=size, average_price=avg, mark=mark, bid=bid, ask=ask,
        delta=delta, mark_iv=50.0, forward=forward, min_trade_amount=0.1, tick_size=0.0001,
        tick_size_steps=((0.005, 0.0005),),
    )


def state(*, candidates=(), positions=(), equity: float = 1.0, spot: float = 95_000, im: float = 0.0,
          options_delta: float | None = None, history: PositionHistory | None = None, ts: datetime = NOW,
          roll_candidates=()) -> AgentState:
    if options_delta is None:
        options_delta = sum(p.size * p.delta_pa for p in positions)  # premium-adjusted, as Deribit states it
    return AgentState(
        timestamp=ts, underlying="BTC", spot=spot, forward=spot * 1.001,
        account=AccountState(currency="BTC", equity=equity, balance=equity, available_funds=equity - im,
                             initial_margin=im, maintenance_margin=im / 2,
                             margin_used_pct=im / equity * 100 if equity else 0.0, options_delta=options_delta),
        positions=tuple(positions), candidates=tuple(candidates), roll_candidates=tuple(roll_candidates), chain_size=800,
        history=history or PositionHistory(),
    )
