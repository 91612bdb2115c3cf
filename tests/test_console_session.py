"""A newcomer's first minutes, through the terminal channel's real stdin and stdout (no tmux):
`chatops run` in one process, the CLI in another."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class Session:
    def __init__(self, tmp_path: Path, *args: str, **env: str) -> None:
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("DERIBIT", "TELEGRAM", "SLACK", "OPENAI", "LLM", "DECISION", "LOG_"))}
        self.env.update(DATABASE_PATH=str(tmp_path / "chatops.db"), PAPER_STATE_PATH=str(tmp_path / "paper.json"),
                        PYTHONUNBUFFERED="1", WEB_PORT="0", **env)
        self.cwd = tmp_path
        self.p = subprocess.Popen([sys.executable, "-m", "chatops", "run", *args], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=self.env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.err: list[str] = []
        threading.Thread(target=self._pump, args=(self.p.stdout, self.lines), daemon=True).start()
        threading.Thread(target=lambda: self.err.extend(self.p.stderr), daemon=True).start()

    @staticmethod
    def _pump(stream, q) -> None:
        for line in stream:
            q.put(line.rstrip("\n"))

    def expect(self, needle: str, timeout: float = 30.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if needle in line:
                return line
        raise AssertionError(f"{needle!r} not printed within {timeout}s; got:\n" + "\n".join(self.seen[-40:])
                             + "\nstderr:\n" + "".join(self.err[-20:]))

    def send(self, text: str) -> None:
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "chatops", *args], capture_output=True, text=True, cwd=self.cwd,
                              env=self.env, timeout=60)

    def close(self) -> int:
        try:
            return self.p.wait(timeout=30)
        finally:
            if self.p.poll() is None:
                self.p.kill()


@pytest.fixture
def session(tmp_path):
    # Orders reach the bid in two reprices of 3 s (the sell starts at the mid): seconds, not minutes.
    s = Session(tmp_path, "--interval", "2", ORDER_REPRICE_SEC="3", ORDER_TIMEOUT_SEC="14")
    yield s
    if s.p.poll() is None:
        s.p.kill()
        s.p.wait(timeout=10)


def test_first_hour_in_the_terminal(session, tmp_path):
    s = session
    # The banner says what it trades on, who decides and when the next tick is.
    s.expect("[PAPER] covered-call agent started")
    for needle in ("exchange   paper exchange in process", "brain      rule, conservative profile",
                   "approvals  manual: 1 of", "ticks      every 2 s, next at", "database   ",
                   "log        "):
        s.expect(needle, timeout=5)
    assert any("approvals  manual: 1 of console:" in ln and ", within 300 s" in ln for ln in s.seen)
    s.expect("-> approve 1  |  reject 1 [reason]  |  why 1")
    s.send("reject 1 strike too close")
    first = next(ln for ln in s.seen if ln.strip().startswith("Instrument"))
    s.expect("#1 Open covered call: Rejected - rejected by")
    # The rejection teaches: the same call is not proposed again; the next best one is, saying why.
    s.expect("[PAPER] #2 Open covered call")
    second = s.expect("Instrument")
    assert second.split()[-1] != first.split()[-1], (first, second)
    s.expect("Left out: #1 OPEN_COVERED_CALL " + first.split()[-1])
    assert "strike too close; not proposed again until" in s.seen[-1]
    s.send("history abc")
    s.expect("'abc' is not a number of decisions")
    s.send("why 42")
    s.expect("There is no proposal #42. There are proposals #1-#")
    s.send("help")
    s.expect("quit                   stop the bot")
    s.send("ask")  # the answer is written with Markdown marks: the terminal shows them plain
    s.expect("Ask me something, e.g. ask why the 97k strike?")
    # Pause from another shell: the running bot announces it.
    p = s.cli("pause", "--reason", "lunch")
    assert p.returncode == 0 and "Paused." in p.stdout
    s.expect("[pause] Paused by")
    assert "(cli): lunch" in s.seen[-1]
    assert s.cli("resume").returncode == 0
    s.expect("[pause] Resumed by")
    s.send("quit")
    s.expect("Stopping")
    assert s.close() == 0
    out = "\n".join(s.seen)
    assert "`" not in out, "markup in the terminal"
    assert "HTTP Request" not in out and "HTTP Request" not in "".join(s.err)
    assert "Traceback" not in "".join(s.err)
    log = (tmp_path / "chatops.log").read_text()
    assert "started: [PAPER] covered-call agent started" in log
    assert "httpx: HTTP Request" in log  # the libraries' INFO lines went to the log, not the chat
    # The paper client authenticates by POST body: the secret is in no URL, so in no log line at all.
    assert "client_secret" not in log and "paper-bot-secret" not in log


def test_one_line_per_fill_and_status_after_it(session):
    s = session
    s.expect("-> approve 1")
    s.send("approve 1")
    s.expect("#1 approved: executing after a fresh re-check.")
    fill = s.expect("#1 Open covered call: Executed")
    assert "filled 0.1 at" in fill
    # Then a quiet line per tick that does nothing: why, the best candidate, the next tick.
    line = s.expect("nothing to do: Hold BTC-")
    assert "best candidate BTC-" in line and "| next " in line
    s.send("status")
    s.expect("Running")
    pos = s.expect("  position BTC-")
    assert "size -0.1" in pos
    s.send("quit")
    assert s.close() == 0
    out = "\n".join(s.seen)
    assert out.count("filled 0.1 at") == 1, out  # one line per fill, not three
    assert "[fill]" not in out
