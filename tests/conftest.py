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
