"""Settings: profiles, overrides, one-line errors, secrets redacted everywhere."""

from __future__ import annotations

import pytest

from agent.config import ConfigError, load_settings


def test_defaults_are_the_embedded_paper_setup():
    s = load_settings(env_file=None)
    assert (s.exchange, s.underlying, s.mode, s.effective_dry_run, s.effective_decision_mode) == ("paper", "BTC", "conservative", False, "rule")
    assert s.trading_tag == "[PAPER]"
    assert (s.min_dte, s.max_dte, s.min_delta, s.max_delta, s.min_open_interest) == (5, 10, 0.15, 0.30, 50)


def test_deribit_defaults_to_dry_run():
    s = load_settings(env_file=None, exchange="deribit", deribit_client_id="id", deribit_client_secret="secret")
    assert s.effective_dry_run and s.trading_tag == "[TESTNET DRY-RUN]"


def test_deribit_needs_keys_even_for_a_dry_run():
    for dry in (True, False):
        with pytest.raises(ConfigError, match="DERIBIT_CLIENT_ID and DERIBIT_CLIENT_SECRET"):
            load_settings(env_file=None, exchange="deribit", dry_run=dry)


def test_profile_then_single_override(monkeypatch):
    monkeypatch.setenv("MODE", "research")
    monkeypatch.setenv("MAX_DTE", "14")
    s = load_settings(env_file=None)
    assert s.min_dte == 1 and s.max_dte == 14 and s.min_open_interest == 0


@pytest.mark.parametrize(
    "name,value,needle",
    [
        ("MAX_MARGIN_USED_PCT", "abc", "valid number"),
        ("MAX_MARGIN_USED_PCT", "150", "less than or equal to 100"),
        ("EXCHANGE", "kraken", "'paper' or 'deribit'"),
        ("APPROVALS_REQUIRED", "0", "greater than or equal to 1"),
        ("TELEGRAM_ALLOWED_USER_IDS", "12,bob", "numbers"),
        ("DRY_RUN", "maybe", "valid boolean"),
        ("ORDER_REPRICE_SEC", "0", "greater than or equal to 0.01"),
        ("ORDER_TIMEOUT_SEC", "-1", "greater than or equal to 0.01"),
    ],
)
def test_bad_value_is_one_line_naming_variable_value_and_rule(monkeypatch, name, value, needle):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as e:
        load_settings(env_file=None)
    msg = str(e.value)
    assert "\n" not in msg and name in msg and repr(value) in msg and needle in msg


def test_dte_window_must_be_ordered(monkeypatch):
    monkeypatch.setenv("MIN_DTE", "12")
    with pytest.raises(ConfigError, match="MIN_DTE"):
        load_settings(env_file=None)


def test_the_reprice_step_must_not_exceed_the_order_timeout(monkeypatch):
    monkeypatch.setenv("ORDER_REPRICE_SEC", "200")
    with pytest.raises(ConfigError, match="ORDER_REPRICE_SEC .* must not exceed ORDER_TIMEOUT_SEC"):
        load_settings(env_file=None)


def test_secrets_redacted_in_every_representation(monkeypatch):
    secrets = {"TELEGRAM_BOT_TOKEN": "123456:AAsecretsecret", "SLACK_BOT_TOKEN": "xoxb-secret-value",
               "DERIBIT_CLIENT_SECRET": "deribit-secret", "OPENAI_API_KEY": "sk-secretsecret"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    s = load_settings(env_file=None)
    dumped = " ".join([repr(s), str(s), str(s.redacted()), s.model_dump_json(), str(s.model_dump())])
    for v in secrets.values():
        assert v not in dumped
    assert s.redacted()["telegram_bot_token"] == "***"
    assert s.secret("telegram_bot_token") == secrets["TELEGRAM_BOT_TOKEN"]


def test_dotenv_file_is_read(tmp_path):
    env = tmp_path / ".env"
    env.write_text("MODE=research\nDEFAULT_ORDER_SIZE=0.2\n")
    s = load_settings(env_file=env)
    assert s.mode == "research" and s.default_order_size == 0.2
