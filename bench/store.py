"""Benchmark of the store on a long history, on SQLite and PostgreSQL side by side: size per
decision row, review latencies, writes per second.

    python bench/store.py                 # SQLite 1,000,000 decisions (ten years of 5-minute ticks),
                                          # PostgreSQL 100,000 (a throwaway cluster: Debian's postgresql)
    python bench/store.py --n 200000 --pg-n 200000      # other sizes
    python bench/store.py --engines sqlite --db /tmp/x.db  # one engine; keep the SQLite file
    python bench/store.py --engines postgresql --url postgresql://user:pass@host/emptydb

Set-up is bulk (executemany in large BEGIN IMMEDIATE transactions; COPY on PostgreSQL) but every row is built by
`serialize_decision`, the serialization `Store.record_decision` uses, from realistic decisions
(2 short calls, 8 of ~11 candidates, rule reasoning, the real config snapshot). Proposals (1 per
100 ticks), their votes, events (a valid hash chain), executions, orders, questions and message
refs are added in proportion. Then the figures are measured through the public Store API.
Progress goes to stderr, figures to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.config import load_settings  # noqa: E402
from agent.models import (AccountState, Action, ActionType, AgentState, Candidate, Decision,  # noqa: E402
                          ExecutionResult, ExecutionStatus, OptionPosition, OrderOutcome, OrderRequest, RiskResult)
from agent.tick import compress_state, config_snapshot  # noqa: E402
from chatops import store as store_mod  # noqa: E402
from chatops.store import common as store_common  # noqa: E402
from chatops.store import DECISION_COLUMNS, GENESIS_HASH, Store, iso, label_for, serialize_decision  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
TICK = timedelta(minutes=5)
PROPOSAL_EVERY = 100  # one tick in 100 proposes something
TEMPLATES = 400
CHUNK = 50_000

TARGET_BYTES = 2048
TARGET_P50_MS = 50.0


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --- realistic decisions ---------------------------------------------------------------------


def _expiry_label(ts: datetime, days: int) -> tuple[str, int]:
    exp = (ts + timedelta(days=days)).replace(hour=8, minute=0, second=0, microsecond=0)
    return exp.strftime("%-d%b%y").upper(), int(exp.timestamp() * 1000)


def make_state(rng: random.Random, ts: datetime) -> AgentState:
    spot = rng.uniform(60_000, 120_000)
    fwd = spot * (1 + rng.uniform(0, 0.003))
    cands = []
    n_cand = rng.randint(9, 14)
    for i in range(n_cand):
        days = rng.choice((5, 6, 7, 8, 9, 10))
        name, exp_ms = _expiry_label(ts, days)
        strike = round(fwd * (1.02 + 0.01 * i) / 1000) * 1000
        bid = round(rng.uniform(0.003, 0.012), 4)
        dte = days - rng.random()
        delta = rng.uniform(0.15, 0.30)
        yld = bid * 365 / dte * 100
        cands.append(Candidate(
            id=f"c{i + 1}", instrument_name=f"BTC-{name}-{strike}-C", strike=strike, expiration_timestamp=exp_ms,
            dte=dte, delta=delta, mark_iv=rng.uniform(35, 70), forward=fwd, bid=bid, ask=bid + 0.0002, mark=bid + 0.0001,
            bid_usd=bid * fwd, ask_usd=(bid + 0.0002) * fwd, mark_usd=(bid + 0.0001) * fwd,
            otm_pct=(strike / fwd - 1) * 100, annualized_yield_pct=yld, open_interest=rng.uniform(50, 900),
            spread_pct=3.3, score=yld - 100 * abs(delta - 0.25) - 2 * abs(dte - 7), min_trade_amount=0.1,
            tick_size=0.0001))
    positions = []
    for j in range(2):
        days = rng.randint(1, 9)
        name, exp_ms = _expiry_label(ts, days)
        strike = round(fwd * (1.03 + 0.04 * j) / 1000) * 1000
        positions.append(OptionPosition(
            id=f"p{j + 1}", instrument_name=f"BTC-{name}-{strike}-C", option_type="call", strike=strike,
            expiration_timestamp=exp_ms, dte=days - rng.random(), size=-0.1, average_price=rng.uniform(0.004, 0.01),
            mark=rng.uniform(0.001, 0.008), bid=0.002, ask=0.0025, delta=rng.uniform(0.05, 0.4), mark_iv=50.0,
            forward=fwd, min_trade_amount=0.1, tick_size=0.0001))
    cands.sort(key=lambda c: -c.score)
    eq = rng.uniform(0.9, 1.2)
    im = rng.uniform(0.05, 0.2)
    return AgentState(
        timestamp=ts, underlying="BTC", spot=spot, forward=fwd,
        account=AccountState(currency="BTC", equity=eq, balance=eq, available_funds=eq - im, initial_margin=im,
                             maintenance_margin=im / 2, margin_used_pct=im / eq * 100,
                             options_delta=sum(p.size * p.delta for p in positions)),
        positions=tuple(positions), candidates=tuple(cands), chain_size=rng.randint(600, 900), requests=5)


def make_decision(rng: random.Random, ts: datetime, config: dict, *, act: bool) -> Decision:
    st = make_state(rng, ts)
    p1, p2 = st.positions
    best = st.candidates[0]
    hold = " | ".join(
        f"Hold {p.instrument_name}: {p.dte * 24:.0f} h left, delta {p.delta:.2f}, spot {st.spot:,.0f} = "
        f"{st.spot / p.strike * 100:.1f}% of strike, {rng.randint(10, 80)}% of the {p.average_price:.4f} premium "
        f"captured: no rule fires." for p in (p1, p2))
    blocked = False
    if not act:
        proposed = Action(action=ActionType.DO_NOTHING, underlying="BTC", reasoning=hold)
    elif rng.random() < 0.5:
        proposed = Action(action=ActionType.ROLL_COVERED_CALL, underlying="BTC", symbol=best.instrument_name,
                          roll_from=p1.instrument_name, size=0.1, ref_sell_price=best.bid, ref_buy_price=p1.ask,
                          reasoning=(f"Roll up and out: {p1.instrument_name} delta {p1.delta:.2f} above 0.40 with "
                                     f"{p1.dte:.1f} DTE. Buy back at about {p1.ask:.4f}, sell {best.instrument_name} "
                                     f"at {best.bid:.4f} (delta {best.delta:.2f}, {best.dte:.1f} DTE, "
                                     f"{best.annualized_yield_pct:.1f}% annualized)."))
        blocked = rng.random() < 0.2
    else:
        proposed = Action(action=ActionType.OPEN_COVERED_CALL, underlying="BTC", symbol=best.instrument_name, size=0.1,
                          ref_sell_price=best.bid,
                          reasoning=(f"Open: sell {best.instrument_name} at {best.bid:.4f} (${best.bid_usd:,.0f}), "
                                     f"delta {best.delta:.2f}, {best.dte:.1f} DTE, {best.otm_pct:.1f}% OTM, "
                                     f"{best.annualized_yield_pct:.1f}% annualized; best of {len(st.candidates)}."))
    if blocked:
        risk = RiskResult(allowed=False, reasons=("margin used would be 52.1% > 50%",), checks=("size ok", "symbol ok"))
        final = Action(action=ActionType.DO_NOTHING, underlying="BTC",
                       reasoning="Risk engine blocked: margin used would be 52.1% > 50%")
    else:
        risk = RiskResult(allowed=True, checks=("nothing to check",) if not act else
                          ("size ok", "symbol ok", "margin 31.0% <= 50%", "delta 0.12 <= 1", "expiry exposure ok"))
        final = proposed
    timings = {"state_ms": round(rng.uniform(80, 400), 2), "brain_ms": round(rng.uniform(0.2, 2), 2),
               "risk_ms": round(rng.uniform(0.05, 0.5), 2)}
    timings["total_ms"] = round(sum(timings.values()), 2)
    return Decision(timestamp=ts, underlying="BTC", state=compress_state(st), proposed_action=proposed,
                    risk_check=risk, final_action=final, config_snapshot=config, decision_source="rule",
                    timings_ms=timings, requests=st.requests)


# --- bulk set-up --------------------------------------------------------------------------------


class Bulk:
    """Bulk rows for the set-up: executemany in one BEGIN IMMEDIATE (SQLite) or COPY (PostgreSQL)."""

    def __init__(self, target: str) -> None:
        self.db = store_mod.connect(target)
        self.raw = self.db.conn.connection.dbapi_connection  # the driver's own connection
        if not self.db.is_pg:
            self.raw.execute("PRAGMA synchronous = OFF")  # set-up only; the measured writes use the Store

    def rows(self, table: str, cols: list[str], rows) -> None:
        quoted = ", ".join(f'"{c}"' for c in cols)
        if self.db.is_pg:
            with self.raw.cursor() as cur, cur.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(r)
            self.raw.commit()
            return
        self.raw.execute("BEGIN IMMEDIATE")
        self.raw.executemany(f"INSERT INTO {table} ({quoted}) VALUES ({', '.join('?' for _ in cols)})", rows)
        self.raw.execute("COMMIT")

    def finish(self, explicit_ids: list[str]) -> None:
        if self.db.is_pg:
            with self.raw.cursor() as cur:
                for t in explicit_ids:  # identity columns filled by hand: move their sequences on
                    cur.execute(f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), COALESCE(MAX(id), 0) + 1, false) "
                                f"FROM {t}")
            self.raw.commit()
            self.raw.autocommit = True
            self.raw.execute("VACUUM ANALYZE")
        else:
            self.raw.execute("ANALYZE")
            self.raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()


def build(target: str, n: int, rng: random.Random) -> dict:
    config = config_snapshot(load_settings(env_file=None))
    log(f"building {TEMPLATES} decision templates through serialize_decision")
    idle = [serialize_decision(make_decision(rng, START, config, act=False)) for _ in range(TEMPLATES)]
    acting = [serialize_decision(make_decision(rng, START, config, act=True)) for _ in range(TEMPLATES // 4)]
    actions = [make_decision(rng, START, config, act=True).proposed_action for _ in range(50)]

    # The history is built at schema v2 (before per-person votes and the audit chain over every
    # table); opening the Store afterwards applies the later migrations to it as to any old database:
    # votes get their persons, every audit row joins the chain.
    bulk = Bulk(target)
    store_mod.migrate(bulk.db, store_mod.MIGRATIONS[:2])
    cfg = idle[0]["config_json"]
    with bulk.db.transaction():
        config_id = bulk.db.insert("config_snapshots", {"hash": hashlib.sha256(cfg.encode()).hexdigest(),
                                                         "config_json": cfg, "first_seen": iso(START)})
    cols = [col for col in DECISION_COLUMNS]

    def rows(lo: int, hi: int):
        for i in range(lo, hi):
            t = acting[(i // PROPOSAL_EVERY) % len(acting)] if i % PROPOSAL_EVERY == 0 else idle[i % TEMPLATES]
            r = dict(t, ts=iso(START + TICK * i), config_id=config_id)
            yield (i + 1, *(r[col] for col in cols))

    t0 = time.perf_counter()
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        bulk.rows("decisions", ["id", *cols], rows(lo, hi))
        rate = hi / (time.perf_counter() - t0)
        log(f"decisions {hi:,}/{n:,} ({rate:,.0f} rows/s)")

    # Proposals, votes, events (a valid chain), executions, orders, questions, answers, message refs.
    n_prop = max(1, n // PROPOSAL_EVERY)
    log(f"proposals and their audit rows: {n_prop:,} proposals")
    prev_hash, ev_id = GENESIS_HASH, 0
    props, votes, events, execs, orders, questions, answers, messages = [], [], [], [], [], [], [], []

    def event(ts: str, kind: str, pid: int, did: int | None, actor: str, channel: str, reason: str | None,
              data: dict | None) -> None:
        nonlocal prev_hash, ev_id
        ev_id += 1
        row = {"id": ev_id, "ts": ts, "kind": kind, "proposal_id": pid, "decision_id": did, "actor": actor,
               "channel": channel, "reason": reason, "data_json": None if data is None else store_mod.canonical(data)}
        row["prev_hash"] = prev_hash
        row["hash"] = prev_hash = store_common._hash_event(prev_hash, row)
        events.append(tuple(row.values()))

    statuses = ["executed"] * 5 + ["rejected", "expired", "superseded", "blocked", "failed"]
    eid = 0
    for k in range(n_prop):
        pid = k + 1
        did = k * PROPOSAL_EVERY + 1
        t = START + TICK * (k * PROPOSAL_EVERY)
        a = actions[k % len(actions)]
        status = statuses[k % len(statuses)]
        created, decided = iso(t), iso(t + timedelta(seconds=40))
        done = iso(t + timedelta(seconds=42))
        props.append((pid, did, created, iso(t + timedelta(minutes=5)), "BTC", a.action.value, a.symbol, a.roll_from,
                      a.size, 1, label_for(pid), status, None, "alice", decided, done, a.model_dump_json(exclude_none=True)))
        event(created, "proposal_created", pid, did, "agent", "scheduler", a.reasoning[:500], {"action": a.action.value})
        messages.append((pid, "telegram", "-1001234567", str(10_000 + pid), created, created))
        if status in ("executed", "failed", "blocked", "rejected"):
            vote = "reject" if status == "rejected" else "approve"
            votes.append((pid, "alice", "telegram", vote, None, decided, "telegram:alice"))
            event(decided, "vote", pid, None, "alice", "telegram", None, {"vote": vote})
            event(decided, f"proposal_{'rejected' if vote == 'reject' else 'approved'}", pid, did, "alice", "telegram",
                  None, {"from": "pending", "to": "rejected" if vote == "reject" else "approved"})
        if status in ("executed", "failed"):
            event(done, "proposal_executing", pid, did, "agent", "executor", "re-check passed",
                  {"from": "approved", "to": "executing"})
            eid += 1
            res = ExecutionResult(status=ExecutionStatus.FILLED if status == "executed" else ExecutionStatus.REJECTED,
                                  dry_run=False, message="filled" if status == "executed" else "rejected by exchange",
                                  orders=(OrderOutcome(request=OrderRequest(instrument_name=a.symbol or "", side="sell",
                                                                            amount=0.1, price=0.006, label=label_for(pid)),
                                                       order_id=f"ETH-{pid}", order_state="filled", filled_amount=0.1,
                                                       average_price=0.006),))
            execs.append((eid, pid, done, res.status.value, 0, res.message, None, res.model_dump_json(exclude_none=True)))
            orders.append((eid, pid, done, f"ETH-{pid}", a.symbol or "", "sell", 0.1, 0.006, label_for(pid), "limit", 0,
                           "filled", 0.1, 0.006, None, None, 0))
            event(done, "execution_recorded", pid, None, "agent", "executor", res.message, {"execution_id": eid})
            event(done, f"proposal_{status}", pid, did, "agent", "executor", res.message,
                  {"from": "executing", "to": status})
        elif status in ("expired", "superseded"):
            event(done, f"proposal_{status}", pid, did, "system", "scheduler", None, {"from": "pending", "to": status})
        elif status == "blocked":
            event(done, "proposal_blocked", pid, did, "agent", "executor", "price moved", {"from": "approved",
                                                                                            "to": "blocked"})
        if k % 10 == 0:
            questions.append((len(questions) + 1, decided, "bob", "slack", "why", "why this strike?", pid, did))
            answers.append((len(questions), decided, "Delta 0.25 at 7 DTE, best yield of the candidates.", "db"))

    bulk.rows("proposals", ["id", "decision_id", "created_at", "expires_at", "underlying", "action", "symbol",
                            "roll_from", "size", "approvals_required", "label", "status", "status_reason", "decided_by",
                            "decided_at", "updated_at", "action_json"], props)
    bulk.rows("votes", ["proposal_id", "user", "channel", "vote", "reason", "ts"], votes)
    bulk.rows("events", ["id", "ts", "kind", "proposal_id", "decision_id", "actor", "channel", "reason", "data_json",
                         "prev_hash", "hash"], events)
    bulk.rows("executions", ["id", "proposal_id", "ts", "status", "dry_run", "message", "error_code", "result_json"],
              execs)
    bulk.rows("orders", ["execution_id", "proposal_id", "ts", "order_id", "instrument", "side", "amount", "price",
                         "label", "order_type", "reduce_only", "order_state", "filled_amount", "average_price",
                         "error_code", "error_message", "reused"], orders)
    bulk.rows("questions", ["id", "ts", "user", "channel", "kind", "text", "proposal_id", "decision_id"], questions)
    bulk.rows("answers", ["question_id", "ts", "text", "source"], answers)
    bulk.rows("messages", ["proposal_id", "channel", "chat_id", "message_id", "created_at", "updated_at"], messages)
    log("analysing")
    bulk.finish(["decisions", "proposals", "events", "executions", "questions", "config_snapshots"])
    t1 = time.perf_counter()
    log("opening the Store: migrations 3.. on the v2 history (votes per person, every audit row chained)")
    Store(target).close()
    log(f"migrated in {time.perf_counter() - t1:,.0f} s")
    log("flushing the set-up's writes to disk (so the timed fsyncs do not pay for them)")
    os.sync()
    log(f"set-up done in {time.perf_counter() - t0:,.0f} s")
    return {"proposals": n_prop, "events": ev_id, "config": config}


# --- measurements -------------------------------------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def timed(fn, runs: int) -> tuple[float, float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out), pct(out, 0.95)


def line(label: str, value: str, target: str = "") -> None:
    print(f"  {label:<44} {value:>22}   {target}")


def _sqlite_sizes(s: Store, path: Path, n: int) -> None:
    c = s.db.conn.connection.dbapi_connection  # SQLite's own statistics (dbstat) need the sqlite3 connection
    file_bytes = path.stat().st_size
    log("measuring sizes (dbstat)")
    per_obj = dict(c.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
    dec_objs = ["decisions"] + [r[0] for r in c.execute(
        "SELECT name FROM sqlite_master WHERE tbl_name = 'decisions' AND type = 'index'")]
    dec_bytes = sum(per_obj.get(o, 0) for o in dec_objs)
    log("measuring column lengths")
    json_cols = ["state_json", "proposed_json", "risk_json", "final_json", "execution_json", "shadow_json",
                 "timings_json"]
    avgs = c.execute("SELECT " + ", ".join(f"AVG(COALESCE(LENGTH({col}), 0))" for col in json_cols) +
                     ", AVG(" + " + ".join(f"COALESCE(LENGTH(CAST({col} AS BLOB)), 0)" for col in DECISION_COLUMNS) +
                     "), AVG(final_json IS NULL) FROM decisions").fetchone()
    config_len = c.execute("SELECT AVG(LENGTH(config_json)) FROM config_snapshots").fetchone()[0]
    line("file size", f"{file_bytes / 1e6:,.1f} MB")
    line("file bytes / decision", f"{file_bytes / n:,.0f} B", f"(target <= {TARGET_BYTES} B)")
    line("decisions table + its indexes / decision", f"{dec_bytes / n:,.0f} B", f"(target <= {TARGET_BYTES} B)")
    line("avg content of a decision row", f"{avgs[-2]:,.0f} B")
    for col, v in zip(json_cols, avgs):
        line(f"  avg len {col}", f"{v:,.0f} B")
    line("  rows with final_json NULL (= proposed)", f"{avgs[-1] * 100:.2f} %")
    line("  config_json (stored once, shared)", f"{config_len or 0:,.0f} B")


def measure(target: str, n: int, info: dict, runs: int, writes: int, rng: random.Random) -> dict:
    s = Store(target)
    engine = "PostgreSQL" if s.db.is_pg else "SQLite"
    print(f"\nstore benchmark ({engine}): {n:,} decisions, {info['proposals']:,} proposals, {info['events']:,} events "
          f"({s.db.display})")
    print("size")
    if s.db.is_pg:
        total = s.db.scalar("SELECT pg_database_size(current_database())")
        dec_bytes = s.db.scalar("SELECT pg_total_relation_size('decisions')")
        line("database size", f"{total / 1e6:,.1f} MB")
        line("decisions table + its indexes / decision", f"{dec_bytes / n:,.0f} B", f"(target <= {TARGET_BYTES} B)")
    else:
        _sqlite_sizes(s, Path(target), n)
    print("review latency (ms, warm cache)")
    figures: dict = {}
    p50, p95 = timed(lambda: s.list_decisions(limit=100), runs)
    figures["list100"] = p50
    line("list last 100 decisions (JSON parsed)", f"p50 {p50:6.2f}  p95 {p95:6.2f}", f"(target p50 < {TARGET_P50_MS:g})")
    p50, p95 = timed(lambda: s.list_decisions(limit=100, action="OPEN_COVERED_CALL"), runs)
    line("list last 100 OPEN decisions", f"p50 {p50:6.2f}  p95 {p95:6.2f}", f"(target p50 < {TARGET_P50_MS:g})")
    mid = START + TICK * (n // 2)
    p50, p95 = timed(lambda: s.list_decisions(since=mid, until=mid + timedelta(days=1), limit=300), runs)
    line("decisions of one day mid-history", f"p50 {p50:6.2f}  p95 {p95:6.2f}", f"(target p50 < {TARGET_P50_MS:g})")
    ids = [rng.randint(1, info["proposals"]) for _ in range(runs)]
    it = iter(ids)
    p50, p95 = timed(lambda: s.proposal_story(next(it)), runs)
    figures["story"] = p50
    line("proposal story (random proposal)", f"p50 {p50:6.2f}  p95 {p95:6.2f}", f"(target p50 < {TARGET_P50_MS:g})")
    now = START + TICK * n
    p50, p95 = timed(lambda: s.history_for_policy("BTC", now), min(runs, 20))
    line("history_for_policy (every tick)", f"p50 {p50:6.2f}  p95 {p95:6.2f}", f"(target p50 < {TARGET_P50_MS:g})")
    p50, p95 = timed(lambda: s.pending_proposals("BTC"), runs)
    line("pending_proposals", f"p50 {p50:6.2f}  p95 {p95:6.2f}")
    p50, p95 = timed(lambda: s.expire_due(now), runs)
    line("expire_due (nothing due)", f"p50 {p50:6.2f}  p95 {p95:6.2f}")
    t = time.perf_counter()
    rep = s.verify_chain()
    line("verify_chain (all events)", f"{(time.perf_counter() - t):.2f} s", f"ok={rep.ok} checked={rep.checked:,}")

    print("writes (through Store.record_decision; " + ("synchronous_commit=on" if s.db.is_pg else
                                                        "synchronous=FULL, WAL") + ")")
    log(f"building {writes:,} decisions to write")
    decisions = [make_decision(rng, now + TICK * (i + 1), info["config"], act=(i % PROPOSAL_EVERY == 0))
                 for i in range(writes)]
    t = time.perf_counter()
    for d in decisions:
        s.record_decision(d)
    dt = time.perf_counter() - t
    line("record_decision", f"{writes / dt:,.0f} /s", f"({dt / writes * 1000:.2f} ms each; a tick is every 300 s)")
    out = {"writes": writes / dt}
    # The same path without the per-commit fsync: separates our CPU cost from this disk's fsync latency.
    more = [make_decision(rng, now + TICK * (writes + i + 1), info["config"], act=False) for i in range(writes // 2)]
    s.db.execute("SET synchronous_commit = off" if s.db.is_pg else "PRAGMA synchronous = NORMAL")
    t = time.perf_counter()
    for d in more:
        s.record_decision(d)
    dt = time.perf_counter() - t
    s.db.execute("SET synchronous_commit = on" if s.db.is_pg else "PRAGMA synchronous = FULL")
    line("  same, no fsync per commit", f"{len(more) / dt:,.0f} /s",
         f"({dt / len(more) * 1000:.2f} ms each)")
    t = time.perf_counter()
    for i in range(200):
        s.append_event("bench", actor="bench", channel="bench", data={"i": i})
    line("append_event", f"{200 / (time.perf_counter() - t):,.0f} /s")
    s.close()
    return {**out, **figures}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="decisions to build on SQLite (default 1,000,000)")
    ap.add_argument("--pg-n", type=int, default=100_000, help="decisions to build on PostgreSQL (default 100,000)")
    ap.add_argument("--engines", default="sqlite,postgresql", help="sqlite, postgresql or both (default both)")
    ap.add_argument("--db", type=Path, help="SQLite database path (kept); default: a temp dir, removed afterwards")
    ap.add_argument("--url", help="a PostgreSQL database URL (an empty database); default: a throwaway cluster")
    ap.add_argument("--runs", type=int, default=50, help="runs per latency figure (default 50)")
    ap.add_argument("--writes", type=int, default=2000, help="record_decision calls to time (default 2000)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    tmp = tempfile.mkdtemp(prefix="store-bench-")
    cluster = None
    results: dict[str, tuple[int, dict]] = {}
    t0 = time.perf_counter()
    try:
        for engine in engines:
            rng = random.Random(args.seed)
            if engine == "sqlite":
                path = args.db or Path(tmp) / "bench.db"
                if path.exists():
                    sys.exit(f"{path} exists: pass a new path (the benchmark builds its own history)")
                target, n = str(path), args.n
            elif engine == "postgresql":
                target, n = args.url, args.pg_n
                if target is None:
                    from tests.pg import Cluster, pg_bindir

                    if pg_bindir() is None:
                        sys.exit("no PostgreSQL binaries: apt-get install postgresql, or pass --url")
                    cluster = Cluster(pg_bindir(), durable=True).start()  # fsync on, as in production
                    target = cluster.new_database()
            else:
                sys.exit(f"unknown engine {engine!r}: sqlite or postgresql")
            log(f"{engine}: building {n:,} decisions")
            info = build(target, n, rng)
            results[engine] = (n, measure(target, n, info, args.runs, args.writes, rng))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if cluster is not None:
            cluster.stop()
    if len(results) > 1:
        print("\nside by side")
        line("", "   ".join(f"{e:>18}" for e in results))
        line("decisions in the history", "   ".join(f"{n:>18,}" for n, _ in results.values()))
        line("record_decision /s (fsync per commit)", "   ".join(f"{f['writes']:>18,.0f}" for _, f in results.values()))
        line("list last 100 decisions, p50 ms", "   ".join(f"{f['list100']:>18.2f}" for _, f in results.values()))
        line("one proposal's story, p50 ms", "   ".join(f"{f['story']:>18.2f}" for _, f in results.values()))
    log(f"total {time.perf_counter() - t0:,.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
