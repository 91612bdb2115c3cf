"""The dashboard over HTTP: httpx against the real uvicorn server on a free loopback port, served by a
real bot on the paper exchange. Who gets in, who may act, CSRF, votes from elsewhere, no secrets."""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import sys

import httpx

from tests.spine_helpers import settle_orders
from tests.web_harness import PASSWORDS, csrf_in, login, session_csrf, web_bot

SECRETS = {"telegram_bot_token": "123456:AAFakeTelegramTokenForTests_abcdefghij",
           "openai_api_key": "sk-test-fake-openai-key-0123456789abcdef",
           "paper_client_secret": "paper-secret-never-shown-42"}


async def test_nobody_gets_in_unauthenticated(tmp_path):
    async with web_bot(tmp_path) as web:
        pid = await web.propose()
        async with web.client() as c:
            r = await c.get("/")
            assert r.status_code == 303 and r.headers["location"].startswith("/login")
            for path in ("/proposals", f"/proposals/{pid}", "/decisions", "/pnl", "/audit", "/chat", "/settings"):
                r = await c.get(path)
                assert r.status_code == 303, path
            for path in ("/api/v1/overview", "/api/v1/pending", f"/api/v1/proposals/{pid}", "/api/v1/openapi.json",
                         "/api/v1/stream", "/fragments/proposals", "/api/v1/settings"):
                r = await c.get(path)
                assert r.status_code == 401, path
                assert "Executed" not in r.text and "BTC-" not in r.text
            r = await c.post(f"/api/v1/proposals/{pid}/approve")
            assert r.status_code == 401
            r = await c.post(f"/proposals/{pid}/approve", data={"csrf": "x"})
            assert r.status_code == 303 and r.headers["location"].startswith("/login")
            r = await c.get("/api/v1/overview", headers={"Authorization": "Bearer cct_not-a-real-token"})
            assert r.status_code == 401
            c.cookies.set("chatops_session", "eyJ1IjoiYWxpY2UifQ.forged.signature")
            assert (await c.get("/api/v1/overview")).status_code == 401
            docs = await c.get("/docs")
            assert docs.status_code == 404  # Swagger UI would fetch its scripts from a CDN: not served
        assert web.store.get_proposal(pid).status == "pending"


async def test_wrong_passwords_are_rate_limited(tmp_path):
    async with web_bot(tmp_path) as web:
        async with web.client() as c:
            for _ in range(5):
                r = await login(c, "alice", "wrong-password")
                assert r.status_code == 401 and "Wrong user name or password" in r.text
            r = await login(c, "alice")  # even the right password waits now
            assert r.status_code == 429 and "Too many failed logins" in r.text
            assert (await c.get("/api/v1/me")).status_code == 401
        async with web.client() as c:
            r = await login(c, "victor")  # another name from the same address is limited too
            assert r.status_code == 429


async def test_login_form_without_its_csrf_token_is_refused(tmp_path):
    async with web_bot(tmp_path) as web:
        async with web.client() as c:
            r = await c.post("/login", data={"username": "alice", "password": PASSWORDS["alice"]})
            assert r.status_code == 403 and "CSRF" in r.text
            assert (await c.get("/api/v1/me")).status_code == 401


async def test_a_viewer_reads_but_cannot_approve(tmp_path):
    async with web_bot(tmp_path) as web:
        pid = await web.propose()
        async with web.client() as c:
            assert (await login(c, "victor")).status_code == 303
            home = await c.get("/")
            assert home.status_code == 200
            assert f"#{pid} Open covered call" in home.text and "Waiting for approval" in home.text
            assert f'id="approve-{pid}"' not in home.text and "WEB_ALLOWED_USERS" in home.text
            story = await c.get(f"/api/v1/proposals/{pid}")
            assert story.status_code == 200 and story.json()["proposal"]["status"] == "pending"
            me = (await c.get("/api/v1/me")).json()
            assert me["user"] == "victor" and me["can_act"] is False
            csrf = csrf_in(home.text)
            r = await c.post(f"/proposals/{pid}/approve", data={"csrf": csrf})
            assert r.status_code == 403 and "Not authorized" in r.text
            r = await c.post(f"/api/v1/proposals/{pid}/approve", headers={"X-CSRF-Token": csrf})
            assert r.status_code == 403 and r.json()["ok"] is False
            r = await c.post("/pause", data={"csrf": csrf})
            assert r.status_code == 403
            r = await c.post("/chat", data={"csrf": csrf, "kind": "why", "text": str(pid)})
            assert r.status_code == 403
        await settle_orders(web.bot)  # working orders fill on the simulated clock
        assert web.store.get_proposal(pid).status == "pending"
        assert web.store.votes(pid) == []
        refused = web.store.list_events(kind="unauthorized_vote", proposal_id=pid)
        assert refused and refused[0]["actor"] == "victor" and refused[0]["channel"] == "web"
        assert web.store.get_flag("paused", "0") == "0"


async def test_an_approver_approves_and_the_proposal_executes_once(tmp_path):
    async with web_bot(tmp_path) as web:
        pid = await web.propose()
        label = web.store.get_proposal(pid).label
        async with web.client() as c:
            assert (await login(c, "alice")).status_code == 303
            home = await c.get("/")
            assert f'id="approve-{pid}"' in home.text
            r = await c.post(f"/proposals/{pid}/approve", data={"csrf": csrf_in(home.text), "next": f"/proposals/{pid}"})
            assert r.status_code == 303 and r.headers["location"] == f"/proposals/{pid}"
            await settle_orders(web.bot)  # working orders fill on the simulated clock
            row = web.store.get_proposal(pid)
            assert row.status == "executed" and row.decided_by == "alice"
            (vote,) = web.store.votes(pid)
            assert (vote.user, vote.channel, vote.vote) == ("alice", "web", "approve")
            page = await c.get(r.headers["location"])
            assert "approved: executing" in page.text  # the flash, once
            assert "Executed" in page.text and "filled" in page.text
            again = await c.post(f"/api/v1/proposals/{pid}/approve", headers={"X-CSRF-Token": await session_csrf(c)})
            assert again.status_code == 409 and "already decided" in again.json()["text"]
        await settle_orders(web.bot)  # working orders fill on the simulated clock
        orders = await web.bot.exchange.client.get_order_state_by_label(web.bot.settings.underlying, label)
        assert len(orders) == 1 and orders[0].order_state == "filled"


async def test_post_without_csrf_is_refused(tmp_path):
    async with web_bot(tmp_path) as web:
        pid = await web.propose()
        async with web.client() as c:
            await login(c, "alice")
            for data in ({}, {"csrf": "not-the-token"}):
                r = await c.post(f"/proposals/{pid}/approve", data=data)
                assert r.status_code == 403 and "CSRF" in r.text
            r = await c.post(f"/api/v1/proposals/{pid}/approve")
            assert r.status_code == 403 and "CSRF" in r.json()["error"]
            r = await c.post("/pause", data={"reason": "no token"})
            assert r.status_code == 403
            # The same session's token from another session does not do either.
            async with web.client() as other:
                await login(other, "alice")
                stolen = await session_csrf(other)
            r = await c.post(f"/proposals/{pid}/approve", data={"csrf": stolen})
            assert r.status_code == 403
        assert web.store.get_proposal(pid).status == "pending"
        assert web.store.votes(pid) == [] and web.store.get_flag("paused", "0") == "0"


def _os_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


async def _next_change(c: httpx.AsyncClient, since: int, timeout: float = 20.0) -> int:
    async with c.stream("GET", f"/api/v1/stream?since={since}", timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                return int(line[6:])
    raise AssertionError("stream ended without a change")


async def test_a_vote_from_the_cli_appears_on_the_page(tmp_path):
    me = _os_user()
    async with web_bot(tmp_path, approvals_required=2, console_allowed_users=f"alice,{me}") as web:
        pid = await web.propose()
        async with web.client() as c:
            await login(c, "alice")
            home = await c.get("/")
            mark = int(home.text.split('data-mark="', 1)[1].split('"', 1)[0])
            assert "0/2 approvals" in home.text
            waiter = asyncio.create_task(_next_change(c, mark))
            env = {**os.environ, "DATABASE_PATH": web.bot.settings.database_path, "CONSOLE_ALLOWED_USERS": me,
                   "APPROVALS_REQUIRED": "2", "WEB_PORT": "0"}
            done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "chatops", "approve", str(pid)],
                                           env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            assert "1/2 approvals" in done.stdout
            changed = await asyncio.wait_for(waiter, 20)
            assert changed > mark
            fragment = await c.get("/fragments/proposals")
            assert "1/2 approvals" in fragment.text
            story = (await c.get(f"/api/v1/proposals/{pid}")).json()
            assert [(v["user"], v["channel"]) for v in story["votes"]] == [(me, "cli")]
            page = await c.get(f"/proposals/{pid}")
            assert f"<td>{me}</td><td>cli</td><td>approve</td>" in page.text
            # The second approval, from the web, completes the quorum and it executes.
            r = await c.post(f"/api/v1/proposals/{pid}/approve", headers={"X-CSRF-Token": await session_csrf(c)})
            assert r.status_code == 200 and r.json()["status"] in ("approved", "executing", "executed")
        await settle_orders(web.bot)  # working orders fill on the simulated clock
        assert web.store.get_proposal(pid).status == "executed"


async def test_no_secret_in_any_page(tmp_path):
    upper = {k.upper(): v for k, v in SECRETS.items()}
    async with web_bot(tmp_path, telegram_chat_id="-100", **{k: v for k, v in SECRETS.items()}) as web:
        pid = await web.propose()
        token = web.bot.web.auth.users.new_token("alice")
        async with web.client() as c:
            await login(c, "alice")
            await c.post("/chat", data={"csrf": await session_csrf(c), "kind": "why", "text": str(pid)})
            await c.post(f"/api/v1/proposals/{pid}/approve", headers={"X-CSRF-Token": await session_csrf(c)})
            await settle_orders(web.bot)  # working orders fill on the simulated clock
            pages = ["/", "/proposals", f"/proposals/{pid}", "/decisions", "/decisions/1", "/pnl", "/audit", "/chat",
                     "/settings", "/fragments/proposals", "/api/v1/overview", "/api/v1/pending", "/api/v1/settings",
                     f"/api/v1/proposals/{pid}", "/api/v1/decisions", "/api/v1/decisions/1", "/api/v1/pnl",
                     "/api/v1/audit", "/api/v1/chat", "/api/v1/openapi.json", "/api/v1/proposals"]
            seen = 0
            for path in pages:
                r = await c.get(path)
                assert r.status_code == 200, (path, r.text[:300])
                for value in list(SECRETS.values()) + [token, PASSWORDS["alice"], "scrypt$"]:
                    assert value not in r.text, (path, value)
                seen += len(r.text)
            settings = (await c.get("/api/v1/settings")).json()
            assert settings["telegram_bot_token"] == "***" and settings["openai_api_key"] == "***"
            assert settings["web_users"] is None and "TELEGRAM_BOT_TOKEN" in (await c.get("/settings")).text
            assert upper  # the secrets were configured (names shown, values never)
            assert seen > 10_000
        assert web.store.get_proposal(pid).status == "executed"


async def test_bearer_token_for_scripts_reads_and_acts_without_csrf(tmp_path):
    async with web_bot(tmp_path) as web:
        pid = await web.propose()
        alice = web.bot.web.auth.users.new_token("alice")
        victor = web.bot.web.auth.users.new_token("victor")
        async with web.client(headers={"Authorization": f"Bearer {victor}"}) as c:
            assert (await c.get("/api/v1/pending")).json()[0]["id"] == pid
            r = await c.post(f"/api/v1/proposals/{pid}/reject", json={"reason": "viewer"})
            assert r.status_code == 403
        async with web.client(headers={"Authorization": f"Bearer {alice}"}) as c:
            spec = (await c.get("/api/v1/openapi.json")).json()
            assert "/api/v1/proposals/{pid}/approve" in spec["paths"] and "/api/v1/overview" in spec["paths"]
            r = await c.post(f"/api/v1/proposals/{pid}/reject", json={"reason": "too close to spot"})
            assert r.status_code == 200 and r.json()["status"] == "rejected"
            lst = (await c.get("/api/v1/proposals", params={"status": "rejected"})).json()
            assert [p["id"] for p in lst["items"]] == [pid]
            bad = await c.get("/api/v1/proposals", params={"status": "nonsense"})
            assert bad.status_code == 400 and "bad status" in bad.json()["error"]
        assert web.store.votes(pid)[0].reason == "too close to spot"


async def test_chat_asks_why_and_whatif_through_the_core_and_records_them(tmp_path):
    async with web_bot(tmp_path) as web:
        pid = await web.propose()
        async with web.client() as c:
            await login(c, "alice")
            csrf = await session_csrf(c)
            r = await c.post("/chat", data={"csrf": csrf, "kind": "why", "text": str(pid)})
            assert r.status_code == 303 and r.headers["location"] == "/chat"
            r = await c.post("/api/v1/ask", json={"kind": "whatif", "text": "spot=-5%"}, headers={"X-CSRF-Token": csrf})
            assert r.status_code == 200 and "nothing is proposed or executed" in r.json()["text"]
            r = await c.post("/api/v1/ask", json={"kind": "ask", "text": "Are you using LLM mode now?"},
                             headers={"X-CSRF-Token": csrf})
            assert r.status_code == 200 and "LLM" in r.json()["text"]
            bad = await c.post("/api/v1/ask", json={"kind": "approve", "text": str(pid)}, headers={"X-CSRF-Token": csrf})
            assert bad.status_code == 422
            page = await c.get("/chat")
            assert "Reasoning (rule)" in page.text and "What if" in page.text and "Are you using LLM mode now?" in page.text
        rows = list(web.store.iter_rows("questions"))
        assert [(q["user"], q["channel"], q["kind"]) for q in rows] == [
            ("alice", "web", "why"), ("alice", "web", "whatif"), ("alice", "web", "ask")]
        assert rows[0]["proposal_id"] == pid
        assert len(list(web.store.iter_rows("answers"))) == 3
        assert web.store.get_proposal(pid).status == "pending"  # asking changed nothing


async def test_pause_and_resume_from_the_web(tmp_path):
    async with web_bot(tmp_path) as web:
        pid = await web.propose()
        async with web.client() as c:
            await login(c, "alice")
            r = await c.post("/pause", data={"csrf": await session_csrf(c), "reason": "maintenance"})
            assert r.status_code == 303
            home = await c.get("/")
            assert 'id="paused"' in home.text and 'id="resume"' in home.text and "Paused." in home.text
            assert web.store.get_proposal(pid).status == "cancelled"
            assert (await c.get("/api/v1/overview")).json()["paused"] is True
            r = await c.post("/api/v1/resume", headers={"X-CSRF-Token": await session_csrf(c)})
            assert r.status_code == 200 and r.json()["text"] == "Resumed."
        flags = [e for e in web.store.list_events(kind="flag_set")]
        assert [(e["actor"], e["channel"]) for e in flags] == [("alice", "web"), ("alice", "web")]


async def test_lists_filter_and_page(tmp_path):
    async with web_bot(tmp_path) as web:
        ids = []
        for _ in range(5):
            ids.append(await web.propose())
            await web.bot.core.cancel(ids[-1], "alice", "console")
            web.bot.exchange.clock.advance(60)
        async with web.client() as c:
            await login(c, "alice")
            first = (await c.get("/api/v1/proposals", params={"limit": 2})).json()
            assert [p["id"] for p in first["items"]] == ids[:-3:-1] and first["next"]
            second = (await c.get("/api/v1/proposals", params={"limit": 2, "before": first["next"]})).json()
            assert [p["id"] for p in second["items"]] == [ids[2], ids[1]]
            none = (await c.get("/api/v1/proposals", params={"status": "executed"})).json()
            assert none["items"] == []
            d = (await c.get("/api/v1/decisions", params={"limit": 3, "action": "OPEN_COVERED_CALL"})).json()
            assert len(d["items"]) == 3 and d["next"]
            html = await c.get("/proposals", params={"limit": 2})
            assert 'id="older"' in html.text and f"#{ids[-1]}" in html.text and f"#{ids[0]}<" not in html.text
            audit = (await c.get("/api/v1/audit", params={"limit": 5})).json()
            assert audit["verify"]["ok"] is True and len(audit["events"]) == 5 and audit["next"]
            older = (await c.get("/api/v1/audit", params={"limit": 5, "before": audit["next"]})).json()
            assert older["events"][0]["id"] == audit["next"] - 1
            assert (await c.get("/api/v1/proposals", params={"since": "yesterday"})).status_code == 400


async def test_people_file_roles_and_one_vote_per_person_across_channels(tmp_path):
    people = tmp_path / "people.toml"
    people.write_text('[people.alice]\nrole = "approver"\nconsole = "alice"\nweb = "alice"\n\n'
                      '[people.victor]\nrole = "viewer"\nweb = "victor"\n')
    async with web_bot(tmp_path, approvals_required=2, people_file=str(people)) as web:
        pid = await web.propose()
        assert (await web.bot.core.approve(pid, "alice", "console")).ok
        async with web.client() as c:
            await login(c, "alice")
            r = await c.post(f"/api/v1/proposals/{pid}/approve", headers={"X-CSRF-Token": await session_csrf(c)})
            assert r.status_code == 409 and "already voted" in r.json()["text"]  # the same person, another channel
        async with web.client() as c:
            await login(c, "victor")
            home = await c.get("/")
            assert 'id="pause"' in home.text and f'id="approve-{pid}"' not in home.text  # a viewer may pull the switch
            r = await c.post(f"/api/v1/proposals/{pid}/approve", headers={"X-CSRF-Token": await session_csrf(c)})
            assert r.status_code == 403 and "viewer" in r.json()["text"]
            r = await c.post("/api/v1/pause", json={"reason": "viewer pulls the kill switch"},
                             headers={"X-CSRF-Token": await session_csrf(c)})
            assert r.status_code == 200 and r.json()["text"] == "Paused."
            r = await c.post("/api/v1/resume", headers={"X-CSRF-Token": await session_csrf(c)})
            assert r.status_code == 403
        assert web.store.get_proposal(pid).status == "cancelled"  # pausing cancelled it
        assert [v.user for v in web.store.votes(pid)] == ["alice"]
