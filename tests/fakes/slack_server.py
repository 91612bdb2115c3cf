"""A fake Slack: the Web API (`POST /api/<method>`), response_url endpoints and a Socket Mode
WebSocket on 127.0.0.1, for the real slack_sdk / slack-bolt clients.

The fake records every call with its params (JSON or form, the token from the Authorization
header), keeps the messages it "posted" by (channel, ts) with their current text and blocks,
checks the bot token (app-level token for apps.connections.open), and lets a test script failures:
the next N calls of a method answer 429 with a Retry-After header, or a Slack error.

Socket Mode: apps.connections.open returns `ws://127.0.0.1:PORT/socket-mode/link`; the WebSocket
sends `hello`, then every envelope the test pushes; the client's acks are kept by envelope id.

    async with fake_slack_server() as slack:
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.base_url)
        ...
        await slack.wait_for(lambda: slack.calls_to("chat.postMessage"))
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

BOT_TOKEN = "xoxb-test"
APP_TOKEN = "xapp-test"
BOT_USER_ID = "UBOT"
TEAM_ID = "T1"

JSON_FIELDS = frozenset({"blocks", "attachments", "view", "metadata"})  # JSON strings when sent as a form


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    token: str | None
    at: float  # time.monotonic() when the request arrived
    status: int = 200
    error: str | None = None


@dataclass
class Failure:
    status: int = 429  # 429: rate limited with Retry-After; 200: {"ok": false, "error": ...}
    retry_after: int = 1
    error: str = "ratelimited"


@dataclass
class StoredMessage:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    user: str = BOT_USER_ID
    history: list[dict[str, Any]] = field(default_factory=list)  # earlier versions, oldest first

    @property
    def buttons(self) -> list[dict[str, Any]]:
        return [e for b in self.blocks if b.get("type") == "actions" for e in b.get("elements", [])]

    @property
    def visible(self) -> str:
        """The words a user sees in the blocks (or the text without blocks), mrkdwn entities decoded."""
        parts: list[str] = []
        for b in self.blocks:
            texts = ([b.get("text")] if b.get("text") else []) + list(b.get("fields") or [])
            texts += [e for e in b.get("elements") or [] if isinstance(e, dict) and "text" in e and e.get("type") != "button"]
            parts += [t["text"] if isinstance(t, dict) else str(t) for t in texts]
        text = "\n".join(parts) if parts else self.text
        return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


@dataclass
class Response:
    """A POST to a response_url."""

    key: str
    body: dict[str, Any]
    at: float

    @property
    def text(self) -> str:
        return str(self.body.get("text", ""))

    @property
    def response_type(self) -> str:
        return str(self.body.get("response_type") or "ephemeral")

    @property
    def visible(self) -> str:
        return StoredMessage("", "", self.text, list(self.body.get("blocks") or [])).visible


class FakeSlack:
    def __init__(self, bot_token: str = BOT_TOKEN, app_token: str = APP_TOKEN) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.base_url = ""  # http://127.0.0.1:PORT/api/
        self.root_url = ""  # http://127.0.0.1:PORT
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], StoredMessage] = {}
        self.ephemerals: list[dict[str, Any]] = []
        self.views: list[dict[str, Any]] = []
        self.responses: list[Response] = []
        self.uploads: dict[str, dict[str, Any]] = {}  # file id -> filename, length, bytes, then channel, title
        self.failures: dict[str, list[Failure]] = {}
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        # Socket Mode
        self.sockets: list[web.WebSocketResponse] = []
        self.acks: dict[str, dict[str, Any]] = {}
        self.socket_connections = 0

    # --- scripting --------------------------------------------------------------------------------

    def rate_limit(self, method: str, times: int = 1, retry_after: int = 1) -> None:
        """The next `times` calls of `method` answer 429 with `Retry-After: retry_after`."""
        self.failures.setdefault(method, []).extend(Failure(429, retry_after) for _ in range(times))

    def fail(self, method: str, error: str, times: int = 1) -> None:
        """The next `times` calls of `method` answer {"ok": false, "error": error}."""
        self.failures.setdefault(method, []).extend(Failure(200, error=error) for _ in range(times))

    def clear_failures(self) -> None:
        self.failures.clear()

    # --- queries ----------------------------------------------------------------------------------

    def calls_to(self, method: str, ok_only: bool = False) -> list[Call]:
        return [c for c in self.calls if c.method == method and (not ok_only or (c.status == 200 and not c.error))]

    def message(self, channel: str, ts: str) -> StoredMessage | None:
        return self.messages.get((str(channel), str(ts)))

    def posted(self, channel: str | None = None) -> list[StoredMessage]:
        return [m for m in self.messages.values() if channel is None or m.channel == channel]

    def ephemerals_for(self, user: str) -> list[dict[str, Any]]:
        return [e for e in self.ephemerals if e.get("user") == user]

    def response_url(self, key: str | None = None) -> str:
        return f"{self.root_url}/respond/{key or uuid.uuid4().hex[:12]}"

    def responses_to(self, url: str) -> list[Response]:
        key = url.rsplit("/", 1)[-1]
        return [r for r in self.responses if r.key == key]

    async def wait_for(self, cond: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
        """Poll `cond` until it returns something truthy; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            await asyncio.sleep(interval)

    # --- Web API ----------------------------------------------------------------------------------

    def _next_ts(self) -> str:
        return f"{1_700_000_000 + next(self._ts)}.{next(self._ids):06d}"

    async def handle_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, Any] = dict(request.query)
        raw = await request.read()
        ctype = request.headers.get("Content-Type", "")
        if raw:
            if "json" in ctype:
                params.update(json.loads(raw.decode()))
            else:
                params.update(dict(parse_qsl(raw.decode(), keep_blank_values=True)))
        for k in JSON_FIELDS:
            if isinstance(params.get(k), str):
                try:
                    params[k] = json.loads(params[k])
                except ValueError:
                    pass
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else params.get("token")
        call = Call(method, params, token, time.monotonic())
        self.calls.append(call)

        queue = self.failures.get(method)
        if queue:
            failure = queue.pop(0)
            if failure.status == 429:
                call.status = 429
                return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                         headers={"Retry-After": str(failure.retry_after)})
            return self._error(call, failure.error)

        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if not token:
            return self._error(call, "not_authed")
        if token != expected:
            wrong_kind = not token.startswith(("xoxb-", "xapp-"))
            return self._error(call, "not_allowed_token_type" if wrong_kind else "invalid_auth")
        handler = getattr(self, "api_" + method.replace(".", "_"), None)
        if handler is None:
            return self._error(call, "unknown_method")
        out = handler(params)
        if isinstance(out, str):
            return self._error(call, out)
        return web.json_response({"ok": True, **out})

    @staticmethod
    def _error(call: Call, error: str) -> web.Response:
        call.error = error
        return web.json_response({"ok": False, "error": error})

    def api_auth_test(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"url": "https://fake.slack.com/", "team": "Fake", "user": "ccbot", "team_id": TEAM_ID,
                "user_id": BOT_USER_ID, "bot_id": "BBOT", "is_enterprise_install": False}

    def api_apps_connections_open(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"url": f"{self.root_url.replace('http://', 'ws://')}/socket-mode/link?ticket={uuid.uuid4().hex[:8]}"}

    def api_chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any] | str:
        channel = str(p.get("channel") or "")
        if not channel:
            return "channel_not_found"
        if not p.get("text") and not p.get("blocks"):
            return "no_text"
        ts = self._next_ts()
        m = StoredMessage(channel, ts, str(p.get("text") or ""), list(p.get("blocks") or []),
                          thread_ts=p.get("thread_ts"))
        self.messages[(channel, ts)] = m
        return {"channel": channel, "ts": ts, "message": {"type": "message", "text": m.text, "ts": ts,
                                                          "blocks": m.blocks, "bot_id": "BBOT"}}

    def api_chat_update(self, p: dict[str, Any]) -> dict[str, Any] | str:
        m = self.message(str(p.get("channel")), str(p.get("ts")))
        if m is None:
            return "message_not_found"
        m.history.append({"text": m.text, "blocks": m.blocks})
        if "text" in p:
            m.text = str(p["text"])
        if "blocks" in p:
            m.blocks = list(p.get("blocks") or [])
        return {"channel": m.channel, "ts": m.ts, "text": m.text}

    def api_chat_postEphemeral(self, p: dict[str, Any]) -> dict[str, Any] | str:
        if not p.get("channel"):
            return "channel_not_found"
        if not p.get("user"):
            return "user_not_in_channel"
        entry = {"channel": str(p["channel"]), "user": str(p["user"]), "text": str(p.get("text") or ""),
                 "blocks": list(p.get("blocks") or [])}
        entry["visible"] = StoredMessage("", "", entry["text"], entry["blocks"]).visible
        self.ephemerals.append(entry)
        return {"message_ts": self._next_ts()}

    def api_views_open(self, p: dict[str, Any]) -> dict[str, Any] | str:
        if not p.get("trigger_id"):
            return "invalid_trigger_id"
        view = p.get("view")
        if not isinstance(view, dict):
            return "invalid_arguments"
        vid = f"V{next(self._ids)}"
        self.views.append({"trigger_id": p["trigger_id"], "view": view, "id": vid})
        return {"view": {"id": vid, **view}}

    # files_upload_v2: getUploadURLExternal, a POST of the bytes to that URL, completeUploadExternal.

    def api_files_getUploadURLExternal(self, p: dict[str, Any]) -> dict[str, Any] | str:
        if not p.get("filename") or not str(p.get("length") or "").isdigit():
            return "invalid_arguments"
        fid = f"F{next(self._ids)}"
        self.uploads[fid] = {"filename": p["filename"], "length": int(p["length"]), "data": None}
        return {"upload_url": f"{self.root_url}/upload/{fid}", "file_id": fid}

    async def handle_upload(self, request: web.Request) -> web.Response:
        fid = request.match_info["fid"]
        if fid not in self.uploads:
            return web.Response(status=404, text="no such upload")
        self.uploads[fid]["data"] = await request.read()
        return web.Response(text=f"OK - {len(self.uploads[fid]['data'])}")

    def api_files_completeUploadExternal(self, p: dict[str, Any]) -> dict[str, Any] | str:
        files = p.get("files")
        if isinstance(files, str):
            files = json.loads(files)
        out = []
        for f in files or []:
            up = self.uploads.get(f.get("id"))
            if up is None or up["data"] is None:
                return "file_not_found"
            up.update(channel=p.get("channel_id"), title=f.get("title"), comment=p.get("initial_comment"))
            out.append({"id": f["id"], "name": up["filename"], "title": f.get("title"), "size": len(up["data"])})
        return {"files": out}

    def files_shared(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Uploads completed (into `channel`, if given), with their bytes."""
        return [u for u in self.uploads.values() if u.get("channel") and (channel is None or u["channel"] == channel)]

    async def handle_respond(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.responses.append(Response(request.match_info["key"], body, time.monotonic()))
        return web.Response(text="ok")

    # --- Socket Mode ------------------------------------------------------------------------------

    async def handle_socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.sockets.append(ws)
        self.socket_connections += 1
        await ws.send_str(json.dumps({"type": "hello", "num_connections": 1,
                                      "debug_info": {"host": "fake", "approximate_connection_time": 18060},
                                      "connection_info": {"app_id": "A1"}}))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    if "envelope_id" in data:
                        self.acks[data["envelope_id"]] = data
        finally:
            if ws in self.sockets:
                self.sockets.remove(ws)
        return ws

    async def push_message(self, message: dict[str, Any]) -> None:
        """Send a raw Socket Mode message (e.g. `{"type": "disconnect", "reason": "refresh_requested"}`)."""
        await self.wait_for(lambda: self.sockets)
        await self.sockets[-1].send_str(json.dumps(message))

    async def push_envelope(self, kind: str, payload: dict[str, Any], *, accepts_response_payload: bool = False) -> str:
        """Send one envelope (`events_api`, `interactive`, `slash_commands`) to the connected app; returns its id."""
        await self.wait_for(lambda: self.sockets)
        eid = uuid.uuid4().hex
        envelope = {"envelope_id": eid, "type": kind, "payload": payload,
                    "accepts_response_payload": accepts_response_payload, "retry_attempt": 0, "retry_reason": ""}
        await self.sockets[-1].send_str(json.dumps(envelope))
        return eid


@asynccontextmanager
async def fake_slack_server(bot_token: str = BOT_TOKEN, app_token: str = APP_TOKEN) -> AsyncIterator[FakeSlack]:
    """Serve the fake on 127.0.0.1:<free port>; yields it with `base_url` = http://127.0.0.1:PORT/api/."""
    fake = FakeSlack(bot_token, app_token)
    app = web.Application()
    app.router.add_post("/api/{method}", fake.handle_api)
    app.router.add_get("/api/{method}", fake.handle_api)
    app.router.add_post("/respond/{key}", fake.handle_respond)
    app.router.add_post("/upload/{fid}", fake.handle_upload)
    app.router.add_get("/socket-mode/link", fake.handle_socket)
    runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.root_url = f"http://{host}:{port}"
    fake.base_url = f"{fake.root_url}/api/"
    try:
        yield fake
    finally:
        for ws in list(fake.sockets):
            await ws.close()
        await runner.cleanup()
