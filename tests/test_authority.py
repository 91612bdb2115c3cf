"""Who may decide (issue 11): each attack that used to work, tried again. Attacks from a shell run
as a real second process (the CLI, raw SQL on the file)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError
from chatops.approvals import ApprovalService
from chatops.identity import Directory, load_people, os_user
from tests.spine_helpers import make_bot, make_settings, orders_with_label, settle_orders

ROOT = Path(__file__).resolve().parents[1]
ME = os_user()


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`chatops ...` as another process, with only the environment given (plus PATH and PYTHONPATH)."""
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
            "DATABASE_PATH": str(tmp_path / "chatops.db"), "PAPER_STATE_PATH": str(tmp_path / "paper.json")}
    return subprocess.run([sys.executable, "-m", "chatops", *args], env={**base, **env}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


async def pending_proposal(tmp_path: Path, **kw):
    """A bot (stopped again) that left one pending proposal with the quorum of `kw`."""
    b = make_bot(tmp_path, **kw)
    await b.start()
    await b.tick()
    (p,) = b.store.pending_proposals()
    await b.stop()
    return p


def people_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "people.toml"
    path.write_text(text)
    return str(path)


# --- quorum belongs to the proposal ------------------------------------------------------------


async def test_a_shell_without_approvals_required_cannot_approve_a_two_person_proposal(tmp_path):
    p = await pending_proposal(tmp_path, approvals_required=2, console_allowed_users=f"{ME},bob")
    done = cli(tmp_path, "approve", str(p.id), CONSOLE_ALLOWED_USERS=f"{ME},bob")  # no APPROVALS_REQUIRED: 1
    assert done.returncode == 0, done.stderr
    assert "1/2 approvals" in done.stdout
    b = make_bot(tmp_path, approvals_required=1, console_allowed_users=f"{ME},bob")  # restarted with a lower value
    await b.start()
    try:
        assert b.store.get_proposal(p.id).status == "pending"
        await b.sweep()
        assert b.store.get_proposal(p.id).status == "pending" and await orders_with_label(b, p.label) == []
        reply = await b.core.approve(p.id, "bob", "console")  # the second person: now it executes
        await settle_orders(b)  # the sell starts at the mid and steps toward the bid
        assert reply.ok and b.store.get_proposal(p.id).status == "executed"
    finally:
        await b.stop()


# --- identities ----------------------------------------------------------------------------------


async def test_logname_is_not_an_identity(tmp_path):
    p = await pending_proposal(tmp_path, approvals_required=2, console_allowed_users=f"{ME},alice,bob")
    allowed = f"{ME},alice,bob"
    first = cli(tmp_path, "approve", str(p.id), LOGNAME="alice", USER="alice", CONSOLE_ALLOWED_USERS=allowed)
    second = cli(tmp_path, "approve", str(p.id), LOGNAME="bob", USER="bob", CONSOLE_ALLOWED_USERS=allowed)
    assert first.returncode == 0 and "1/2 approvals" in first.stdout
    assert second.returncode == 1 and "already voted" in second.stdout
    b = make_bot(tmp_path)
    try:
        assert [(v.user, v.channel, v.person) for v in b.store.votes(p.id)] == [(ME, "cli", f"console:{ME}")]
        assert b.store.get_proposal(p.id).status == "pending"
    finally:
        b.store.close()


async def test_a_name_from_the_environment_on_the_allowlist_does_not_make_you_that_user(tmp_path):
    p = await pending_proposal(tmp_path, console_allowed_users="alice")
    done = cli(tmp_path, "approve", str(p.id), LOGNAME="alice", USER="alice", CONSOLE_ALLOWED_USERS="alice")
    assert done.returncode == 1 and "not on the allowlist" in done.stdout
    b = make_bot(tmp_path)
    try:
        assert b.store.votes(p.id) == []
        assert [e["actor"] for e in b.store.list_events(kind="unauthorized_vote")] == [ME]
    finally:
        b.store.close()


async def test_the_name_auto_skips_nothing(tmp_path):
    p = await pending_proposal(tmp_path, approvals_required=2, console_allowed_users=f"{ME},alice")
    done = cli(tmp_path, "approve", str(p.id), LOGNAME="auto", USER="auto", CONSOLE_ALLOWED_USERS=f"{ME},alice")
    assert "1/2 approvals" in done.stdout  # counted as the OS account, once, not as `auto`
    refused = cli(tmp_path, "approve", str(p.id), CONSOLE_ALLOWED_USERS="auto,alice")
    assert refused.returncode == 2 and "reserved name" in refused.stderr and refused.stderr.count("\n") == 1
    b = make_bot(tmp_path, approvals_required=2, console_allowed_users="alice,bob")
    await b.start()
    try:
        for channel in ("console", "telegram", "slack", "web", "auto"):
            reply = await b.core.approve(p.id, "auto", channel)
            assert reply.unauthorized, channel
        assert b.store.get_proposal(p.id).status == "pending"
        assert [v.person for v in b.store.votes(p.id)] == [f"console:{ME}"]
    finally:
        await b.stop()


def test_reserved_names_cannot_be_on_an_allowlist_or_in_the_people_file(tmp_path):
    for kw in ({"slack_allowed_user_ids": "U1,system"}, {"console_allowed_users": "alice,agent"}):
        with pytest.raises(ConfigError, match="reserved name"):
            ApprovalService(None, make_settings(tmp_path, **kw))  # type: ignore[arg-type]
    bad = people_file(tmp_path, '[people.executor]\nrole = "approver"\nconsole = "x"\n')
    with pytest.raises(ConfigError, match="reserved name"):
        load_people(bad)
    bad = people_file(tmp_path, '[people.alice]\nrole = "approver"\nconsole = "auto"\n')
    with pytest.raises(ConfigError, match="reserved name"):
        load_people(bad)


def test_a_bad_people_file_is_one_line(tmp_path):
    for text, needle in (('[people.a]\nrole = "boss"\nconsole = "a"\n', "role 'boss'"),
                         ('[people.a]\nrole = "approver"\ntelegram = "bob"\n', "Telegram user ids are numbers"),
                         ('[people.a]\nrole = "approver"\n', "no identity"),
                         ('[people.a]\nconsole = "a"\n[people.b]\nconsole = "a"\n', "both a and b"),
                         ("people = 3", r"needs \[people\.NAME\]"), ("[people", "PEOPLE_FILE")):
        path = people_file(tmp_path, text)
        with pytest.raises(ConfigError, match=needle) as err:
            Directory(load_people(path))
        assert "\n" not in str(err.value)


async def test_one_person_on_two_channels_votes_once(tmp_path):
    path = people_file(tmp_path, '[people.alice]\nrole = "approver"\ntelegram = 42\nslack = "U042"\n'
                                 '[people.bob]\nrole = "approver"\nconsole = "bob"\n')
    b = make_bot(tmp_path, approvals_required=2, people_file=path, console_allowed_users="carol")
    await b.start()
    try:
        await b.tick()
        (p,) = b.store.pending_proposals()
        assert "1/2" in (await b.core.approve(p.id, "42", "telegram")).text
        again = await b.core.approve(p.id, "U042", "slack")
        assert not again.ok and "already voted" in again.text
        assert b.store.get_proposal(p.id).status == "pending"
        assert (await b.core.approve(p.id, "bob", "console")).ok
        await settle_orders(b)
        assert b.store.get_proposal(p.id).status == "executed"
        assert [v.person for v in b.store.votes(p.id)] == ["alice", "bob"]
    finally:
        await b.stop()


async def test_without_a_people_file_ids_are_namespaced_by_channel(tmp_path):
    b = make_bot(tmp_path, approvals_required=2, console_allowed_users="42", telegram_allowed_user_ids="42")
    await b.start()
    try:
        await b.tick()
        (p,) = b.store.pending_proposals()
        assert "1/2" in (await b.core.approve(p.id, "42", "console")).text
        assert (await b.core.approve(p.id, "42", "telegram")).ok  # another person: telegram:42
        assert (await b.core.approve(p.id, "43", "telegram")).unauthorized  # the console allowlist is not Telegram's
        assert [v.person for v in b.store.votes(p.id)] == ["console:42", "telegram:42"]
    finally:
        await b.stop()


# --- every mutating command is authorized --------------------------------------------------------


async def test_a_stranger_cannot_pause_or_resume_from_a_shell(tmp_path):
    await pending_proposal(tmp_path, console_allowed_users="alice")
    done = cli(tmp_path, "pause", CONSOLE_ALLOWED_USERS="alice")
    assert done.returncode == 1 and "not on the allowlist" in done.stderr
    b = make_bot(tmp_path)
    try:
        assert not b.approvals.is_paused() and len(b.store.pending_proposals()) == 1  # nothing cancelled
        b.store.set_flag("paused", "1", actor="alice", channel="console")
    finally:
        b.store.close()
    done = cli(tmp_path, "resume", CONSOLE_ALLOWED_USERS="alice")
    assert done.returncode == 1
    b = make_bot(tmp_path)
    try:
        assert b.approvals.is_paused()
        refusals = [e["reason"] for e in b.store.list_events(kind="unauthorized")]
        assert any(r.startswith("pause refused") for r in refusals) and any(r.startswith("resume refused") for r in refusals)
    finally:
        b.store.close()


async def test_a_viewer_may_pull_the_kill_switch_but_only_an_approver_may_resume(tmp_path):
    path = people_file(tmp_path, f'[people.me]\nrole = "viewer"\nconsole = "{ME}"\n'
                                 '[people.boss]\nrole = "approver"\ntelegram = 7\n')
    p = await pending_proposal(tmp_path, people_file=path)
    paused = cli(tmp_path, "pause", "--reason", "looks wrong", PEOPLE_FILE=path)
    assert paused.returncode == 0 and "Paused." in paused.stdout and f"#{p.id}" in paused.stdout
    resumed = cli(tmp_path, "resume", PEOPLE_FILE=path)
    assert resumed.returncode == 1 and "viewer" in resumed.stderr
    b = make_bot(tmp_path, people_file=path)
    await b.start()
    try:
        assert b.approvals.is_paused()
        assert (await b.core.approve(p.id, ME, "console")).unauthorized  # a viewer does not vote
        assert (await b.core.handle_text("status", ME, "console")).ok  # but reads
        assert (await b.core.resume("7", "telegram")).ok
    finally:
        await b.stop()


# --- the database trusts nothing -----------------------------------------------------------------


RAW_SQL = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
try:
    for stmt in sys.argv[2:]:
        con.execute(stmt)
    print("ok")
except sqlite3.DatabaseError as exc:
    print("refused:", exc)
"""


def raw_sql(db: str, *stmts: str) -> str:
    return subprocess.run([sys.executable, "-c", RAW_SQL, db, *stmts], capture_output=True, text=True,
                          timeout=60).stdout.strip()


async def test_raw_sql_cannot_approve_without_votes(tmp_path):
    p = await pending_proposal(tmp_path, approvals_required=2)
    db = str(tmp_path / "chatops.db")
    assert "quorum not met" in raw_sql(db, f"UPDATE proposals SET status='approved' WHERE id={p.id}")
    assert "not an edge" in raw_sql(db, f"UPDATE proposals SET status='executed' WHERE id={p.id}")
    one_vote = (f"INSERT INTO votes (proposal_id, user, channel, vote, ts, person) VALUES "
                f"({p.id}, 'x', 'cli', 'approve', '2026-01-01', 'console:x')")
    assert "quorum not met" in raw_sql(db, one_vote, f"UPDATE proposals SET status='approved' WHERE id={p.id}")
    assert raw_sql(db, f"UPDATE proposals SET status='cancelled' WHERE id={p.id}") == "ok"  # an edge
    assert "not an edge" in raw_sql(db, f"UPDATE proposals SET status='pending' WHERE id={p.id}")  # final is final
    assert "only taken on a pending proposal" in raw_sql(db, one_vote.replace("'x'", "'y'").replace("console:x", "c:y"))
    # With the triggers dropped, the status changes; the executor's recount at the claim refuses it.
    names = [f"DROP TRIGGER {t}" for t in ("proposals_quorum", "proposals_state_machine")]
    assert raw_sql(db, *names, f"UPDATE proposals SET status='approved' WHERE id={p.id}") == "ok"
    b = make_bot(tmp_path, approvals_required=2)
    await b.start()
    try:
        await b.sweep()
        row = b.store.get_proposal(p.id)
        assert row.status == "blocked" and "only 1 of the 2 approving persons" in row.status_reason
        assert await orders_with_label(b, p.label) == []
    finally:
        await b.stop()


async def test_a_proposal_cannot_be_born_approved_or_voted_on_after_its_decision(tmp_path):
    p = await pending_proposal(tmp_path)
    db = str(tmp_path / "chatops.db")
    born = raw_sql(db, "INSERT INTO proposals (created_at, expires_at, underlying, action, approvals_required, status, "
                       "updated_at, action_json) VALUES ('a', 'b', 'BTC', 'OPEN_COVERED_CALL', 1, 'approved', 'c', '{}')")
    assert "starts pending" in born
    b = make_bot(tmp_path)
    try:
        assert b.store.vote_and_maybe_approve(p.id, "alice", "console", "reject").kind == "rejected"
    finally:
        b.store.close()
    late = raw_sql(db, f"INSERT INTO votes (proposal_id, user, channel, vote, ts, person) VALUES "
                       f"({p.id}, 'y', 'cli', 'approve', '2026-01-01', 'console:y')")
    assert "only taken on a pending proposal" in late


async def test_auto_cannot_approve_a_proposal_made_in_manual_mode(tmp_path):
    p = await pending_proposal(tmp_path)
    b = make_bot(tmp_path, approval_mode="auto")  # restarted unattended: old proposals stay manual
    await b.start()
    try:
        assert b.approvals.auto_approve(p.id) is None
        assert b.store.get_proposal(p.id).status == "pending" and b.store.votes(p.id) == []
    finally:
        await b.stop()
