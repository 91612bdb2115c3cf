"""The claim (approved -> executing) is where expiry, pause and the votes are checked, inside the
same transaction: a proposal approved just before its expiry whose re-check runs past it is never
sent; a pause that lands during the re-check keeps it approved. (The recount of the votes at the
claim is issue 11's: tests/test_authority.py.)"""

from __future__ import annotations

from datetime import timedelta

import chatops.engine as engine
from tests.spine_helpers import make_bot, orders_with_label


async def test_expiry_is_checked_at_the_claim_not_only_before_the_re_check(tmp_path, monkeypatch):
    b = make_bot(tmp_path, approval_ttl_sec=30)
    await b.start()
    try:
        await b.tick()
        (p,) = b.store.pending_proposals()
        real = engine.build_agent_state

        async def slow_state(*args, **kw):  # the fresh read takes the proposal past its expiry
            b.exchange.clock.advance(31)
            return await real(*args, **kw)

        monkeypatch.setattr(engine, "build_agent_state", slow_state)
        b.exchange.clock.advance(25)
        assert (await b.core.approve(p.id, "alice", "console")).ok  # approved in time
        await b.core.drain()
        row = b.store.get_proposal(p.id)
        assert row.status == "blocked" and "expired before it could execute (checked at the claim)" in row.status_reason
        assert await orders_with_label(b, p.label) == []
        assert b.store.legs(p.id) == []  # nothing planned, nothing sent
    finally:
        await b.stop()


async def test_a_pause_during_the_re_check_keeps_it_approved_and_unsent(tmp_path, monkeypatch):
    b = make_bot(tmp_path)
    await b.start()
    try:
        await b.tick()
        (p,) = b.store.pending_proposals()
        real = engine.build_agent_state

        async def paused_meanwhile(*args, **kw):
            b.approvals.pause("bob", "cli", "stop")
            return await real(*args, **kw)

        monkeypatch.setattr(engine, "build_agent_state", paused_meanwhile)
        await b.core.approve(p.id, "alice", "console")
        await b.core.drain()
        assert b.store.get_proposal(p.id).status == "approved"
        assert await orders_with_label(b, p.label) == []
    finally:
        await b.stop()


def test_the_claim_blocks_a_proposal_past_its_expiry(tmp_path):
    from agent.models import Action, ActionType
    from chatops.store import Store

    store = Store(tmp_path / "db")
    action = Action(action=ActionType.OPEN_COVERED_CALL, underlying="BTC", symbol="BTC-Y-1-C", size=0.1)
    late = store.create_proposal(None, action, expires_at=store.now() + timedelta(seconds=10), approvals_required=1)
    assert store.vote_and_maybe_approve(late.id, "alice", "cli", "approve").kind == "approved"
    claim = store.claim(late.id, [], now=store.now() + timedelta(seconds=11), reason="test")
    assert claim.kind == "expired" and store.get_proposal(late.id).status == "blocked"
    assert store.legs(late.id) == []
    store.close()
