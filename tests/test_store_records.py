"""The store on both engines: flags, the event hash chain, outbox, decisions, review queries, a proposal's story."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from agent.models import Action, ActionType
from agent.tick import config_snapshot
from chatops import store as store_mod
from chatops.store import common as store_common
from chatops.store import (APPEND_ONLY_TABLES, MIGRATIONS, SCHEMA_VERSION, Store, StoreBusyError, connect, label_for,
                           migrate, schema_version, serialize_decision)
from tests.builders import NOW, settings
from tests.store_helpers import (Clock, clock, decision, drop_trigger, execution_result, full_store, kinds,  # noqa: F401
                                 new_proposal, open_action, raw, store)

ROOT = Path(__file__).resolve().parents[1]


def test_paused_flag_survives_reopen(target, clock):
    s = Store(target, now=clock)
    assert s.get_flag("paused", "0") == "0"
    s.set_flag("paused", "1", actor="alice", channel="telegram", reason="market is wild")
    s.close()
    s = Store(target, now=clock)
    assert s.get_flag("paused", "0") == "1"
    ev = s.list_events(kind="flag_set")
    assert len(ev) == 1 and ev[0]["data"] == {"key": "paused", "old": None, "new": "1"}
    assert ev[0]["reason"] == "market is wild" and ev[0]["actor"] == "alice"
    s.close()


def test_setting_changes_are_recorded_and_secrets_redacted(store):
    store.record_setting_change("max_delta", 0.3, 0.35, actor="alice", channel="cli", reason="wider band")
    store.record_setting_change("TELEGRAM_BOT_TOKEN", "123:abc", "456:def", actor="alice", channel="cli")
    rows = store.settings_changes()
    assert [(r["key"], r["old"], r["new"]) for r in rows] == [
        ("TELEGRAM_BOT_TOKEN", "***", "***"), ("max_delta", "0.3", "0.35")]
    assert kinds(store)["setting_changed"] == 2
    assert "abc" not in json.dumps(store.list_events())


# --- the hash chain ----------------------------------------------------------------------------


def _events(store: Store, n: int) -> None:
    for i in range(n):
        store.append_event("note", actor="t", channel="cli", reason=f"event {i}", data={"i": i})


def test_verify_chain_accepts_an_intact_chain(store):
    _events(store, 10)
    rep = store.verify_chain(batch=3)  # batches cross row boundaries
    assert (rep.ok, rep.checked, rep.first_broken_id) == (True, 10, None)
    assert rep.head_hash == store.list_events(order="desc", limit=1)[0]["hash"]


def test_verify_chain_names_an_edited_row(store, target):
    _events(store, 6)
    c = raw(target)
    drop_trigger(c, "events_no_update", "events")
    c.execute("UPDATE events SET reason = 'nothing happened' WHERE id = 4")
    c.close()
    rep = store.verify_chain()
    assert (rep.ok, rep.first_broken_id, rep.checked) == (False, 4, 3)
    assert "event 4 content changed" in rep.reason


def test_verify_chain_names_a_rehashed_row_by_its_successor(store, target):
    _events(store, 6)
    ev = store.list_events()[2]  # id 3
    forged = dict(ev, reason="forged", data_json=json.dumps(ev["data"], separators=(",", ":")))
    forged_hash = store_common._hash_event(ev["prev_hash"], forged)
    c = raw(target)
    drop_trigger(c, "events_no_update", "events")
    c.execute("UPDATE events SET reason = 'forged', hash = ? WHERE id = 3", [forged_hash])
    c.close()
    rep = store.verify_chain()
    assert (rep.ok, rep.first_broken_id) == (False, 4)
    assert "does not link to event 3" in rep.reason


def test_verify_chain_names_a_deleted_row(store, target):
    _events(store, 6)
    c = raw(target)
    drop_trigger(c, "events_no_delete", "events")
    c.execute("DELETE FROM events WHERE id = 3")
    c.close()
    rep = store.verify_chain()
    assert (rep.ok, rep.first_broken_id) == (False, 4)
    assert "deleted" in rep.reason and "jump from 2 to 4" in rep.reason


# --- outbox and message refs -------------------------------------------------------------------


def test_outbox_cycle(store, clock):
    a = store.enqueue_outbox("telegram", {"text": "first"}, "HTTP 502")
    b = store.enqueue_outbox("telegram", {"text": "second"}, "HTTP 502")
    other = store.enqueue_outbox("slack", {"text": "x"}, "timeout")
    assert [(i.id, i.payload["text"], i.attempts) for i in store.due_outbox("telegram")] == [
        (a, "first", 1), (b, "second", 1)]
    store.mark_outbox_attempt(a, "HTTP 429", clock() + timedelta(seconds=30))
    assert [i.id for i in store.due_outbox("telegram")] == [b]
    assert store.mark_outbox_delivered(b)
    assert not store.mark_outbox_delivered(b)
    assert store.due_outbox("telegram") == []
    clock.advance(31)
    due = store.due_outbox("telegram")
    assert [(i.id, i.attempts, i.last_error) for i in due] == [(a, 2, "HTTP 429")]
    assert store.mark_outbox_delivered(a)
    assert store.due_outbox("telegram") == []
    assert store.outbox_item(a).delivered_at == clock()
    assert [i.id for i in store.due_outbox("slack")] == [other]


def test_message_refs_per_channel_and_chat(store, clock):
    p = new_proposal(store, clock)
    store.save_message_ref(p.id, "telegram", -100123, 55)
    store.save_message_ref(p.id, "slack", "C042", "1712345678.000100")
    refs = store.message_refs(p.id)
    assert [(r.channel, r.chat_id, r.message_id) for r in refs] == [
        ("telegram", "-100123", "55"), ("slack", "C042", "1712345678.000100")]
    assert [r.message_id for r in store.message_refs(p.id, "slack")] == ["1712345678.000100"]


# --- decisions ---------------------------------------------------------------------------------


def test_decision_row_is_compact_and_round_trips(store, clock):
    d = decision()
    did = store.record_decision(d)
    c = store.db
    length = "octet_length(CAST({} AS TEXT))" if c.is_pg else "LENGTH(CAST({} AS BLOB))"
    size = c.scalar("SELECT " + " + ".join(f"COALESCE({length.format(col)}, 8)" for col in store_mod.DECISION_COLUMNS)
                    + " FROM decisions WHERE id = ?", [did])
    assert size < 2048, size
    assert c.scalar("SELECT final_json FROM decisions WHERE id = ?", [did]) is None  # same as proposed
    assert int(c.scalar(f"SELECT {c.json_text('state_json', 'n_cand')} FROM decisions WHERE id = ?", [did])) == 11
    assert c.scalar(f"SELECT {c.json_text('final_json', 'action')} FROM decisions_full WHERE id = ?",
                    [did]) == "DO_NOTHING"
    back = store.decision_model(did)
    assert back == d.model_copy(update={"state": back.state})
    assert back.state == json.loads(json.dumps(d.state))


def test_config_snapshots_are_stored_once(store):
    for i in range(3):
        store.record_decision(decision(ts=NOW + timedelta(minutes=5 * i)))
    store.record_decision(decision(ts=NOW + timedelta(minutes=15), config={**config_snapshot(settings()), "max_delta": 0.35}))
    assert store.count("config_snapshots") == 2
    assert [d["config"]["max_delta"] for d in store.list_decisions(order="asc")] == [0.3, 0.3, 0.3, 0.35]


def test_blocked_decision_keeps_both_actions(store):
    a = open_action()
    blocked = Action(action=ActionType.DO_NOTHING, underlying="BTC", reasoning="Risk engine blocked: margin")
    did = store.record_decision(decision(proposed=a, final=blocked, allowed=False))
    d = store.get_decision(did)
    assert (d["proposed_action"], d["final_action"], d["risk_allowed"]) == ("OPEN_COVERED_CALL", "DO_NOTHING", False)
    assert d["proposed"]["symbol"] == a.symbol and d["final"]["reasoning"].startswith("Risk engine blocked")


@pytest.mark.parametrize("config", [
    {"openai_api_key": "sk-live-123"},
    {"TELEGRAM_BOT_TOKEN": "123:abc"},
    {"deribit": {"client_secret": "s3cr3t"}},
    {"db_password": "hunter2"},
])
def test_record_decision_refuses_unredacted_secrets(store, config):
    with pytest.raises(ValueError, match="looks like a secret and is not redacted"):
        store.record_decision(decision(config=config))
    assert store.count("decisions") == 0


def test_redacted_or_harmless_keys_are_accepted(store):
    did = store.record_decision(decision(config={"openai_api_key": "***", "slack_bot_token": None,
                                                 "deribit_client_secret": "", "max_tokens": 1000, "monkey": "x"}))
    assert store.get_decision(did)["config"] == {"openai_api_key": "***", "deribit_client_secret": "",
                                                  "max_tokens": 1000, "monkey": "x"}


def test_llm_calls_of_a_decision_and_stats(store, clock):
    calls = ({"model": "gpt-4.1-mini", "prompt": "p", "raw_response": '{"action":"DO_NOTHING"}', "parsed": {"a": 1},
              "valid": True, "tokens_in": 900, "tokens_out": 40, "latency_ms": 800.0, "cost_usd": 0.0004},
             {"model": "gpt-4.1-mini", "raw_response": "garbage", "valid": False, "error": "not JSON",
              "prompt_tokens": 900, "completion_tokens": 3, "mode": "weird"})
    did = store.record_decision(decision(llm_calls=calls))
    store.record_llm_call(mode="ask", valid=True, model="m", tokens_in=100, tokens_out=10, decision_id=None)
    rows = list(store.iter_rows("llm_calls"))
    assert [r["decision_id"] for r in rows] == [did, did, None]
    assert rows[1]["tokens_in"] == 900 and json.loads(rows[1]["extra_json"]) == {"mode": "weird"}
    stats = store.llm_stats(NOW - timedelta(days=1))
    assert (stats["calls"], stats["invalid"], stats["fallbacks"], stats["tokens_in"], stats["tokens_out"]) == (
        3, 1, 1, 1900, 53)
    assert stats["tokens"] == 1953 and stats["errors"] == 1
    assert stats["by_mode"] == {"drive": 2, "ask": 1}
    assert store.llm_stats(NOW + timedelta(days=1))["calls"] == 0


def test_llm_call_records_of_the_llm_module_are_stored(store):
    from dataclasses import asdict

    from agent.llm import LLMCallRecord

    rec = LLMCallRecord(model="gpt-4.1-mini", prompt="p", raw_response='{"action":"DO_NOTHING"}',
                        parsed={"action": "DO_NOTHING"}, valid=True, error=None, tokens_in=700, tokens_out=30,
                        latency_ms=512.0, cost_usd=0.0003, finish_reason="stop", attempts=2, reasoning_tokens=12,
                        cached_tokens=640)
    did = store.record_decision(decision(llm_calls=(asdict(rec),)))
    qid = store.record_llm_call(decision_id=None, **{**asdict(rec), "mode": "ask", "parsed": None,
                                                       "parsed_json": '{"a": 1}', "tokens_in": None, "prompt_tokens": 5})
    first, second = store.iter_rows("llm_calls")
    assert (first["decision_id"], first["mode"], json.loads(first["parsed_json"])) == (did, "drive",
                                                                                      {"action": "DO_NOTHING"})
    assert json.loads(first["extra_json"]) == {"finish_reason": "stop", "tokens_estimated": False, "attempts": 2,
                                               "structured": True}
    assert (first["reasoning_tokens"], first["cached_tokens"]) == (12, 640)
    assert store.llm_stats()["reasoning_tokens"] == 24 and store.llm_stats()["cached_tokens"] == 1280
    assert (second["id"], json.loads(second["parsed_json"]), second["tokens_in"]) == (qid, {"a": 1}, 5)


@pytest.mark.parametrize("ref, pid, did", [(12, 12, None), ("12", 12, None), ("#12", 12, None), ("cc-12", 12, None),
                                           ("d34", None, 34), ("D34", None, 34), ("yesterday", None, None),
                                           (None, None, None)])
def test_question_refs_are_parsed(store, ref, pid, did):
    qid = store.record_question("bob", "slack", "why", "why?", ref)
    (q,) = store.iter_rows("questions", id=qid)
    assert (q["proposal_id"], q["decision_id"]) == (pid, did)
    assert q["ref"] == (None if ref is None else str(ref))


def test_review_queries(store, clock):
    for i in range(6):
        final = open_action(i) if i % 3 == 0 else None
        store.record_decision(decision(final=final, ts=NOW + timedelta(minutes=5 * i)))
    last = store.list_decisions(limit=2)
    assert [d["ts"] for d in last] == [store_mod.iso(NOW + timedelta(minutes=25)), store_mod.iso(NOW + timedelta(minutes=20))]
    assert last[0]["reasoning"].startswith("Hold")
    opens = store.list_decisions(action="OPEN_COVERED_CALL", order="asc", full=False)
    assert [d["final_symbol"] for d in opens] == [open_action(0).symbol, open_action(3).symbol]
    window = store.list_decisions(since=NOW + timedelta(minutes=5), until=NOW + timedelta(minutes=15))
    assert len(window) == 2
    assert store.last_tick_at() == NOW + timedelta(minutes=25)
    assert store.last_decision()["id"] == 6
    p1, p2 = new_proposal(store, clock, n=1), new_proposal(store, clock, n=2)
    store.transition(p1.id, "pending", "cancelled", actor="a", channel="cli")
    assert [p.id for p in store.list_proposals(status="cancelled")] == [p1.id]
    assert [p.id for p in store.list_proposals()] == [p2.id, p1.id]
    assert store.latest_proposal().id == p2.id
    assert [p.id for p in store.proposals_in_status("pending", "cancelled")] == [p1.id, p2.id]
    assert [e["kind"] for e in store.list_events(kind="proposal_cancelled")] == ["proposal_cancelled"]
    all_ids = [e["id"] for e in store.list_events()]
    assert all_ids == [1, 2, 3]
    assert [e["id"] for e in store.list_events(limit=2)] == [2, 3]  # the latest 2, oldest first
    assert [e["id"] for e in store.list_events(limit=2, order="desc")] == [3, 2]


def test_iter_rows_pages_and_filters(store, clock):
    for i in range(7):
        store.append_event("tick" if i % 2 else "note", actor="t", channel="cli", data={"i": i})
    assert [r["id"] for r in store.iter_rows("events", batch_size=2)] == list(range(1, 8))
    assert [json.loads(r["data_json"])["i"] for r in store.iter_rows("events", kind="tick", batch_size=2)] == [1, 3, 5]
    assert [r["id"] for r in store.iter_rows("events", order="desc", batch_size=3)] == list(range(7, 0, -1))
    store.set_flag("paused", "1", actor="a", channel="cli")
    assert [r["key"] for r in store.iter_rows("flags")] == ["instance_id", "paused"]
    with pytest.raises(ValueError, match="unknown table"):
        list(store.iter_rows("sqlite_master"))
    with pytest.raises(ValueError, match="no column"):
        list(store.iter_rows("events", nope=1))


def test_review_queries_use_the_indexes(store):
    if store.db.is_pg:
        pytest.skip("SQLite query plans (PostgreSQL plans depend on its statistics)")
    plan = lambda sql: " ".join(r[3] for r in store.db.execute("EXPLAIN QUERY PLAN " + sql).fetchall())  # noqa: E731
    assert "idx_decisions_ts" in plan("SELECT * FROM decisions ORDER BY ts DESC, id DESC LIMIT 100")
    assert "idx_decisions_action_ts" in plan(
        "SELECT * FROM decisions WHERE final_action = 'OPEN_COVERED_CALL' ORDER BY ts DESC, id DESC LIMIT 100")
    assert "idx_events_proposal" in plan("SELECT * FROM events WHERE proposal_id = 1 ORDER BY id")
    assert "idx_proposals_status" in plan("SELECT id FROM proposals WHERE status = 'pending' AND expires_at <= 'x'")
    assert "idx_proposals_underlying_status" in plan(
        "SELECT * FROM proposals WHERE underlying = 'BTC' AND status = 'executed'")
    assert "sqlite_autoindex_votes" in plan("SELECT * FROM votes WHERE proposal_id = 1")


# --- a proposal's story and the policy's history ----------------------------------------------


def test_proposal_story(full_store):
    store, p = full_store
    story = store.proposal_story(p.id)
    assert story["proposal"]["status"] == "executed" and story["proposal"]["label"] == p.label
    assert story["proposal"]["action_obj"]["symbol"] == p.symbol
    assert story["decision"]["id"] == p.decision_id and story["decision"]["final"]["symbol"] == p.symbol
    assert [(v["user"], v["vote"]) for v in story["votes"]] == [("alice", "approve")]
    assert [e["kind"] for e in story["events"]] == ["proposal_created", "vote", "proposal_approved",
                                                    "proposal_executing", "execution_recorded", "proposal_executed",
                                                    "order_fill"]
    (ex,) = story["executions"]
    assert ex["status"] == "filled" and ex["dry_run"] is False and ex["result"]["message"] == "filled 0.1 at 0.006"
    assert [(o["order_id"], o["label"], o["filled_amount"]) for o in ex["orders"]] == [("ord-1", p.label, 0.1)]
    (q,) = story["questions"]
    assert q["text"] == "why this strike?" and [a["source"] for a in q["answers"]] == ["db"]
    assert [(m["channel"], m["chat_id"], m["message_id"]) for m in story["messages"]] == [("telegram", "42", "1001")]
    assert store.proposal_story(9999) is None


def _executed(store: Store, clock: Clock, action: Action) -> int:
    did = store.record_decision(decision(final=action, ts=clock()))
    p = store.create_proposal(did, action, expires_at=clock() + timedelta(minutes=5), approvals_required=1)
    store.vote_and_maybe_approve(p.id, "alice", "cli", "approve")
    store.transition(p.id, "approved", "executing", actor="agent", channel="executor")
    store.transition(p.id, "executing", "executed", actor="agent", channel="executor")
    return p.id


def test_history_for_policy(store, clock):
    A, B, C, X = "BTC-A-100000-C", "BTC-B-104000-C", "BTC-C-108000-C", "BTC-X-99000-C"
    t_open = clock()
    _executed(store, clock, Action(action=ActionType.OPEN_COVERED_CALL, underlying="BTC", symbol=A, size=0.1))
    _executed(store, clock, Action(action=ActionType.OPEN_COVERED_CALL, underlying="BTC", symbol=X, size=0.1))
    clock.advance(3600)
    t_roll1 = clock()
    _executed(store, clock, Action(action=ActionType.ROLL_COVERED_CALL, underlying="BTC", symbol=B, roll_from=A,
                                   size=0.1))
    clock.advance(3600)
    _executed(store, clock, Action(action=ActionType.CLOSE_COVERED_CALL, underlying="BTC", symbol=X, size=0.1))
    clock.advance(3600)
    t_roll2 = clock()
    _executed(store, clock, Action(action=ActionType.ROLL_COVERED_CALL, underlying="BTC", symbol=C, roll_from=B,
                                   size=0.1))
    # Not executed: ignored.
    new_proposal(store, clock, n=7)
    clock.advance(60)

    h = store.history_for_policy("BTC", clock())
    assert h.roll_count == {C: 2}
    assert h.last_action_at[A] == t_roll1 and h.last_action_at[B] == t_roll2 and h.last_action_at[C] == t_roll2
    assert X in h.last_action_at
    assert "OPEN_COVERED_CALL" in h.previous_decision and "\n" not in h.previous_decision

    earlier = store.history_for_policy("BTC", t_roll1 + timedelta(seconds=1))
    assert earlier.roll_count == {B: 1, X: 0} and earlier.last_action_at[A] == t_roll1
    assert earlier.last_action_at.get(C) is None
    assert store.history_for_policy("ETH", clock()).roll_count == {}
    assert store.history_for_policy("ETH", clock()).previous_decision is None
    assert t_open <= min(h.last_action_at.values())

