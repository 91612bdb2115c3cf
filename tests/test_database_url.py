"""DATABASE_URL: which engine, a bad value in one line, and the password never shown."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.config import ConfigError, load_settings
from chatops.store import Store, redact_url
from tests.pg import PASSWORD


def test_default_is_the_sqlite_file_and_a_url_is_a_secret():
    s = load_settings(env_file=None)
    assert s.database_target == "data/chatops.db"
    s = load_settings(env_file=None, database_url="postgresql://bot:hunter2@db:5432/cc")
    assert s.database_target == "postgresql://bot:hunter2@db:5432/cc"
    assert s.redacted()["database_url"] == "***" and "hunter2" not in repr(s.redacted())
    assert redact_url(s.database_target) == "postgresql://bot:***@db:5432/cc"
    assert redact_url("sqlite:////tmp/x.db") == "/tmp/x.db" and redact_url("sqlite:///data/x.db") == "data/x.db"


@pytest.mark.parametrize("bad", ["mysql://u:p@h/db", "postgresql://", "just-a-word"])
def test_a_bad_database_url_is_one_line(bad):
    with pytest.raises(ConfigError) as err:
        load_settings(env_file=None, database_url=bad)
    msg = str(err.value)
    assert msg.startswith("config error: DATABASE_URL=*** is not allowed") and "\n" not in msg


def test_status_on_postgresql_names_the_leader_and_never_the_password(pg_cluster, tmp_path):
    url = pg_cluster.new_database()
    store = Store(url)
    try:
        assert PASSWORD not in store.path and "***" in store.path
        assert store.acquire_lease("host-a:1", 30).mine
        store.acquire_lease("host-b:2", 30)
    finally:
        store.close()
    env = {"DATABASE_URL": url, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "chatops", "status"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Leader: host-a:1 (term 1" in out.stdout and "standby: host-b:2" in out.stdout
    assert PASSWORD not in out.stdout + out.stderr


def test_an_unreachable_database_is_one_line(tmp_path):
    env = {"DATABASE_URL": f"postgresql://u:{PASSWORD}@127.0.0.1:1/db", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "chatops", "status"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("cannot open the database postgresql://u:***@127.0.0.1:1/db")
    assert out.stderr.count("\n") == 1 and PASSWORD not in out.stderr
