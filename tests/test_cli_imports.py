"""`chatops approve N` from another shell starts fast: the vote commands load the settings, the
store and the approvals, never the bot, the exchange client, the backtest or the heavy libraries.
And the parser they get is the whole parser's, minus only what they cannot reach."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest

from chatops import cli
from chatops.identity import os_user
from chatops.store import Store
from tests.store_helpers import Clock, new_proposal

ROOT = Path(__file__).resolve().parents[1]

# Loaded by the bot, the exchange, the backtest, the dashboard or the LLM: none is a vote's business.
HEAVY = ("chatops.app", "chatops.backtest", "chatops.engine", "chatops.scheduler", "chatops.web", "agent.backtest",
         "agent.deribit.paper", "agent.deribit.client", "agent.exchange", "agent.tick", "agent.market", "numpy",
         "pandas", "matplotlib", "fastapi", "starlette", "uvicorn", "openai", "httpx", "telegram", "slack_bolt",
         "apscheduler")

_SCRIPT = textwrap.dedent("""
    import contextlib, io, json, sys
    from chatops import cli
    heavy = json.loads(sys.argv[1])
    out = []
    for argv in json.loads(sys.argv[2]):
        text = io.StringIO()
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
            rc = cli.main(argv)
        loaded = sorted(h for h in heavy if h in sys.modules or any(m.startswith(h + ".") for m in sys.modules))
        out.append({"argv": argv, "rc": rc, "text": text.getvalue(), "loaded": loaded})
    print(json.dumps(out))
""")


def test_the_vote_commands_load_no_bot_exchange_backtest_or_heavy_library(tmp_path):
    db = tmp_path / "chatops.db"
    store = Store(str(db), now=Clock(datetime.now(timezone.utc)))
    clock = Clock(datetime.now(timezone.utc))
    first = new_proposal(store, clock, n=1, ttl=3600)
    second = new_proposal(store, clock, n=2, ttl=3600)
    store.close()
    commands = [["status"], ["status", "--json"], ["pending"], ["approve", str(first.id)],
                ["reject", str(second.id), "--reason", "too close"], ["cancel", str(first.id)],
                ["pause", "--reason", "drill"], ["resume"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DERIBIT", "TELEGRAM", "SLACK", "OPENAI"))}
    env.update(DATABASE_PATH=str(db), PAPER_STATE_PATH=str(tmp_path / "paper.json"), CONSOLE_ALLOWED_USERS=os_user(),
               LOG_LEVEL="WARNING")
    p = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(HEAVY), json.dumps(commands)], capture_output=True,
                       text=True, cwd=tmp_path, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    results = json.loads(p.stdout)
    assert [r["argv"][0] for r in results] == [c[0] for c in commands]
    for r in results:
        assert r["loaded"] == [], f"`chatops {' '.join(r['argv'])}` loaded {r['loaded']}"
    by_cmd = {r["argv"][0]: r for r in results}
    # The commands really ran (a vote that failed early would prove nothing).
    assert by_cmd["approve"]["rc"] == 0 and "running bot executes it" in by_cmd["approve"]["text"]
    assert by_cmd["reject"]["rc"] == 0 and by_cmd["pause"]["rc"] == 0 and by_cmd["resume"]["rc"] == 0
    assert by_cmd["pending"]["rc"] == 0 and f"#{second.id}" in by_cmd["pending"]["text"]


def _namespace(parser, argv):
    try:
        return vars(parser.parse_args(argv))
    except SystemExit as exc:
        return {"exit": exc.code}


@pytest.mark.parametrize("argv", [
    ["approve", "#12"], ["reject", "3", "--reason", "too close"], ["cancel", "4"], ["pause", "--underlying", "eth"],
    ["resume"], ["status", "--json"], ["pending"], ["tick", "--json"], ["run", "--ticks", "2", "--interval", "60"],
    ["audit", "events", "--proposal", "3", "--kind", "executed"], ["pnl", "--since", "30d"], ["config", "example"],
    ["web", "--port", "9000"], ["web-user", "add", "ann"], ["paper-exchange", "--reset"], ["approve", "twelve"],
    ["backtest", "--days", "30", "--interval", "1d"],
])
def test_the_parser_a_command_line_gets_parses_it_as_the_whole_parser_does(argv, capsys):
    assert _namespace(cli._parser(argv), argv) == _namespace(cli._parser(), argv)


@pytest.mark.parametrize("argv", [[], ["--version"], ["approve", "1"], ["--help"], ["--he"], ["-h", "approve"],
                                  ["backtest"], ["bactest"]])
def test_only_a_line_that_may_need_backtest_gets_its_parser(argv):
    commands = next(a.choices for a in cli._parser(argv)._actions if a.dest == "cmd")
    wanted = not argv or argv in (["--version"], ["approve", "1"])
    assert ("backtest" not in commands) == wanted, argv
