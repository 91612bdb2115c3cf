"""Front ends of the paper exchange: an in-process httpx transport and an aiohttp HTTP server.

Both parse a request the same way (`dispatch`): `GET /api/v2/<public|private>/<method>?params` or a
JSON-RPC body POSTed to the same path (or to `/api/v2` with the method in the body), with the
token in `Authorization: Bearer`. Both play the transport faults of `exchange.faults`: a dropped
connection, or a bare 5xx without a JSON body.
"""

from __future__ import annotations

import asyncio
import json

import pydantic_core
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import httpx
from aiohttp import web

if TYPE_CHECKING:
    from .paper import PaperExchange

API_PREFIX = "/api/v2"
# Built once: a fresh encoder per call (what json.dumps(separators=...) does) is twice as slow.
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclass(frozen=True)
class HttpReply:
    """What to send back: a body and status, or nothing at all (drop the connection)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    drop: bool = False


def _json_reply(envelope: dict[str, Any]) -> HttpReply:
    err = envelope.get("error")
    # Deribit answers auth failures with HTTP 400; every other JSON-RPC error rides on a 200.
    status = 400 if isinstance(err, dict) and err.get("code") in (13004, 13009, -32700) else 200
    return HttpReply(status, _encode(envelope))


def _encode(envelope: dict[str, Any]) -> bytes:
    """Compact JSON. pydantic-core's encoder (Rust) is about 3x faster than the standard library's
    on a 10,000-option book; floats come out in their shortest round-trip form either way."""
    try:
        return pydantic_core.to_json(envelope)
    except (pydantic_core.PydanticSerializationError, ValueError):  # e.g. a NaN: the stdlib writes it
        return _ENCODER.encode(envelope).encode()


def _error_envelope(code: int, message: str, data: Any = None, request_id: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message, "data": data}, "testnet": True}


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def dispatch(exchange: "PaperExchange", verb: str, path: str, query: Mapping[str, str], body: bytes,
                   authorization: str | None) -> HttpReply:
    """Parse one HTTP request into a JSON-RPC call, run it (and any fault), and say what to answer."""
    path = path.rstrip("/")
    if path != API_PREFIX and not path.startswith(API_PREFIX + "/"):
        return HttpReply(404, b"not found", "text/plain")
    method = path[len(API_PREFIX) + 1:]
    params: dict[str, Any] = dict(query)
    request_id: Any = None
    if verb.upper() == "POST" and body.strip():
        try:
            rpc = json.loads(body)
        except ValueError:
            return _json_reply(_error_envelope(-32700, "Parse error"))
        if not isinstance(rpc, dict):
            return _json_reply(_error_envelope(-32600, "Invalid Request"))
        request_id = rpc.get("id")
        method = method or str(rpc.get("method") or "")
        body_params = rpc.get("params") or {}
        if not isinstance(body_params, dict):
            return _json_reply(_error_envelope(-32602, "Invalid params", {"reason": "params must be an object"}, request_id))
        params.update(body_params)
    elif verb.upper() not in ("GET", "POST"):
        return HttpReply(405, b"method not allowed", "text/plain")

    fault = exchange.faults.take_http(method)
    if fault is not None and fault.after_processing:
        await exchange.handle(method, params, _bearer(authorization), request_id)
    if fault is not None:
        if fault.kind == "drop":
            return HttpReply(drop=True)
        text = f"{fault.status} {_REASONS.get(fault.status, 'Error')}"
        return HttpReply(fault.status, text.encode(), "text/plain")
    return _json_reply(await exchange.handle(method, params, _bearer(authorization), request_id))


# --- in process --------------------------------------------------------------------------------


def transport(exchange: "PaperExchange") -> httpx.MockTransport:
    """An httpx transport (for `httpx.AsyncClient`) that answers from `exchange` without a socket."""

    async def handler(request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        reply = await dispatch(exchange, request.method, request.url.path, dict(request.url.params.multi_items()),
                               body, request.headers.get("authorization"))
        if reply.drop:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(reply.status, content=reply.body, headers={"content-type": reply.content_type})

    return httpx.MockTransport(handler)


# --- over HTTP ---------------------------------------------------------------------------------


def make_web_app(exchange: "PaperExchange") -> web.Application:
    """An aiohttp application serving `exchange` under /api/v2."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        reply = await dispatch(exchange, request.method, request.path, dict(request.query), body,
                               request.headers.get("Authorization"))
        if reply.drop:
            # Close the socket with nothing written: the client sees the peer hang up mid-request.
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)

    app = web.Application(client_max_size=32 * 1024)
    app.router.add_route("*", API_PREFIX, handle)
    app.router.add_route("*", API_PREFIX + "/{tail:.*}", handle)
    return app


async def serve(exchange: "PaperExchange", host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Start serving on host:port (0: a free port); returns the runner (call `cleanup()`) and the port."""
    runner = web.AppRunner(make_web_app(exchange), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, int(runner.addresses[0][1])


def run_server(exchange: "PaperExchange", host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve until interrupted (the `chatops paper-exchange` command)."""

    async def main() -> None:
        runner, actual = await serve(exchange, host, port)
        print(f"paper exchange listening on http://{host}:{actual}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
