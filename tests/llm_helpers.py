"""Hand-built states, settings and answers for the LLM tests (a fake OpenAI server does the rest)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from agent.config import load_settings
from agent.models import AccountState, Action, ActionType, AgentState, Candidate, OptionPosition, PositionHistory

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


