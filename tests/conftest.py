"""Shared test set-up. Network: pytest-socket (see pyproject addopts) allows loopback only."""

from __future__ import annotations

import os

import pytest

from agent.config import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Tests never see the developer's environment: no stray setting changes a test."""
    names = {n.upper() for n in Settings.model_fields} | {"OPENAI_BASE_URL", "OPENAI_API_KEY", "PAPER_CLIENT_ID"}
    for key in list(os.environ):
        if key.upper() in names:
            monkeypatch.delenv(key, raising=False)
    yield


def pytest_collection_modifyitems(config, items):
    # A guard that cannot be forgotten: fail loudly if the loopback-only socket guard is off.
    if not config.getoption("allow_hosts", None):
        raise pytest.UsageError("run the tests with pytest-socket's --allow-hosts (see pyproject.toml)")


# --- the two database engines ------------------------------------------------------------------

ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg_cluster():
    """One throwaway PostgreSQL cluster for the session (skipped where the binaries are missing;
    .ci/run installs them)."""
    from tests.pg import Cluster, pg_bindir

    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql)")
    cluster = Cluster(bindir).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


@pytest.fixture
def make_target(engine, tmp_path, request):
    """A factory of fresh, empty databases of the test's engine: a file path or a PostgreSQL URL."""
    n = iter(range(1, 1000))

    def make() -> str:
        if engine == "sqlite":
            return str(tmp_path / "sub" / f"chatops{next(n)}.db")
        return request.getfixturevalue("pg_cluster").new_database()

    return make


@pytest.fixture
def target(make_target) -> str:
    return make_target()
