"""The FastAPI app: login, the HTML pages, their POST forms, and live refresh. The JSON API is in
api.py and reads the same `views` functions.

Every page needs a login; every POST needs the session's CSRF token; every action goes through the
core as channel `web` (which checks WEB_ALLOWED_USERS and records the refusal or the vote).
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature
from markupsafe import Markup

from ..adapters.base import Reply
from ..ask import why_text
from ..redact import redact, redact_value
from . import views
from .auth import COOKIE, Auth, Principal, csrf_ok
from .views import Context

TEMPLATES = Path(__file__).parent / "templates"
FLASH = "chatops_flash"
LOGIN_CSRF = "chatops_login_csrf"
QUESTION_WORDS = ("why", "whatif", "ask")


class WebError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class RedactedJSON(JSONResponse):
    """Every string of every JSON answer passes through the one redactor, the last gate before a page."""

    def render(self, content: Any) -> bytes:
        return super().render(redact_value(content))


def _finalize(value: Any) -> Any:
    """Jinja's hook on every `{{ ... }}` output: the same redactor, for HTML."""
    if isinstance(value, Markup):
        return Markup(redact(str(value)))
    return redact(value) if isinstance(value, str) else value


def principal(auth: Auth, request: Request) -> Principal | None:
    return auth.from_bearer(request.headers.get("authorization")) or auth.from_cookie(request.cookies.get(COOKIE))


def safe_next(target: str | None, default: str = "/") -> str:
    """Only a path on this site (never //host or a scheme): no open redirect."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return default


def client_key(request: Request) -> str:
    return f"ip:{request.client.host if request.client else '?'}"


def create_app(ctx: Context, auth: Auth, stopping: asyncio.Event) -> FastAPI:
    app = FastAPI(title="covered-call chatops", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                  default_response_class=RedactedJSON,
                  description="The dashboard's REST API. Authenticate with `Authorization: Bearer <token>` "
                              "(`chatops web-user token NAME`) or a session cookie plus `X-CSRF-Token`.")
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.globals["equity_svg"] = views.equity_svg
    templates.env.finalize = _finalize

    @app.middleware("http")
    async def headers(request: Request, call_next):
        request.state.nonce = secrets.token_urlsafe(12)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = (
            f"default-src 'self'; script-src 'nonce-{request.state.nonce}'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"  # the start token may sit in a URL
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(WebError)
    async def web_error(request: Request, exc: WebError):
        if request.url.path.startswith("/api/"):
            return RedactedJSON({"error": exc.message}, status_code=exc.status)
        return page(request, "message.html", {"message": exc.message, "ok": False}, status=exc.status)

    def may(p: Principal | None, action: str) -> bool:
        """What the buttons offer (the core decides again on every POST): identity.ACTION_ROLE."""
        if p is None or ctx.read_only:
            return False
        return ctx.core.approvals.directory.check("web", p.user, action).allowed

    def can_act(p: Principal | None) -> bool:
        return may(p, "approve")

    def page(request: Request, name: str, data: dict[str, Any], status: int = 200) -> HTMLResponse:
        p = getattr(request.state, "principal", None) or principal(auth, request)
        flash = None
        raw = request.cookies.get(FLASH)
        if raw:
            try:
                flash = auth.serializer.loads(raw, max_age=60, salt="flash")
            except BadSignature:
                flash = None
        base = {"user": p.user if p else None, "csrf": p.csrf if p else "", "can_act": can_act(p),
                "can_pause": may(p, "pause"), "can_ask": may(p, "read"),
                "read_only": ctx.read_only, "tag": ctx.settings.trading_tag, "nonce": request.state.nonce,
                "flash": flash, "path": request.url.path}
        resp = templates.TemplateResponse(request, name, {**base, **data}, status_code=status)
        if raw:
            resp.delete_cookie(FLASH, path="/")
        return resp

    def need_user(request: Request) -> Principal:
        p = principal(auth, request)
        if p is None:
            if request.url.path.startswith(("/api/", "/fragments/")):
                raise WebError(401, "login required")
            raise _Redirect(f"/login?next={quote(str(request.url.path))}")
        request.state.principal = p
        return p

    class _Redirect(Exception):
        def __init__(self, to: str) -> None:
            self.to = to

    @app.exception_handler(_Redirect)
    async def redirect(request: Request, exc: _Redirect):
        return RedirectResponse(exc.to, status_code=303)

    async def checked_form(request: Request) -> tuple[Principal, Any]:
        p = need_user(request)
        form = await request.form()
        sent = form.get("csrf") or request.headers.get("x-csrf-token")
        if not csrf_ok(p, str(sent) if sent else None):
            raise WebError(403, "CSRF token missing or wrong: reload the page and try again.")
        if ctx.read_only:
            raise WebError(403, "This dashboard is read-only (chatops web): votes and questions go to the running bot "
                                "(chatops run) or the CLI.")
        return p, form

    async def act(request: Request, fn: Callable[[Principal, Any], Awaitable[Reply]], back: str) -> Response:
        p, form = await checked_form(request)
        reply = await fn(p, form)
        if reply.unauthorized:
            raise WebError(403, reply.text + " (WEB_ALLOWED_USERS decides who may act on the web.)")
        resp = RedirectResponse(safe_next(str(form.get("next") or ""), back), status_code=303)
        resp.set_cookie(FLASH, auth.serializer.dumps({"text": reply.text, "ok": reply.ok}, salt="flash"),
                        max_age=60, httponly=True, samesite="strict", path="/")
        return resp

    # --- login ------------------------------------------------------------------------------

    def login_page(request: Request, error: str | None = None, status: int = 200, next_: str = "/") -> HTMLResponse:
        token = secrets.token_urlsafe(24)
        resp = page(request, "login.html", {"error": error, "login_csrf": token, "next": next_,
                                            "token_mode": auth.token_active}, status=status)
        resp.set_cookie(LOGIN_CSRF, token, max_age=3600, httponly=True, samesite="strict", path="/login")
        return resp

    def logged_in(request: Request, user: str, next_: str) -> Response:
        resp = RedirectResponse(safe_next(next_), status_code=303)
        resp.set_cookie(COOKIE, auth.new_session(user), max_age=int(auth.max_age_s), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
        return resp

    def too_many(request: Request, *keys: str) -> float:
        return auth.limiter.retry_after(*keys)

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_form(request: Request, next: str = "/", token: str | None = None):
        if token is not None:
            key = client_key(request)
            wait = too_many(request, key)
            if wait > 0:
                return login_page(request, f"Too many failed logins: try again in {wait:.0f} s.", 429, next)
            user = auth.check_start_token(token)
            if user is None:
                auth.limiter.failed(key)
                return login_page(request, "That login link is not valid (the token changes at every start).", 401, next)
            auth.limiter.succeeded(key)
            return logged_in(request, user, next)
        return login_page(request, next_=safe_next(next))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        form = await request.form()
        name, password = str(form.get("username") or "").strip(), str(form.get("password") or "")
        next_ = safe_next(str(form.get("next") or "/"))
        cookie, sent = request.cookies.get(LOGIN_CSRF), str(form.get("csrf") or "")
        if not cookie or not sent or not secrets.compare_digest(cookie, sent):
            return login_page(request, "The form expired (CSRF check): try again.", 403, next_)
        keys = (client_key(request), f"user:{name.lower()}")
        wait = too_many(request, *keys)
        if wait > 0:
            return login_page(request, f"Too many failed logins: try again in {wait:.0f} s.", 429, next_)
        user = await asyncio.to_thread(auth.check_login, name, password)  # scrypt: off the loop
        if user is None:
            auth.limiter.failed(*keys)
            return login_page(request, "Wrong user name or password.", 401, next_)
        auth.limiter.succeeded(*keys)
        return logged_in(request, user, next_)

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request):
        p = need_user(request)
        form = await request.form()
        if not csrf_ok(p, str(form.get("csrf") or "")):
            raise WebError(403, "CSRF token missing or wrong: reload the page and try again.")
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    # --- pages ------------------------------------------------------------------------------

    def recent_cards(n: int = 3) -> list[dict[str, Any]]:
        rows = [r for r in ctx.store.list_proposals(limit=n + 10) if r.status != "pending"][:n]
        cards = [ctx.core.proposal_card(r.id) for r in rows]
        return [views.card_dict(c) for c in cards if c]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home(request: Request):
        need_user(request)
        return page(request, "overview.html", {"o": await views.overview(ctx), "pending": views.pending_cards(ctx),
                                               "recent": recent_cards(), "mark": views.change_mark(ctx.store)})

    @app.get("/fragments/proposals", response_class=HTMLResponse, include_in_schema=False)
    async def fragment_proposals(request: Request):
        need_user(request)
        return page(request, "_proposals.html", {"pending": views.pending_cards(ctx), "recent": recent_cards()})

    @app.get("/fragments/proposal/{pid}", response_class=HTMLResponse, include_in_schema=False)
    async def fragment_card(request: Request, pid: int):
        need_user(request)
        card = ctx.core.proposal_card(pid)
        if card is None:
            raise WebError(404, f"No proposal #{pid}.")
        return page(request, "_card_one.html", {"c": views.card_dict(card)})

    def bad_input(fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except ValueError as exc:
            raise WebError(400, str(exc)) from None

    @app.get("/decisions", response_class=HTMLResponse, include_in_schema=False)
    async def decisions_page(request: Request, action: str | None = None, since: str | None = None,
                             until: str | None = None, before: str | None = None, limit: int = 50):
        need_user(request)
        data = bad_input(views.decisions, ctx, action=action, since=since, until=until, before=before, limit=limit)
        return page(request, "decisions.html", {"d": data, "actions": _actions()})

    @app.get("/decisions/{did}", response_class=HTMLResponse, include_in_schema=False)
    async def decision_page(request: Request, did: int):
        need_user(request)
        d = views.decision(ctx, did)
        if d is None:
            raise WebError(404, f"No decision d{did}.")
        return page(request, "decision.html", {"d": d, "why": why_text({"decision": d})})

    @app.get("/proposals", response_class=HTMLResponse, include_in_schema=False)
    async def proposals_page(request: Request, status: str | None = None, action: str | None = None,
                             since: str | None = None, until: str | None = None, before: str | None = None,
                             limit: int = 50):
        need_user(request)
        data = bad_input(views.proposals, ctx, status=status, action=action, since=since, until=until, before=before,
                         limit=limit)
        return page(request, "proposals.html", {"d": data, "actions": _actions()})

    @app.get("/proposals/{pid}", response_class=HTMLResponse, include_in_schema=False)
    async def proposal_page(request: Request, pid: int):
        need_user(request)
        story = views.proposal_story(ctx, pid)
        if story is None:
            raise WebError(404, f"No proposal #{pid}.")
        return page(request, "proposal.html", {"s": story, "why": why_text(ctx.store.proposal_story(pid) or {}),
                                               "mark": views.change_mark(ctx.store)})

    @app.get("/pnl", response_class=HTMLResponse, include_in_schema=False)
    async def pnl_page(request: Request):
        need_user(request)
        return page(request, "pnl.html", {"p": views.pnl(ctx)})

    @app.get("/audit", response_class=HTMLResponse, include_in_schema=False)
    async def audit_page(request: Request, kind: str | None = None, proposal: int | None = None,
                         before: int | None = None, limit: int = 50, fresh: bool = False):
        need_user(request)
        data = await asyncio.to_thread(views.audit, ctx, kind=kind, proposal=proposal, before=before, limit=limit,
                                       fresh=fresh)
        return page(request, "audit.html", {"a": data})

    @app.get("/chat", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page(request: Request):
        p = need_user(request)
        return page(request, "chat.html", {"talk": views.conversation(ctx, p.user)})

    @app.get("/settings", response_class=HTMLResponse, include_in_schema=False)
    async def settings_page(request: Request):
        need_user(request)
        return page(request, "settings.html", {"settings": views.settings_view(ctx)})

    # --- actions (forms) ----------------------------------------------------------------------

    @app.post("/proposals/{pid}/approve", include_in_schema=False)
    async def approve_form(request: Request, pid: int):
        return await act(request, lambda p, f: ctx.core.approve(pid, p.user, "web"), f"/proposals/{pid}")

    @app.post("/proposals/{pid}/reject", include_in_schema=False)
    async def reject_form(request: Request, pid: int):
        return await act(request, lambda p, f: ctx.core.reject(pid, p.user, "web", str(f.get("reason") or "").strip() or None),
                         f"/proposals/{pid}")

    @app.post("/proposals/{pid}/cancel", include_in_schema=False)
    async def cancel_form(request: Request, pid: int):
        return await act(request, lambda p, f: ctx.core.cancel(pid, p.user, "web", str(f.get("reason") or "").strip() or None),
                         f"/proposals/{pid}")

    @app.post("/pause", include_in_schema=False)
    async def pause_form(request: Request):
        return await act(request, lambda p, f: ctx.core.pause(p.user, "web", str(f.get("reason") or "").strip() or None), "/")

    @app.post("/resume", include_in_schema=False)
    async def resume_form(request: Request):
        return await act(request, lambda p, f: ctx.core.resume(p.user, "web"), "/")

    @app.post("/chat", include_in_schema=False)
    async def chat_form(request: Request):
        return await act(request, lambda p, f: question(p.user, str(f.get("kind") or "ask"), str(f.get("text") or "")),
                         "/chat")

    async def question(user: str, kind: str, text: str) -> Reply:
        """ask / why / whatif, answered and recorded by the core exactly as on every channel."""
        text = text.strip()[:2000]
        if kind == "why":
            return await ctx.core.why(text or None, user, "web")
        if kind == "whatif":
            return await ctx.core.whatif(text, user, "web")
        return await ctx.core.ask(text, user, "web")

    from .api import api_router

    app.include_router(api_router(ctx, auth, stopping, need_user=need_user, checked_form=checked_form,
                                  question=question, can_act=can_act))
    return app


def _actions() -> list[str]:
    from agent.models import ActionType

    return [a.value for a in ActionType]
