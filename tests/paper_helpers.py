"""Shared pieces of the paper exchange's tests (tests/test_paper_exchange.py, tests/test_paper_orders.py):
the simulated clock and exchange fixtures, in-process JSON-RPC calls, and a book row that trades."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

from agent.clock import SimClock
from agent.deribit.paper import PaperExchange


T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)  # a Wednesday
T0_MS = int(T0.timestamp() * 1000)
NAME = re.compile(r"^BTC-([1-9]\d?)([A-Z]{3})(\d{2})-(\d+)-([CP])$")


@pytest.fixture
def clock() -> SimClock:
    return SimClock(start_ms=T0_MS)


@pytest.fixture
def ex(clock: SimClock) -> PaperExchange:
    return PaperExchange(clock=clock, state_path=None)


async def call(ex: PaperExchange, method: str, token: str | None = None, **params):
    """One JSON-RPC call in process; returns the envelope."""
    return await ex.handle(method, params, token, request_id=1)


async def result(ex: PaperExchange, method: str, token: str | None = None, **params):
    env = await call(ex, method, token, **params)
    assert "error" not in env, env
    return env["result"]


async def login(ex: PaperExchange) -> str:
    r = await result(ex, "public/auth", grant_type="client_credentials", client_id="id", client_secret="secret")
    return r["access_token"]


def books(ex: PaperExchange, clock: SimClock) -> list[dict]:
    m = ex.markets["BTC"]
    return m.summaries(clock.now_ms(), m.spot(clock.now_ms()))


def pick(ex: PaperExchange, clock: SimClock, *, expiry: str | None = None, kind: str = "C",
         lo: float = 0.005, hi: float = 0.05) -> dict:
    """A book row with a bid in [lo, hi]: something that trades."""
    for b in books(ex, clock):
        n = b["instrument_name"]
        if n.endswith("-" + kind) and (expiry is None or f"-{expiry}-" in n) and b["bid_price"] and lo <= b["bid_price"] <= hi:
            return b
    raise AssertionError("no such option")
