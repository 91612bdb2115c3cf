"""Serve a PaperExchange over real HTTP on 127.0.0.1 for the length of a test."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

from agent.deribit.paper import PaperExchange
from agent.deribit.paper_server import serve


@asynccontextmanager
async def paper_http(exchange: PaperExchange) -> AsyncIterator[str]:
    """Yield the base URL (http://127.0.0.1:<free port>) of `exchange` served by aiohttp."""
    runner, port = await serve(exchange, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
