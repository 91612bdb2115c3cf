"""Tamper evidence that outlives the database (issue 11): every audit table is chained, the head
is anchored outside the database, and `chatops audit verify` names what was cut or rewritten.
The tampering is raw SQL on the file from another process."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from chatops.store import Store
from tests.spine_helpers import make_bot

ROOT = Path(__file__).resolve().parents[1]


def chatops(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
           "DATABASE_PATH": str(tmp_path / "chatops.db")}
    return subprocess.run([sys.executable, "-m", "chatops", *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)


# An attacker who knows the hash recipe: drops the triggers, edits, and re-chains from the edit on.
TAMPER = """
import sqlite3, sys
from chatops.store.chain import link_hash, row_hash
con = sqlite3.connect(sys.argv[1], isolation_level=None)
for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
    con.execute(f"DROP TRIGGER {name}")
mode = sys.argv[2]
if mode == "truncate":  # cut off the last N chain entries and their rows
    n = int(sys.argv[3])
    for seq, tbl, rid in con.execute("SELECT seq, tbl, row_id FROM audit_chain ORDER BY seq DESC LIMIT ?", [n]).fetchall():
        con.execute(f"DELETE FROM {tbl} WHERE rowid = ?", [rid])
        con.execute("DELETE FROM audit_chain WHERE seq = ?", [seq])
elif mode == "rewrite":  # change a vote's reason, then recompute every hash from its entry on
    con.execute("UPDATE votes SET reason = 'looked fine to me' WHERE id = 1")
    (start,) = con.execute("SELECT seq FROM audit_chain WHERE tbl = 'votes' AND row_id = 1").fetchone()
    prev = con.execute("SELECT hash FROM audit_chain WHERE seq = ?", [start - 1]).fetchone()[0]
    for seq, tbl, rid in con.execute("SELECT seq, tbl, row_id FROM audit_chain WHERE seq >= ? ORDER BY seq",
                                     [start]).fetchall():
        cur = con.execute(f"SELECT * FROM {tbl} WHERE rowid = ?", [rid])
        row = dict(zip([d[0] for d in cur.description], cur.fetchone()))
        rh = row_hash(tbl, row)
        h = link_hash(prev, seq, tbl, rid, rh)
        con.execute("UPDATE audit_chain SET row_hash = ?, prev_hash = ?, hash = ? WHERE seq = ?", [rh, prev, h, seq])
        prev = h
elif mode == "edit":  # change a decision, nothing else
    con.execute("UPDATE decisions SET final_action = 'DO_NOTHING' WHERE id = 1")
elif mode == "insert":  # a vote behind the store's back
    con.execute("INSERT INTO votes (proposal_id, user, channel, vote, ts, person) VALUES (1, 'm', 'cli', 'approve', 'x', 'm')")
print("done")
"""


def tamper(tmp_path: Path, *args: str) -> None:
    done = subprocess.run([sys.executable, "-c", TAMPER, str(tmp_path / "chatops.db"), *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "done", done.stderr


async def run_bot(tmp_path: Path, **kw) -> None:
    """Two ticks, a reject with a reason, a clean stop (which anchors the head)."""
    b = make_bot(tmp_path, **kw)
    await b.start()
    try:
        await b.tick()
        (p,) = b.store.pending_proposals()
        assert (await b.core.reject(p.id, "alice", "console", "too close to spot")).ok
        await b.tick()
    finally:
        await b.stop()


def anchors(tmp_path: Path) -> list[str]:
    return (tmp_path / "audit-anchors.log").read_text().splitlines()


async def test_every_audit_table_is_chained_and_the_head_is_anchored_at_stop(tmp_path):
    await run_bot(tmp_path)
    s = Store(tmp_path / "chatops.db")
    try:
        head = s.audit_head()
        tables = {r["tbl"] for r in s._rows("SELECT DISTINCT tbl FROM audit_chain")}
        assert {"events", "votes", "decisions", "config_snapshots"} <= tables
        assert head.count == sum(s._scalar(f"SELECT COUNT(*) FROM {t}") for t in tables)
    finally:
        s.close()
    (line,) = anchors(tmp_path)
    assert line.split()[1] == head.as_text() and line.endswith(" stop")
    printed = chatops(tmp_path, "audit", "head")
    assert printed.returncode == 0 and printed.stdout.strip() == head.as_text()
    ok = chatops(tmp_path, "audit", "verify")
    assert ok.returncode == 0 and f"head {head.as_text()}, 1 anchor(s) matched" in ok.stdout


async def test_a_truncated_tail_fails_against_the_anchor(tmp_path):
    await run_bot(tmp_path)
    tamper(tmp_path, "truncate", "3")
    bad = chatops(tmp_path, "audit", "verify")
    assert bad.returncode == 1 and "truncated" in bad.stdout and "3 missing at the end" in bad.stdout


async def test_a_rewritten_suffix_with_recomputed_hashes_fails_against_the_anchor(tmp_path):
    await run_bot(tmp_path)
    (line,) = anchors(tmp_path)
    head = line.split()[1]
    tamper(tmp_path, "rewrite")
    (tmp_path / "audit-anchors.log").unlink()  # the bot's machine lost its copy: a head kept elsewhere still tells
    alone = chatops(tmp_path, "audit", "verify")
    assert alone.returncode == 0 and "no anchor given" in alone.stdout  # consistent in itself, as the attacker made it
    bad = chatops(tmp_path, "audit", "verify", "--head", head)
    assert bad.returncode == 1 and "rewritten: chain entry" in bad.stdout and "--head" in bad.stdout


async def test_an_edited_row_and_a_row_inserted_behind_the_stores_back_are_named(tmp_path):
    await run_bot(tmp_path)
    tamper(tmp_path, "edit")
    bad = chatops(tmp_path, "audit", "verify")
    assert bad.returncode == 1 and "decisions #1" in bad.stdout and "rewritten" in bad.stdout
    tamper(tmp_path, "insert")
    bad = chatops(tmp_path, "audit", "verify")
    assert "votes has 1 row(s) not in the chain" in bad.stdout


def test_a_bad_head_is_one_line(tmp_path):
    Store(tmp_path / "chatops.db").close()
    bad = chatops(tmp_path, "audit", "verify", "--head", "abc:3")
    assert bad.returncode == 2 and "expected HASH:N" in bad.stderr and bad.stderr.count("\n") == 1


async def test_the_head_is_anchored_every_n_entries_and_posted_in_the_daily_summary(tmp_path):
    out = io.StringIO()
    b = make_bot(tmp_path, out=out, audit_anchor_every=2)
    await b.start()
    try:
        for _ in range(5):  # each tick after the first adds one decision row
            await b.tick()
            await b.sweep()
        assert len(anchors(tmp_path)) >= 2
        counts = [int(x.split()[1].split(":")[1]) for x in anchors(tmp_path)]
        assert counts == sorted(counts) and all(b2 - a >= 2 for a, b2 in zip(counts, counts[1:]))
        await b.daily_summary()
        posted = out.getvalue().split("Audit head ")[1].split(".")[0]
        assert posted == anchors(tmp_path)[-1].split()[1]  # what chat shows is anchored in the file too
    finally:
        await b.stop()
    ok = chatops(tmp_path, "audit", "verify")
    assert ok.returncode == 0 and f"{len(anchors(tmp_path))} anchor(s) matched" in ok.stdout
