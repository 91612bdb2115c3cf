"""Shared pieces of the store's tests: a clock, decision and proposal builders, fixtures. The
`store` fixture is parametrized over both engines (SQLite file, PostgreSQL database)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest

from agent.models import (Action, ActionType, Decision, ExecutionResult, ExecutionStatus, OrderOutcome, OrderRequest,
                          RiskResult)
from agent.tick import compress_state, config_snapshot
from chatops.store import Database, Store, connect
from tests.builders import NOW, candidate, settings, short_call, state

class Clock:
    def __init__(self, t: datetime = NOW) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()

@pytest.fixture
def store(target, clock):
    s = Store(target, now=clock)
    yield s
    s.close()


def open_action(n: int = 1, size: float = 0.1) -> Action:
    c = candidate(n)
    return Action(action=ActionType.OPEN_COVERED_CALL, underlying="BTC", symbol=c.instrument_name, size=size,
                  reasoning=f"Open: sell {c.instrument_name}", ref_sell_price=c.bid)


def decision(*, final: Action | None = None, ts: datetime = NOW, config: dict | None = None,
             llm_calls: tuple = (), proposed: Action | None = None, allowed: bool = True) -> Decision:
    st = state(candidates=[candidate(i, strike=96_000 + 2_000 * i) for i in range(1, 12)],
               positions=[short_call(1), short_call(2, strike=104_000)], ts=ts)
    proposed = proposed or final or Action(action=ActionType.DO_NOTHING, underlying="BTC",
                                           reasoning="Hold BTC-1POS-100000-C: no rule fires. | Hold BTC-2POS-104000-C: "
                                                     "no rule fires.")
    return Decision(
        timestamp=ts, underlying="BTC", state=compress_state(st), proposed_action=proposed,
        risk_check=RiskResult(allowed=allowed, checks=("margin ok", "delta ok")), final_action=final or proposed,
        config_snapshot=config if config is not None else config_snapshot(settings()),
        timings_ms={"state_ms": 120.5, "brain_ms": 0.7, "risk_ms": 0.1, "total_ms": 121.4}, requests=5,
        llm_calls=llm_calls,
    )


def new_proposal(store: Store, clock: Clock, *, n: int = 1, ttl: float = 300, required: int = 1):
    a = open_action(n)
    did = store.record_decision(decision(final=a, ts=clock()))
    return store.create_proposal(did, a, expires_at=clock() + timedelta(seconds=ttl), approvals_required=required)

def raw(target: str) -> Database:
    """A second, plain connection to the same database (autocommit): to try what the store never does."""
    return connect(target)


def drop_trigger(c: Database, name: str, table: str) -> None:
    for stmt in c.drop_trigger(name, table):
        c.execute(stmt)


def kinds(store: Store, proposal_id: int | None = None) -> Counter:
    return Counter(e["kind"] for e in store.list_events(proposal_id=proposal_id, limit=100_000))

@pytest.fixture
def full_store(store, clock):
    """One row in every table."""
    p = new_proposal(store, clock)
    store.add_vote(p.id, "alice", "telegram", "approve")
    store.transition(p.id, "pending", "approved", actor="alice", channel="telegram")
    store.transition(p.id, "approved", "executing", actor="agent", channel="executor")
    store.record_execution(p.id, execution_result(p.label))
    store.transition(p.id, "executing", "executed", actor="agent", channel="executor")
    q = store.record_question("bob", "slack", "why", "why this strike?", p.id)
    store.record_answer(q, "delta 0.25 at 7 DTE", "db")
    store.record_llm_call(mode="ask", valid=True, model="m", prompt="p", raw_response="{}")
    store.record_setting_change("max_delta", 0.3, 0.35, actor="alice", channel="cli")
    store.set_flag("paused", "0", actor="alice", channel="cli")
    store.save_message_ref(p.id, "telegram", 42, 1001)
    store.enqueue_outbox("slack", {"text": "hi"}, "timeout")
    from agent.orders import Leg, OrderEvent

    leg = Leg(label=p.label, role="single", instrument="BTC-1TEST-100000-C", side="sell", amount=0.1, state="filled",
              order_id="ord-1", filled=0.1, average_price=0.006)
    store.save_leg(p.id, 0, leg, [OrderEvent(kind="fill", label=p.label, order_id="ord-1", amount=0.1, filled=0.1,
                                             text="filled 0.1")])
    return store, p


def execution_result(label: str, status=ExecutionStatus.FILLED) -> ExecutionResult:
    req = OrderRequest(instrument_name="BTC-1TEST-100000-C", side="sell", amount=0.1, price=0.006, label=label)
    return ExecutionResult(status=status, dry_run=False, message="filled 0.1 at 0.006",
                           orders=(OrderOutcome(request=req, order_id="ord-1", order_state="filled", filled_amount=0.1,
                                                average_price=0.006),))
