"""Failover bench: two `chatops run` on one PostgreSQL database; the leader is SIGKILLed (or
frozen with SIGSTOP); the time until the standby's first tick (its first decision row), p50 over
the trials.

    python bench/failover.py                 # a throwaway cluster (Debian's postgresql), 10 trials each
    python bench/failover.py --url postgresql://user:pass@host/db --trials 5 --lease 10

SIGKILL on the same host: the standby sees the holder's pid is gone and takes over at its next
look (it polls every LEADER_LEASE_SEC/10, at least 0.2 s and at most 2 s). SIGSTOP (a frozen
process, or a bot on another host that stopped): the standby waits for the lease to expire.
Bot start-up (imports, exchange, reconcile) is part of neither figure: the standby is up first.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chatops.store import Store  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_line(proc: subprocess.Popen, needle: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if needle in line:
            return
        if not line and proc.poll() is not None:
            break
    raise RuntimeError(f"{needle!r} not seen")


def _decisions(url: str) -> int:
    s = Store(url)
    try:
        return s.count("decisions")
    finally:
        s.close()


def trial(url: str, env: dict, how: int, tmp: Path) -> float:
    run = [sys.executable, "-m", "chatops", "run", "--interval", "600"]
    a = subprocess.Popen(run, env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    b = None
    try:
        _wait_line(a, "leader: ")
        deadline = time.monotonic() + 60
        while _decisions(url) < 1:  # A's first tick
            assert time.monotonic() < deadline, "the leader did not tick"
            time.sleep(0.05)
        b = subprocess.Popen(run, env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        _wait_line(b, "standby: ")
        time.sleep(0.5)
        t0 = time.monotonic()
        os.kill(a.pid, how)
        if how == signal.SIGKILL:
            a.wait()  # reaped, as a supervisor (systemd, a shell) would: the pid is gone
        s = Store(url)
        try:
            while s.count("decisions") < 2:  # the standby's first tick
                if time.monotonic() - t0 > 120:
                    raise RuntimeError("the standby did not take over")
                time.sleep(0.01)
        finally:
            s.close()
        return time.monotonic() - t0
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a PostgreSQL server URL (a database per trial is created on it); default: a "
                                  "throwaway cluster")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--lease", type=float, default=10.0, help="LEADER_LEASE_SEC (default 10)")
    args = ap.parse_args(argv)
    cluster = None
    if args.url is None:
        from tests.pg import Cluster, pg_bindir

        bindir = pg_bindir()
        if bindir is None:
            sys.exit("no PostgreSQL binaries: apt-get install postgresql, or pass --url")
        cluster = Cluster(bindir, durable=True).start()
        new_db = cluster.new_database
    else:
        import psycopg

        n = iter(range(1, 10_000))

        def new_db() -> str:
            from sqlalchemy.engine import make_url

            u = make_url(args.url)
            name = f"failover_bench_{os.getpid()}_{next(n)}"
            with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                                 dbname=u.database, autocommit=True) as c:
                c.execute(f"CREATE DATABASE {name}")
            return u.set(database=name).render_as_string(hide_password=False)
    tmp = Path(tempfile.mkdtemp(prefix="failover-bench-"))
    port = _free_port()
    base = {**os.environ, "PAPER_EXCHANGE_URL": f"http://127.0.0.1:{port}", "APPROVAL_MODE": "manual",
            "CONSOLE_ENABLED": "false", "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
            "LEADER_LEASE_SEC": f"{args.lease:g}"}
    paper = subprocess.Popen([sys.executable, "-m", "chatops", "paper-exchange", "--port", str(port), "--state",
                              str(tmp / "paper.json")], env=base, cwd=tmp, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        while "listening" not in paper.stdout.readline():
            pass
        results = {}
        for name, how in (("SIGKILL (same host)", signal.SIGKILL), ("SIGSTOP (frozen: lease expiry)", signal.SIGSTOP)):
            times = []
            for i in range(args.trials):
                url = new_db()
                times.append(trial(url, {**base, "DATABASE_URL": url}, how, tmp))
                log(f"{name} trial {i + 1}: {times[-1]:.2f} s")
            results[name] = times
        print(f"\nfailover: leader stopped -> the standby's first tick, PostgreSQL, LEADER_LEASE_SEC={args.lease:g}, "
              f"{args.trials} trials (target: within 2 x {args.lease:g} = {2 * args.lease:g} s)")
        for name, times in results.items():
            print(f"  {name:<34} p50 {statistics.median(times):6.2f} s   max {max(times):6.2f} s")
    finally:
        paper.terminate()
        paper.wait(timeout=10)
        if cluster is not None:
            cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
