"""The REST API under /api/v1: the same views as the pages, as JSON, with the same auth.

Scripts authenticate with `Authorization: Bearer <token>` (`chatops web-user token NAME`); a
browser session works too, and its POSTs carry the session's CSRF token in `X-CSRF-Token`.
`GET /api/v1/stream` is a Server-Sent Events stream saying when anything changed (any channel,
any process), which the pages use for live refresh.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from ..adapters.base import Reply
from ..identity import identity
from . import views
from .auth import Auth, Principal, csrf_ok
from .views import Context

STREAM_POLL_S = 0.5
STREAM_PING_S = 15.0


class RejectBody(BaseModel):
    reason: str | None = Field(None, max_length=500)


class PauseBody(BaseModel):
    reason: str | None = Field(None, max_length=500)


class QuestionBody(BaseModel):
    kind: str = Field("ask", pattern="^(ask|why|whatif)$")
    text: str = Field("", max_length=2000)


class ReplyOut(BaseModel):
    ok: bool
    text: str
    proposal_id: int | None = None
    status: str | None = None


def api_router(ctx: Context, auth: Auth, stopping: asyncio.Event, *, need_user: Callable[[Request], Principal],
               checked_form, question, can_act) -> APIRouter:
    from .site import RedactedJSON, WebError

    r = APIRouter(prefix="/api/v1")

    def bad_input(fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except ValueError as exc:
            raise WebError(400, str(exc)) from None

    def acting(request: Request) -> Principal:
        p = need_user(request)
        if not csrf_ok(p, request.headers.get("x-csrf-token")):
            raise WebError(403, "CSRF token missing or wrong (X-CSRF-Token), or use a bearer token")
        if ctx.read_only:
            raise WebError(403, "read-only dashboard (chatops web): act through the running bot or the CLI")
        return p

    def out(reply: Reply) -> RedactedJSON:
        status = None
        if reply.proposal_id is not None:
            row = ctx.store.get_proposal(reply.proposal_id)
            status = row.status if row else None
        code = 403 if reply.unauthorized else 200 if reply.ok else 409
        body = ReplyOut(ok=reply.ok, text=reply.text, proposal_id=reply.proposal_id, status=status)
        return RedactedJSON(body.model_dump(), status_code=code)

    # --- reading ---------------------------------------------------------------------------------

    @r.get("/me")
    async def me(request: Request, p: Principal = Depends(need_user)) -> dict[str, Any]:
        return {"user": p.user, "identity": identity("web", p.user), "via": p.via, "can_act": can_act(p),
                "read_only": ctx.read_only, "csrf": p.csrf}

    @r.get("/overview")
    async def overview(request: Request, p: Principal = Depends(need_user)) -> dict[str, Any]:
        return await views.overview(ctx)

    @r.get("/pending")
    async def pending(request: Request, p: Principal = Depends(need_user)) -> list[dict[str, Any]]:
        return views.pending_cards(ctx)

    @r.get("/decisions")
    async def decisions(request: Request, action: str | None = None, since: str | None = None, until: str | None = None,
                        before: str | None = None, limit: int = 50, p: Principal = Depends(need_user)) -> dict[str, Any]:
        return bad_input(views.decisions, ctx, action=action, since=since, until=until, before=before, limit=limit)

    @r.get("/decisions/{did}")
    async def decision(request: Request, did: int, p: Principal = Depends(need_user)) -> dict[str, Any]:
        d = views.decision(ctx, did)
        if d is None:
            raise WebError(404, f"no decision d{did}")
        return d

    @r.get("/proposals")
    async def proposals(request: Request, status: str | None = None, action: str | None = None,
                        since: str | None = None, until: str | None = None, before: str | None = None,
                        limit: int = 50, p: Principal = Depends(need_user)) -> dict[str, Any]:
        return bad_input(views.proposals, ctx, status=status, action=action, since=since, until=until, before=before,
                         limit=limit)

    @r.get("/proposals/{pid}")
    async def proposal(request: Request, pid: int, p: Principal = Depends(need_user)) -> dict[str, Any]:
        story = views.proposal_story(ctx, pid)
        if story is None:
            raise WebError(404, f"no proposal #{pid}")
        return story

    @r.get("/pnl")
    async def pnl(request: Request, p: Principal = Depends(need_user)) -> dict[str, Any]:
        return views.pnl(ctx)

    @r.get("/audit")
    async def audit(request: Request, kind: str | None = None, proposal: int | None = None, before: int | None = None,
                    limit: int = 50, fresh: bool = False, p: Principal = Depends(need_user)) -> dict[str, Any]:
        return await asyncio.to_thread(views.audit, ctx, kind=kind, proposal=proposal, before=before, limit=limit,
                                       fresh=fresh)

    @r.get("/settings")
    async def settings(request: Request, p: Principal = Depends(need_user)) -> dict[str, Any]:
        return views.settings_view(ctx)

    @r.get("/chat")
    async def conversation(request: Request, p: Principal = Depends(need_user)) -> list[dict[str, Any]]:
        return views.conversation(ctx, p.user)

    @r.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request, p: Principal = Depends(need_user)) -> dict[str, Any]:
        return request.app.openapi()

    @r.get("/stream")
    async def stream(request: Request, since: int | None = None, p: Principal = Depends(need_user)) -> StreamingResponse:
        """Server-Sent Events: `event: change` with the newest event id whenever it moves."""

        async def events():
            last = since
            quiet = 0.0
            yield "retry: 2000\n\n"
            while not stopping.is_set():
                mark = views.change_mark(ctx.store)
                if mark != last:
                    last, quiet = mark, 0.0
                    yield f"event: change\ndata: {mark}\n\n"
                elif quiet >= STREAM_PING_S:
                    quiet = 0.0
                    yield ": ping\n\n"
                if await request.is_disconnected():
                    return
                try:
                    await asyncio.wait_for(stopping.wait(), STREAM_POLL_S)
                except asyncio.TimeoutError:
                    quiet += STREAM_POLL_S

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # --- acting (through the core, channel "web") ----------------------------------------------------

    @r.post("/proposals/{pid}/approve", response_model=ReplyOut)
    async def approve(pid: int, p: Principal = Depends(acting)):
        return out(await ctx.core.approve(pid, p.user, "web"))

    @r.post("/proposals/{pid}/reject", response_model=ReplyOut)
    async def reject(pid: int, body: RejectBody | None = None, p: Principal = Depends(acting)):
        return out(await ctx.core.reject(pid, p.user, "web", (body.reason or "").strip() or None if body else None))

    @r.post("/proposals/{pid}/cancel", response_model=ReplyOut)
    async def cancel(pid: int, body: RejectBody | None = None, p: Principal = Depends(acting)):
        return out(await ctx.core.cancel(pid, p.user, "web", (body.reason or "").strip() or None if body else None))

    @r.post("/pause", response_model=ReplyOut)
    async def pause(body: PauseBody | None = None, p: Principal = Depends(acting)):
        return out(await ctx.core.pause(p.user, "web", (body.reason or "").strip() or None if body else None))

    @r.post("/resume", response_model=ReplyOut)
    async def resume(p: Principal = Depends(acting)):
        return out(await ctx.core.resume(p.user, "web"))

    @r.post("/ask", response_model=ReplyOut)
    async def ask(body: QuestionBody, p: Principal = Depends(acting)):
        return out(await question(p.user, body.kind, body.text))

    return r
