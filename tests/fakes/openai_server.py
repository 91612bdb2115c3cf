"""A fake OpenAI-compatible server: `POST /v1/chat/completions` plays scripted answers.

Bound to 127.0.0.1 on a free port, so the real `openai.AsyncOpenAI` client (which sends over
httpx2, out of respx's sight) talks to it across a real socket. Every request body is recorded
so tests can assert on the prompt, the temperature and the response_format.

    async with fake_openai_server(Reply(content='{"action": "DO_NOTHING", ...}')) as srv:
        client = openai.AsyncOpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
        ...
        assert srv.requests[0]["temperature"] == 0
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from aiohttp import web

DEFAULT = object()  # "compute a plausible usage block"

REJECT_FORMAT_BODY = {
    "error": {
        "message": "response_format of type json_schema is not supported by this model",
        "type": "invalid_request_error",
        "param": "response_format",
        "code": None,
    }
}


@dataclass
class Reply:
    """One scripted answer. Defaults give a plain successful completion."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    refusal: str | None = None
    finish_reason: str = "stop"
    usage: Any = DEFAULT  # a dict, None (omit the block) or DEFAULT (estimate from the bytes)
    status: int = 200
    error_body: Any = None  # JSON-able body (or str) sent with a non-200 status
    delay: float = 0.0  # seconds to wait before answering
    reject_response_format: bool = False  # 400 while the request carries response_format
    reject_status: int = 400  # the status of that rejection (some proxies say 422)
    raw_body: str | None = None  # sent verbatim (status 200), e.g. broken JSON
    model: str | None = None  # model name echoed back (default: the request's)
    no_choices: bool = False  # answer with "choices": []


def json_reply(obj: Any, **kw: Any) -> Reply:
    """A reply whose content is `obj` serialised as JSON."""
    return Reply(content=json.dumps(obj), **kw)


def error_reply(status: int, message: str = "scripted error", **kw: Any) -> Reply:
    return Reply(status=status, error_body={"error": {"message": message, "type": "server_error", "code": None}}, **kw)


@dataclass
class FakeOpenAI:
    """The running server: its base URL, the script still to play, and what it received."""

    base_url: str = ""
    script: deque[Reply] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)  # parsed JSON bodies, in order
    headers: list[dict[str, str]] = field(default_factory=list)
    reject_response_format: bool = False  # server-wide: every request with response_format gets 400
    responder: Any = None  # optional callable(body) -> Reply, used when the script is empty
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def push(self, *replies: Reply) -> None:
        self.script.extend(replies)

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]

    async def _completions(self, request: web.Request) -> web.Response:
        text = await request.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = {"_unparsed": text}
        self.requests.append(body)
        self.headers.append({k.lower(): v for k, v in request.headers.items()})

        has_format = isinstance(body, dict) and body.get("response_format") is not None
        if has_format and self.reject_response_format:
            return web.json_response(REJECT_FORMAT_BODY, status=400)
        if not self.script and self.responder is not None:
            self.script.append(self.responder(body))
        if not self.script:
            return web.json_response({"error": {"message": "fake server: no scripted answer left", "type": "server_error"}},
                                     status=500)
        reply = self.script[0]
        if reply.reject_response_format and has_format:
            # The entry stays queued: the client's retry without response_format gets it.
            return web.json_response(REJECT_FORMAT_BODY, status=reply.reject_status)
        self.script.popleft()

        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.status != 200:
            err = reply.error_body if reply.error_body is not None else {"error": {"message": f"status {reply.status}"}}
            if isinstance(err, str):
                return web.Response(text=err, status=reply.status, content_type="text/plain")
            return web.json_response(err, status=reply.status)
        if reply.raw_body is not None:
            return web.Response(text=reply.raw_body, status=200, content_type="application/json")
        return web.json_response(self._completion(body, reply))

    def _completion(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": reply.refusal}
        if reply.tool_calls is not None:
            message["tool_calls"] = reply.tool_calls
        out: dict[str, Any] = {
            "id": f"chatcmpl-fake{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or body.get("model", "fake-model"),
            "choices": [] if reply.no_choices else [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}
            ],
        }
        if reply.usage is DEFAULT:
            prompt_tokens = max(1, len(json.dumps(body.get("messages", ""))) // 4)
            completion_tokens = len(reply.content or reply.refusal or "") // 4
            out["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens}
        elif reply.usage is not None:
            out["usage"] = reply.usage
        return out

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "fake"}]})


@asynccontextmanager
async def fake_openai_server(*replies: Reply, reject_response_format: bool = False) -> AsyncIterator[FakeOpenAI]:
    """Serve the fake on 127.0.0.1:<free port>; yields it with `base_url` ending in /v1."""
    fake = FakeOpenAI(reject_response_format=reject_response_format)
    fake.push(*replies)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake._completions)
    app.router.add_get("/v1/models", fake._models)
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.base_url = f"http://{host}:{port}/v1"
    try:
        yield fake
    finally:
        await runner.cleanup()
