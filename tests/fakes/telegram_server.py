"""A fake Telegram Bot API: `POST /bot<token>/<method>` on 127.0.0.1, for the real PTB client.

Real requests cross a real socket: python-telegram-bot polls `getUpdates` here, sends messages,
edits them, answers callback queries. The fake records every call, keeps the messages it "sent"
by (chat_id, message_id) with their current text and keyboard, checks HTML the way Telegram does
(a bad tag or a bare `<`/`&` is "can't parse entities", more than 4,096 characters is "message is
too long"), and lets a test inject updates and script failures.

    async with fake_telegram_server() as tg:
        app = Application.builder().token(tg.token).base_url(tg.base_url).build()
        ...
        tg.push_callback(42, "a:1", message_id=1, chat_id=-1001)
        await tg.wait_for(lambda: tg.calls_to("answerCallbackQuery"))
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from aiohttp import web

DEFAULT_TOKEN = "123456:TEST"
MAX_TEXT = 4096

# Form fields PTB sends as raw strings; every other field is JSON-encoded (ints, bools, objects).
STRING_FIELDS = frozenset({
    "text", "caption", "parse_mode", "callback_query_id", "data", "url", "inline_message_id",
    "description", "short_description", "name", "language_code", "business_connection_id",
    "message_effect_id", "photo",
})

ALLOWED_TAGS = frozenset({"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre",
                          "tg-spoiler", "span", "blockquote", "tg-emoji"})
_TOKEN = re.compile(r"<[^<>]*>|&[^;\s<>&]*;?|[<>&]")
_ENTITY = re.compile(r"&(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);")


def check_html(text: str) -> str | None:
    """Telegram's HTML rules, enough to catch escaping bugs: the error text, or None if fine."""
    stack: list[str] = []
    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        if tok.startswith("<") and tok.endswith(">") and len(tok) > 2:
            body = tok[1:-1].strip()
            closing = body.startswith("/")
            name = body.lstrip("/").split()[0].lower() if body.lstrip("/") else ""
            if name not in ALLOWED_TAGS:
                return f"Unsupported start tag \"{name}\" at byte offset {m.start()}"
            if closing:
                if not stack or stack[-1] != name:
                    return f"Can't find end tag corresponding to start tag \"{stack[-1] if stack else name}\""
                stack.pop()
            else:
                stack.append(name)
        elif tok.startswith("&"):
            if not _ENTITY.fullmatch(tok):
                return f"Unsupported entity at byte offset {m.start()}"
        elif tok in ("<", ">"):
            if tok == "<":
                return f"Unexpected end of name token at byte offset {m.start()}"
        else:
            return f"Unexpected token at byte offset {m.start()}"
    if stack:
        return f"Can't find end tag corresponding to start tag \"{stack[-1]}\""
    return None


def visible_text(text: str, parse_mode: str | None) -> str:
    """What the user sees: tags stripped and entities decoded for HTML; the text itself otherwise."""
    if (parse_mode or "").upper() != "HTML":
        return text
    return html.unescape(re.sub(r"<[^<>]*>", "", text))


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float  # time.monotonic() when the request arrived
    status: int = 200  # what the fake answered (0: connection dropped)


@dataclass
class Failure:
    kind: str  # "429" | "parse" | "drop" | "500" | "400" (description given) | "403"
    retry_after: int = 1
    description: str | None = None


@dataclass
class StoredMessage:
    chat_id: int | str
    message_id: int
    text: str
    parse_mode: str | None
    reply_markup: dict[str, Any] | None
    from_bot: bool
    user_id: int | None = None
    reply_to_message_id: int | None = None
    history: list[str] = field(default_factory=list)  # earlier texts, oldest first

    @property
    def buttons(self) -> list[list[dict[str, Any]]]:
        return (self.reply_markup or {}).get("inline_keyboard") or []

    @property
    def visible(self) -> str:
        return visible_text(self.text, self.parse_mode)


@dataclass
class FakeTelegram:
    token: str = DEFAULT_TOKEN
    base_url: str = ""  # http://127.0.0.1:PORT/bot  (PTB appends the token)
    base_file_url: str = ""
    calls: list[Call] = field(default_factory=list)
    messages: dict[tuple[Any, int], StoredMessage] = field(default_factory=dict)
    callback_answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # query id -> params
    commands: list[dict[str, Any]] = field(default_factory=list)
    unknown_methods: list[str] = field(default_factory=list)
    photos: list[dict[str, Any]] = field(default_factory=list)  # uploads to sendPhoto: chat_id, filename, data
    served_at: dict[int, float] = field(default_factory=dict)  # update_id -> monotonic time handed out
    query_updates: dict[str, int] = field(default_factory=dict)  # callback query id -> its update_id
    failures: dict[str, list[Failure]] = field(default_factory=dict)
    webhook_deleted: int = 0

    def __post_init__(self) -> None:
        self.bot_id = int(self.token.split(":", 1)[0])
        self.bot_user = {"id": self.bot_id, "is_bot": True, "first_name": "Fake Bot", "username": "fake_cc_bot",
                         "can_join_groups": True, "can_read_all_group_messages": False,
                         "supports_inline_queries": False}
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._query_ids = itertools.count(1)
        self._message_ids: dict[Any, itertools.count] = {}
        self._changed = asyncio.Condition()
        self._confirmed = 0  # highest offset a client has confirmed
        self._closed = False

    # --- scripting ------------------------------------------------------------------------

    def fail(self, method: str, kind: str, n: int = 1, *, retry_after: int = 1, description: str | None = None) -> None:
        """The next `n` calls of `method` fail: "429" (retry_after), "parse" (400 can't parse
        entities), "drop" (connection closed, no answer), "500", "403", or "400" with `description`."""
        self.failures.setdefault(method, []).extend(Failure(kind, retry_after, description) for _ in range(n))

    def clear_failures(self, method: str | None = None) -> None:
        if method is None:
            self.failures.clear()
        else:
            self.failures.pop(method, None)

    def _next_id(self, chat_id: Any) -> int:
        counter = self._message_ids.setdefault(chat_id, itertools.count(1))
        return next(counter)

    def _user(self, user_id: int) -> dict[str, Any]:
        return {"id": int(user_id), "is_bot": False, "first_name": f"user{user_id}", "username": f"user{user_id}"}

    @staticmethod
    def _chat(chat_id: Any, chat_type: str | None = None) -> dict[str, Any]:
        if chat_type is None:
            chat_type = "supergroup" if isinstance(chat_id, int) and chat_id < 0 else "private"
        chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
        if chat_type != "private":
            chat["title"] = "Fake group"
        else:
            chat["first_name"] = f"user{chat_id}"
        return chat

    def _message_json(self, m: StoredMessage, chat_type: str | None = None, *, depth: int = 0) -> dict[str, Any]:
        out: dict[str, Any] = {
            "message_id": m.message_id, "date": int(time.time()), "chat": self._chat(m.chat_id, chat_type),
            "from": self.bot_user if m.from_bot else self._user(m.user_id or 0), "text": m.visible,
        }
        if m.reply_markup and "inline_keyboard" in m.reply_markup:
            out["reply_markup"] = m.reply_markup
        if m.text.startswith("/") and not m.from_bot:
            cmd = m.text.split()[0]
            out["entities"] = [{"type": "bot_command", "offset": 0, "length": utf16_len(cmd)}]
        mentions = [x for x in re.finditer(r"@\w+", m.text)] if not m.from_bot else []
        if mentions:
            out.setdefault("entities", []).extend(
                {"type": "mention", "offset": utf16_len(m.text[:x.start()]), "length": utf16_len(x.group(0))}
                for x in mentions if not (x.start() == 0 and m.text.startswith("/")))
        if m.reply_to_message_id is not None and depth == 0:
            parent = self.messages.get((m.chat_id, m.reply_to_message_id))
            if parent is not None:
                out["reply_to_message"] = self._message_json(parent, chat_type, depth=1)
        return out

    def _queue_update(self, update: dict[str, Any]) -> int:
        uid = next(self._update_ids)
        update["update_id"] = uid
        self._updates.append(update)
        asyncio.get_running_loop().create_task(self._notify())
        return uid

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def push_callback(self, user_id: int, data: str, message_id: int, chat_id: int | str = -1001) -> str:
        """A button press by `user_id` on message (chat_id, message_id). Returns the query id."""
        chat_id = _norm_chat(chat_id)
        qid = f"q{next(self._query_ids)}"
        stored = self.messages.get((chat_id, int(message_id)))
        if stored is not None:
            message = self._message_json(stored)
        else:  # a forged press on a message the fake never sent
            message = {"message_id": int(message_id), "date": int(time.time()), "chat": self._chat(chat_id),
                       "from": self.bot_user, "text": "?"}
        self.query_updates[qid] = self._queue_update({"callback_query": {
            "id": qid, "from": self._user(user_id), "message": message, "chat_instance": f"ci{chat_id}", "data": data}})
        return qid

    def served_at_query(self, query_id: str) -> float | None:
        """When the update carrying this button press was handed to the bot (time.monotonic())."""
        return self.served_at.get(self.query_updates.get(query_id, -1))

    def push_message(self, user_id: int, text: str, chat_id: int | str | None = None, reply_to_message_id: int | None = None,
                     chat_type: str = "private") -> StoredMessage:
        """A text message from a user (default chat: the user's private chat with the bot)."""
        chat_id = _norm_chat(chat_id if chat_id is not None else user_id)
        m = StoredMessage(chat_id, self._next_id(chat_id), text, None, None, from_bot=False, user_id=int(user_id),
                          reply_to_message_id=reply_to_message_id)
        self.messages[(chat_id, m.message_id)] = m
        self._queue_update({"message": self._message_json(m, chat_type)})
        return m

    # --- queries for tests -------------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def sent(self, chat_id: int | str | None = None) -> list[StoredMessage]:
        """Messages the bot sent (in order), optionally in one chat."""
        out = [m for m in self.messages.values() if m.from_bot]
        if chat_id is not None:
            out = [m for m in out if m.chat_id == _norm_chat(chat_id)]
        return sorted(out, key=lambda m: (str(m.chat_id), m.message_id))

    def message(self, chat_id: int | str, message_id: int) -> StoredMessage | None:
        return self.messages.get((_norm_chat(chat_id), int(message_id)))

    def answer(self, query_id: str) -> dict[str, Any] | None:
        return self.callback_answers.get(query_id)

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
        """Poll `predicate` until it is truthy (returns its value) or fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            await asyncio.sleep(interval)

    # --- the HTTP side --------------------------------------------------------------------------

    async def _params(self, request: web.Request) -> dict[str, Any]:
        ctype = request.content_type or ""
        if ctype == "application/json":
            try:
                body = await request.json()
            except ValueError:
                body = {}
            return dict(body or {})
        form = await request.post()
        out: dict[str, Any] = {}
        for key, value in form.items():
            if not isinstance(value, str):  # an uploaded file
                out[key] = {"filename": getattr(value, "filename", None), "data": value.file.read()}
                continue
            if key in STRING_FIELDS:
                out[key] = value
                continue
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        return out

    async def handle(self, request: web.Request) -> web.StreamResponse:
        token, method = request.match_info["token"], request.match_info["method"]
        params = await self._params(request)
        call = Call(method, params, time.monotonic())
        self.calls.append(call)
        if token != self.token:
            call.status = 401
            return _error(401, "Unauthorized")
        queued = self.failures.get(method)
        if queued:
            f = queued.pop(0)
            if f.kind == "drop":
                call.status = 0
                if request.transport is not None:
                    request.transport.abort()
                raise ConnectionResetError("fake drop")
            if f.kind == "429":
                call.status = 429
                return _error(429, f"Too Many Requests: retry after {f.retry_after}", {"retry_after": f.retry_after})
            if f.kind == "parse":
                call.status = 400
                return _error(400, "Bad Request: can't parse entities: Unsupported start tag \"x\" at byte offset 0")
            if f.kind == "500":
                call.status = 500
                return _error(500, "Internal Server Error")
            if f.kind == "403":
                call.status = 403
                return _error(403, f.description or "Forbidden: bot was kicked from the group chat")
            call.status = 400
            return _error(400, f.description or "Bad Request")
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            self.unknown_methods.append(method)
            return _ok(True)
        status, payload = await handler(params)
        call.status = status
        return payload

    async def _m_getMe(self, p: dict[str, Any]):
        return 200, _ok(self.bot_user)

    async def _m_logOut(self, p: dict[str, Any]):
        return 200, _ok(True)

    async def _m_close(self, p: dict[str, Any]):
        return 200, _ok(True)

    async def _m_deleteWebhook(self, p: dict[str, Any]):
        self.webhook_deleted += 1
        if p.get("drop_pending_updates"):
            self._updates.clear()
        return 200, _ok(True)

    async def _m_setMyCommands(self, p: dict[str, Any]):
        self.commands = list(p.get("commands") or [])
        return 200, _ok(True)

    async def _m_getMyCommands(self, p: dict[str, Any]):
        return 200, _ok(self.commands)

    async def _m_getUpdates(self, p: dict[str, Any]):
        offset = int(p.get("offset") or 0)
        timeout = float(p.get("timeout") or 0)
        limit = int(p.get("limit") or 100)
        if offset:
            self._confirmed = max(self._confirmed, offset)
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        deadline = time.monotonic() + timeout

        def ready() -> list[dict[str, Any]]:
            return [u for u in self._updates if u["update_id"] >= offset][:limit]

        batch = ready()
        while not batch and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=left)
                except asyncio.TimeoutError:
                    pass
            batch = ready()
        now = time.monotonic()
        for u in batch:
            self.served_at.setdefault(u["update_id"], now)
        return 200, _ok(batch)

    def _check_text(self, text: str, parse_mode: str | None) -> web.Response | None:
        if (parse_mode or "").upper() == "HTML":
            problem = check_html(text)
            if problem:
                return _error(400, f"Bad Request: can't parse entities: {problem}")
        if not text.strip():
            return _error(400, "Bad Request: message text is empty")
        if utf16_len(visible_text(text, parse_mode)) > MAX_TEXT:
            return _error(400, "Bad Request: message is too long")
        return None

    async def _m_sendMessage(self, p: dict[str, Any]):
        chat_id = _norm_chat(p.get("chat_id"))
        text = str(p.get("text", ""))
        bad = self._check_text(text, p.get("parse_mode"))
        if bad is not None:
            return bad.status, bad
        reply_to = p.get("reply_to_message_id")
        if reply_to is None and isinstance(p.get("reply_parameters"), dict):
            reply_to = p["reply_parameters"].get("message_id")
        m = StoredMessage(chat_id, self._next_id(chat_id), text, p.get("parse_mode"), p.get("reply_markup"),
                          from_bot=True, reply_to_message_id=int(reply_to) if reply_to is not None else None)
        self.messages[(chat_id, m.message_id)] = m
        return 200, _ok(self._message_json(m))

    async def _m_sendPhoto(self, p: dict[str, Any]):
        chat_id = _norm_chat(p.get("chat_id"))
        photo = p.get("photo")
        if isinstance(photo, dict):  # an upload (not a file_id or URL): keep its bytes for the test to check
            self.photos.append({"chat_id": chat_id, "filename": photo.get("filename"), "data": photo.get("data") or b""})
        m = StoredMessage(chat_id, self._next_id(chat_id), str(p.get("caption") or "[photo]"), p.get("parse_mode"),
                          p.get("reply_markup"), from_bot=True)
        self.messages[(chat_id, m.message_id)] = m
        out = self._message_json(m)
        out.pop("text", None)
        out["caption"] = m.visible
        out["photo"] = [{"file_id": f"photo{m.message_id}", "file_unique_id": f"u{m.message_id}", "width": 1, "height": 1}]
        return 200, _ok(out)

    def _find(self, p: dict[str, Any]) -> StoredMessage | None:
        try:
            return self.messages.get((_norm_chat(p.get("chat_id")), int(p.get("message_id"))))
        except (TypeError, ValueError):
            return None

    async def _m_editMessageText(self, p: dict[str, Any]):
        m = self._find(p)
        if m is None or not m.from_bot:
            return 400, _error(400, "Bad Request: message to edit not found")
        text = str(p.get("text", ""))
        bad = self._check_text(text, p.get("parse_mode"))
        if bad is not None:
            return bad.status, bad
        markup = p.get("reply_markup")
        if text == m.text and (p.get("parse_mode") or None) == (m.parse_mode or None) and markup == m.reply_markup:
            return 400, _error(400, "Bad Request: message is not modified: specified new message content and reply "
                                    "markup are exactly the same as a current content and reply markup of the message")
        m.history.append(m.text)
        m.text, m.parse_mode, m.reply_markup = text, p.get("parse_mode"), markup
        return 200, _ok(self._message_json(m))

    async def _m_editMessageReplyMarkup(self, p: dict[str, Any]):
        m = self._find(p)
        if m is None or not m.from_bot:
            return 400, _error(400, "Bad Request: message to edit not found")
        markup = p.get("reply_markup")
        if markup == m.reply_markup:
            return 400, _error(400, "Bad Request: message is not modified: specified new message content and reply "
                                    "markup are exactly the same as a current content and reply markup of the message")
        m.reply_markup = markup
        return 200, _ok(self._message_json(m))

    async def _m_answerCallbackQuery(self, p: dict[str, Any]):
        qid = str(p.get("callback_query_id"))
        if qid in self.callback_answers:
            return 400, _error(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        self.callback_answers[qid] = p
        return 200, _ok(True)


def _norm_chat(chat_id: Any) -> int | str:
    if isinstance(chat_id, int):
        return chat_id
    s = str(chat_id)
    return int(s) if s.lstrip("-").isdigit() else s


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(code: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=code)


@asynccontextmanager
async def fake_telegram_server(token: str = DEFAULT_TOKEN) -> AsyncIterator[FakeTelegram]:
    """Serve the fake on 127.0.0.1:<free port>; yields it with `base_url` ending in /bot."""
    fake = FakeTelegram(token=token)
    app = web.Application()
    app.router.add_post("/bot{token}/{method}", fake.handle)
    app.router.add_get("/bot{token}/{method}", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.base_url = f"http://{host}:{port}/bot"
    fake.base_file_url = f"http://{host}:{port}/file/bot"
    try:
        yield fake
    finally:
        # Release any held long poll so the runner can shut down at once.
        fake._closed = True
        await fake._notify()
        await asyncio.sleep(0)
        await runner.cleanup()
