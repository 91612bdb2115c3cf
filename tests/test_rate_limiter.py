"""The client-side limiter follows Deribit's credit model, on an injected clock."""

from __future__ import annotations

from agent.deribit.client import RateLimiter


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


async def test_ordinary_calls_burst_100_then_20_per_second():
    ft = FakeTime()
    lim = RateLimiter(clock=ft.clock, sleep=ft.sleep)
    for _ in range(100):
        await lim.acquire("public/ticker")
    assert ft.t == 0.0  # the burst is free
    for _ in range(40):
        await lim.acquire("public/ticker")
    assert abs(ft.t - 2.0) < 1e-6  # then 20 per second


async def test_order_calls_have_their_own_5_per_second():
    ft = FakeTime()
    lim = RateLimiter(clock=ft.clock, sleep=ft.sleep)
    for _ in range(5):
        await lim.acquire("private/sell")
    assert ft.t == 0.0
    for _ in range(10):
        await lim.acquire("private/buy")
    assert abs(ft.t - 2.0) < 1e-6
    # ordinary calls were not charged by the orders
    for _ in range(100):
        await lim.acquire("private/get_positions")
    assert abs(ft.t - 2.0) < 1e-6


async def test_credits_reported_per_call():
    ft = FakeTime()
    lim = RateLimiter(clock=ft.clock, sleep=ft.sleep)
    assert await lim.acquire("public/get_index_price") == 500
    assert await lim.acquire("private/sell") == 0
