"""A fake OpenAI-compatible server: `POST /v1/chat/completions` plays scripted answers.

Bound to 127.0.0.1 on a free port, so the real `openai.AsyncOpenAI` client (which sends over
httpx2, out of respx's sight) talks to it across a real socket. Every request body is recorded
so tests can assert on the prompt, the temperature and the response_format.

    async with fake_openai_server(Reply(content='{"action": "DO_NOTHING", ...}')) as srv:
        client = openai.AsyncOpenAI(base_url=srv.base_url, api_key="k", max_retries=0)
        ...
        assert srv.requests[0]["temperature"] == 0

Server-wide modes: `reasoning_model=True` answers like OpenAI's reasoning models (o1, o3, o4-mini,
gpt-5...): a 400 with `param` and `code` for `max_tokens` and for a temperature other than 1, and
reasoning tokens that count against `max_completion_tokens`; `reject_response_format=True`
refuses structured output; both together reject both.
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


REJECT_MAX_TOKENS_BODY = {
    "error": {
        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                   "Use 'max_completion_tokens' instead.",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "unsupported_parameter",
    }
}

REJECT_TEMPERATURE_BODY = {
    "error": {
        "message": "Unsupported value: 'temperature' does not support 0 with this model. "
                   "Only the default (1) value is supported.",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "unsupported_value",
    }
}

REJECT_REASONING_EFFORT_BODY = {
    "error": {
        "message": "Unrecognized request argument supplied: reasoning_effort",
        "type": "invalid_request_error",
        "param": "reasoning_effort",
        "code": "unsupported_parameter",
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
    echo_authorization: bool = False  # with a non-200 status: the error message quotes the Authorization header


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
    reasoning_model: bool = False  # server-wide: answer like an OpenAI reasoning model (see the module doc)
    reasoning_tokens: int = 192  # hidden tokens a reasoning model spends before it writes the answer
    reject_reasoning_effort: bool = False  # server-wide: a model that takes no reasoning_effort
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
        if self.reasoning_model and isinstance(body, dict):
            if body.get("max_tokens") is not None:
                return web.json_response(REJECT_MAX_TOKENS_BODY, status=400)
            if body.get("temperature") is not None and body.get("temperature") != 1:
                return web.json_response(REJECT_TEMPERATURE_BODY, status=400)
        if self.reject_reasoning_effort and isinstance(body, dict) and body.get("reasoning_effort") is not None:
            return web.json_response(REJECT_REASONING_EFFORT_BODY, status=400)
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
            if reply.echo_authorization:  # as some OpenAI-compatible proxies do
                err = {"error": {"message": f"Incorrect API key provided: {request.headers.get('Authorization')}",
                                 "type": "invalid_request_error", "code": "invalid_api_key"}}
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
        if self.reasoning_model:
            # Reasoning first, then the answer, all within max_completion_tokens.
            limit = body.get("max_completion_tokens") or 10**9
            answer = len(reply.content or "") // 4
            if self.reasoning_tokens + answer > limit:
                message["content"] = ""
                for choice in out["choices"]:
                    choice["finish_reason"] = "length"
        if reply.usage is DEFAULT:
            prompt_tokens = max(1, len(json.dumps(body.get("messages", ""))) // 4)
            completion_tokens = len(message.get("content") or reply.refusal or "") // 4
            usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                     "total_tokens": prompt_tokens + completion_tokens}
            if self.reasoning_model:
                spent = min(self.reasoning_tokens, body.get("max_completion_tokens") or self.reasoning_tokens)
                usage["completion_tokens"] += spent
                usage["total_tokens"] += spent
                usage["completion_tokens_details"] = {"reasoning_tokens": spent}
                usage["prompt_tokens_details"] = {"cached_tokens": (prompt_tokens // 2) // 128 * 128}
            out["usage"] = usage
        elif reply.usage is not None:
            out["usage"] = reply.usage
        return out

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "fake"}]})


@asynccontextmanager
async def fake_openai_server(*replies: Reply, reject_response_format: bool = False, reasoning_model: bool = False,
                             reject_reasoning_effort: bool = False) -> AsyncIterator[FakeOpenAI]:
    """Serve the fake on 127.0.0.1:<free port>; yields it with `base_url` ending in /v1."""
    fake = FakeOpenAI(reject_response_format=reject_response_format, reasoning_model=reasoning_model,
                      reject_reasoning_effort=reject_reasoning_effort)
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
