"""The CLI explains itself and never shows a traceback: help texts, --version, event kinds,
one-line errors, a reader that leaves the pipe early."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chatops import cli

ROOT = Path(__file__).resolve().parents[1]


def _all_parsers(p: argparse.ArgumentParser, path: str = "chatops"):
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"`{path} {name}` has no help line in `{path} --help`"
                yield from _all_parsers(sub, f"{path} {name}")


def test_every_option_and_argument_of_every_command_has_a_description():
    seen = 0
    for path, parser in _all_parsers(cli._parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            seen += 1
            name = "/".join(action.option_strings) or action.dest
            assert action.help and action.help.strip(), f"`{path} --help`: {name} has no description"
    assert seen > 40  # the walk really visited the commands


def test_help_output_shows_the_descriptions():
    p = subprocess.run([sys.executable, "-m", "chatops", "audit", "events", "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert p.returncode == 0
    assert "proposal_executed" in p.stdout and "only this kind" in p.stdout and "print JSON" in p.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert re.fullmatch(r"chatops \d+\.\d+\.\d+\n", capsys.readouterr().out)


def test_event_kinds_accept_short_names_and_list_themselves_when_unknown():
    assert cli.event_kind("executed") == "proposal_executed"
    assert cli.event_kind("PROPOSAL_REJECTED") == "proposal_rejected"
    assert cli.event_kind("vote") == "vote"
    with pytest.raises(cli.ConfigError) as err:
        cli.event_kind("exploded")
    assert "proposal_executed" in str(err.value) and "\n" not in str(err.value)


def test_the_listed_event_kinds_are_every_kind_the_code_writes():
    written = set()
    for path in (ROOT / "chatops").rglob("*.py"):
        written |= set(re.findall(r'append_event\(\s*"([a-z_]+)"', path.read_text()))
    assert written, "found no append_event calls"
    assert written <= set(cli.EVENT_KINDS), f"kinds missing from cli.EVENT_KINDS: {written - set(cli.EVENT_KINDS)}"
    from chatops.render import STATUS_WORDS

    assert {f"proposal_{s}" for s in STATUS_WORDS if s != "pending"} <= set(cli.EVENT_KINDS)


def _run(args, tmp_path, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DERIBIT", "TELEGRAM", "SLACK", "OPENAI"))}
    env.update(DATABASE_PATH=str(tmp_path / "db.sqlite"), PAPER_STATE_PATH=str(tmp_path / "paper.json"))
    return subprocess.run([sys.executable, "-m", "chatops", *args], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=60, **kw)


def test_bad_inputs_are_one_line_errors(tmp_path):
    for args, needle in ((["audit", "events", "--kind", "exploded"], "unknown event kind"),
                         (["audit", "events", "--since", "99999999999999d"], "bad time"),
                         (["audit", "proposals", "--status", "done"], "unknown status"),
                         (["audit", "decisions", "--action", "buy"], "unknown action"),
                         (["approve", "99999999999999999999"], "not a proposal number"),
                         (["approve", "abc"], "not a proposal number"),
                         (["audit", "decisions", "--limit", "0"], "not a positive whole number")):
        p = _run(args, tmp_path)
        assert p.returncode != 0, args
        assert "Traceback" not in p.stderr and needle in p.stderr, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) <= 3, p.stderr  # argparse: usage + error line


def test_audit_events_by_short_kind(tmp_path):
    assert _run(["pause", "--reason", "lunch"], tmp_path).returncode == 0
    p = _run(["audit", "events", "--kind", "flag_set"], tmp_path)
    assert p.returncode == 0 and "flag_set" in p.stdout and "lunch" in p.stdout
    p = _run(["audit", "events", "--kind", "executed"], tmp_path)
    assert p.returncode == 0 and p.stdout.strip() == "No events."


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    # `chatops status --json | head`: the reading end is gone before the first write.
    for args in (["status", "--json"], ["audit", "decisions"], ["config", "example"]):
        r, w = os.pipe()
        os.close(r)
        env = dict(os.environ, DATABASE_PATH=str(tmp_path / "db.sqlite"), PAPER_STATE_PATH=str(tmp_path / "paper.json"))
        p = subprocess.run([sys.executable, "-m", "chatops", *args], stdout=w, stderr=subprocess.PIPE, text=True,
                           cwd=tmp_path, env=env, timeout=60)
        os.close(w)
        assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
        assert p.returncode == 141, (args, p.returncode, p.stderr)
