"""Shadow mode: a few hundred ticks on the paper exchange with a scripted LLM beside the rules,
then `chatops audit shadow` reports how they differ."""

from __future__ import annotations

import json

from agent.models import ActionType
from chatops.cli import main
from chatops.shadow import shadow_report
from tests.fakes.openai_server import Reply, fake_openai_server, json_reply
from tests.spine_helpers import make_bot

TICKS = 240


def scripted_llm():
    """Picks the second-best candidate when opening (a different strike than the rules), holds when
    a call is open, and answers garbage every 12th call."""
    n = {"calls": 0}

    def respond(body):
        n["calls"] += 1
        if n["calls"] % 12 == 0:
            return Reply(content="I think you should sell the 97k call, size 5")
        props = body["response_format"]["json_schema"]["schema"]["properties"]
        cids = [x for x in props["candidate_id"].get("enum", []) if x]
        pids = [x for x in props["position_id"].get("enum", []) if x]
        if pids or not cids:  # a call is open: hold it
            return json_reply({"action": "DO_NOTHING", "candidate_id": None, "position_id": None, "reasoning": "hold"})
        pick = cids[1] if len(cids) > 1 else cids[0]
        return json_reply({"action": "OPEN_COVERED_CALL", "candidate_id": pick, "position_id": None,
                           "reasoning": "second-best yield, a little further out of the money"})

    return respond


async def test_shadow_run_produces_the_report(tmp_path, monkeypatch, capsys):
    async with fake_openai_server() as fake:
        fake.responder = scripted_llm()
        bot = make_bot(tmp_path, decision_mode="shadow", openai_base_url=fake.base_url, openai_api_key="sk-test",
                       approval_mode="auto", approval_ttl_sec=600)
        await bot.start()
        try:
            for _ in range(TICKS):
                await bot.tick()
                bot.exchange.clock.advance(300)
            stats = bot.store.llm_stats()
        finally:
            await bot.stop()
    assert len(fake.requests) == TICKS
    assert stats["calls"] == TICKS and stats["fallbacks"] == TICKS // 12

    from chatops.store import Store

    store = Store(tmp_path / "chatops.db")
    rep = shadow_report(store)
    assert rep.decisions == TICKS
    assert abs(rep.fallbacks - TICKS // 12) <= 1
    assert rep.both_open > 0 and any(d != 0 for d in rep.strike_diffs)
    assert sum(sum(row.values()) for row in rep.matrix.values()) == TICKS
    assert rep.matrix["OPEN_COVERED_CALL"]["OPEN_COVERED_CALL"] == rep.both_open
    # the rules drove: every executed proposal came from the rule brain
    for p in store.list_proposals(limit=1000):
        assert p.to_action().decision_source == "rule"
    store.close()

    monkeypatch.setenv("DATABASE_PATH", str(tmp_path / "chatops.db"))
    assert main(["audit", "shadow"]) == 0
    out = capsys.readouterr().out
    assert "Confusion matrix" in out and "agreement" in out and "LLM strike - rules strike" in out
    assert main(["audit", "shadow", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["decisions"] == TICKS and 0 <= data["agreement_rate"] <= 1
    assert ActionType.OPEN_COVERED_CALL.value in data["confusion_matrix"]
