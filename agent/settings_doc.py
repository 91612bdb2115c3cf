"""What every setting means: the source of `.env.example` and of the README's settings table.

`chatops config example` prints `.env.example` from this table and `Settings`' own defaults;
tests/test_newcomer_config.py fails when a setting of `Settings` has no line here, when
`.env.example` is not what this module generates, or when the README's table is out of date.
"""

from __future__ import annotations

from typing import Any

from .config import PROFILES, SECRET_FIELDS, Settings

# group -> [(field, meaning, default shown when the field's own default is None or derived)]
GROUPS: dict[str, list[tuple[str, str] | tuple[str, str, str]]] = {
    "Exchange": [
        ("exchange", "paper (the built-in simulator speaking Deribit's API) or deribit"),
        ("deribit_base_url", "Deribit API; production (https://www.deribit.com) also needs ALLOW_MAINNET=true"),
        ("deribit_client_id", "API key id for EXCHANGE=deribit (see docs/deribit.md for the scopes)"),
        ("deribit_client_secret", "API key secret for EXCHANGE=deribit (never logged or stored)"),
        ("underlying", "BTC or ETH: the coin whose calls are sold; BTC,ETH: both, one tick each (README: two coins)"),
        ("underlyings", "not set on its own: the coins of UNDERLYING", "from UNDERLYING"),
        ("dry_run", "true: no order leaves the process (proposals, votes and re-checks still run)",
         "true for deribit, false for paper"),
        ("allow_mainnet", "true lets the bot trade real money on www.deribit.com; otherwise start-up stops there"),
    ],
    "Paper exchange (EXCHANGE=paper)": [
        ("paper_exchange_url", "talk to a paper exchange served by `chatops paper-exchange` instead of one in process",
         "none: in process"),
        ("paper_state_path", "where the paper accounts (BTC and ETH, one file) are kept between runs",
         "data/paper_exchange.json"),
        ("paper_seed", "random seed of the simulated market"),
        ("paper_equity", "coin the paper account of the first UNDERLYING starts with (the other: the same USD value)"),
        ("paper_speed", "simulated clock speed factor (60: an hour a minute)", "none: wall time"),
        ("paper_client_id", "API key id the paper exchange expects (any works when unset)"),
        ("paper_client_secret", "API key secret the paper exchange expects"),
    ],
    "Brains": [
        ("llm_enabled", "true: the LLM drives the decisions (rules when it fails)"),
        ("decision_mode", "rule, llm, or shadow (rules drive, the LLM is recorded beside them)", "from LLM_ENABLED"),
        ("llm_model_name", "model name sent to the OpenAI-compatible server"),
        ("openai_api_key", "key for the LLM server (read by the openai SDK)"),
        ("openai_base_url", "any OpenAI-compatible server: Ollama, vLLM, llama.cpp, LM Studio", "OpenAI's"),
        ("llm_timeout_sec", "seconds to wait for one LLM answer before the rules decide"),
        ("llm_daily_token_budget", "tokens per 24 h; once spent the rules decide until it refills (0: no limit)"),
        ("llm_fallback_alert_pct", "a notice when more than this % of LLM calls in 24 h fell back to the rules"),
        ("llm_price_in_per_mtok", "USD per million prompt tokens, for the cost figures",
         "the model's row in agent/llm/caps.py, 0 if unlisted"),
        ("llm_price_out_per_mtok", "USD per million answer tokens, for the cost figures",
         "the model's row in agent/llm/caps.py, 0 if unlisted"),
        ("llm_reasoning_effort", "reasoning models (o1, o3, o4, gpt-5...): none, minimal, low, medium or high"),
    ],
    "Policy: which calls are candidates (defaults from MODE)": [
        ("mode", "profile: conservative, or research (wider bands)"),
        ("min_dte", "fewest days to expiry of a call to sell"),
        ("max_dte", "most days to expiry"),
        ("target_dte", "preferred days to expiry (scores candidates)"),
        ("min_delta", "lowest delta of a call to sell"),
        ("max_delta", "highest delta"),
        ("target_delta", "preferred delta (scores candidates)"),
        ("min_otm_pct", "strike at least this % above the forward"),
        ("min_premium", "bid at least this many coin per contract"),
        ("min_annual_yield_pct", "premium at least this % annualized"),
        ("max_spread_pct", "bid-ask spread at most this % of the mid"),
        ("min_open_interest", "open interest at least this many contracts"),
    ],
    "Managing an open call": [
        ("close_capture_pct", "buy back once this % of the premium is captured ..."),
        ("close_min_hours_left", "... and at least this many hours are left"),
        ("expire_hours", "under this many hours left with a small delta: let it expire"),
        ("expire_max_delta", "the small delta that lets a call expire"),
        ("roll_trigger_delta", "roll up and out when the call's delta reaches this ..."),
        ("roll_trigger_spot_pct", "... or the spot reaches this % of the strike"),
        ("roll_min_dte", "a roll goes to a call with at least this many days to expiry (searched over the whole chain)"),
        ("roll_max_dte", "... and at most this many"),
        ("roll_target_delta", "the roll goes to the credit call nearest this delta"),
        ("roll_max_delta", "the call rolled into has at most this delta"),
        ("deep_itm_delta", "a short this deep in the money with no roll for a credit is told once in chat, with the choices"),
        ("max_rolls", "rolls at most this many times in one chain"),
        ("hysteresis_min", "minutes after an executed action before the same instrument is acted on again"),
        ("reject_cooldown_min", "minutes a rejected action is not proposed again (unless its price moved more "
                                "than MAX_PRICE_DRIFT_PCT)"),
    ],
    "Sizing and risk": [
        ("default_order_size", "contracts (coin) per order; under the option minimum stops start-up",
         "by UNDERLYING: 0.1 BTC, 1 ETH"),
        ("max_margin_used_pct", "risk: block when margin used would exceed this %"),
        ("max_options_delta_abs", "risk: block when the options book's delta (coin, premium-adjusted as Deribit's "
                                  "options_delta) would exceed this"),
        ("max_net_delta_abs", "risk: block when the coin held plus the options book's delta would move past this "
                              "(what lowers it always passes)", "none: no net limit"),
        ("max_expiry_exposure", "risk: short calls per expiry (coin) at most this"),
        ("max_state_age_sec", "risk: a state read longer ago than this many seconds is not acted on (wall seconds, under PAPER_SPEED too)"),
        ("max_slippage_pct", "a sell is never priced below the mark minus this % (a buy never above plus)"),
        ("order_reprice_sec", "a working order steps from the mid toward the touch this often (seconds)"),
        ("order_timeout_sec", "what still rests after this many seconds is cancelled (not below ORDER_REPRICE_SEC)"),
        ("order_unknown_giveup_sec", "a send whose answer was lost and whose label never shows up in this many "
                                     "seconds of lookups is taken as never placed (nothing is resent)"),
    ],
    "Per coin (NAME_BTC / NAME_ETH override NAME for that coin)": [
        ("default_order_size_btc", "DEFAULT_ORDER_SIZE for BTC (at least 0.1; rounded down to a multiple)", "DEFAULT_ORDER_SIZE"),
        ("default_order_size_eth", "DEFAULT_ORDER_SIZE for ETH (at least 1; rounded down to a whole number)", "DEFAULT_ORDER_SIZE if set, else 1"),
        ("max_expiry_exposure_btc", "MAX_EXPIRY_EXPOSURE for BTC", "MAX_EXPIRY_EXPOSURE"),
        ("max_expiry_exposure_eth", "MAX_EXPIRY_EXPOSURE for ETH", "MAX_EXPIRY_EXPOSURE if set, else 5"),
        ("max_options_delta_abs_btc", "MAX_OPTIONS_DELTA_ABS for BTC", "MAX_OPTIONS_DELTA_ABS"),
        ("max_options_delta_abs_eth", "MAX_OPTIONS_DELTA_ABS for ETH", "MAX_OPTIONS_DELTA_ABS if set, else 10"),
        ("max_net_delta_abs_btc", "MAX_NET_DELTA_ABS for BTC", "MAX_NET_DELTA_ABS"),
        ("max_net_delta_abs_eth", "MAX_NET_DELTA_ABS for ETH", "MAX_NET_DELTA_ABS"),
        ("auto_approve_max_size_btc", "AUTO_APPROVE_MAX_SIZE for BTC", "AUTO_APPROVE_MAX_SIZE"),
        ("auto_approve_max_size_eth", "AUTO_APPROVE_MAX_SIZE for ETH", "AUTO_APPROVE_MAX_SIZE"),
        ("min_premium_btc", "MIN_PREMIUM for BTC", "MIN_PREMIUM"),
        ("min_premium_eth", "MIN_PREMIUM for ETH", "MIN_PREMIUM"),
        ("min_open_interest_btc", "MIN_OPEN_INTEREST for BTC", "MIN_OPEN_INTEREST"),
        ("min_open_interest_eth", "MIN_OPEN_INTEREST for ETH", "MIN_OPEN_INTEREST"),
    ],
    "Loop and approvals": [
        ("loop_interval_sec", "seconds between ticks (`chatops run --interval` overrides)"),
        ("approval_mode", "manual (people vote) or auto (the policy approves small orders)"),
        ("approval_ttl_sec", "a pending proposal expires after this many seconds"),
        ("approvals_required", "distinct approvers needed; one reject vetoes"),
        ("max_price_drift_pct", "at execution, an adverse price move beyond this % of the premium blocks it"),
        ("auto_approve_max_size", "auto mode approves orders up to this size; larger ones wait for a person",
         "DEFAULT_ORDER_SIZE"),
        ("database_path", "the SQLite file: decisions, proposals, votes, events"),
        ("database_url", "sqlite:///path or postgresql://user:pass@host:5432/db (a secret: shown as ***)",
         "unset: SQLite at DATABASE_PATH"),
        ("leader_lease_sec", "bots on one database: one leads; a standby takes over within 2x this after it stops"),
    ],
    "Who may decide, and tamper evidence": [
        ("people_file", "TOML file of persons: their identity on each channel and their role", "none: the allowlists"),
        ("audit_anchor_file", "append-only copy of the audit chain's heads, kept outside the database",
         "audit-anchors.log beside DATABASE_PATH: data/audit-anchors.log"),
        ("audit_anchor_every", "audit-chain entries between two anchors written to AUDIT_ANCHOR_FILE (also at every stop)"),
    ],
    "Web dashboard and REST API (served by `chatops run` unless WEB_PORT=0)": [
        ("web_host", "address the dashboard listens on (127.0.0.1: this machine only)"),
        ("web_port", "port of the dashboard; 0 turns it off"),
        ("web_users_file", "web users and their password hashes, written by `chatops web-user add NAME`"),
        ("web_users", "or inline: name:scrypt$...,name2:scrypt$... (hashes, never passwords)"),
        ("web_allowed_users", "web users who may approve, reject, cancel, pause, resume and ask, comma-separated"),
        ("web_session_hours", "hours a dashboard login lasts"),
    ],
    "Channels (a token enables its channel; with none, the terminal serves)": [
        ("telegram_bot_token", "from @BotFather; enables Telegram (docs/telegram.md)"),
        ("telegram_chat_id", "the chat proposals and notices go to"),
        ("telegram_allowed_user_ids", "numeric Telegram user ids who may vote and ask, comma-separated"),
        ("telegram_api_base_url", "Bot API address (a local Bot API server, or tests)"),
        ("slack_bot_token", "xoxb-... bot token; enables Slack (docs/slack.md)"),
        ("slack_app_token", "xapp-... app-level token: Socket Mode (no public address needed)"),
        ("slack_signing_secret", "HTTP mode instead of Socket Mode: checks Slack's signatures"),
        ("slack_channel_id", "the channel proposals and notices go to"),
        ("slack_allowed_user_ids", "Slack member ids who may vote and ask, comma-separated"),
        ("slack_api_base_url", "Slack Web API address (tests)", "Slack's"),
        ("slack_http_port", "port of /slack/events in HTTP mode"),
        ("slack_command", "the one slash command, /cc status, /cc why 3 ... (empty: none)"),
        ("slack_legacy_commands", "true: also the old per-command form /status, /why ... (with SLACK_COMMAND_PREFIX)"),
        ("slack_command_prefix", "legacy commands only: cc- gives /cc-status, /cc-why ..."),
        ("outbox_max_attempts", "a chat message that cannot be delivered is given up after this many attempts "
                                "(or a day), with an alert on the other channels"),
        ("console_allowed_users", "OS users the terminal and the CLI accept, comma-separated", "the current OS user"),
        ("console_enabled", "the terminal channel on or off", "on when no chat channel is configured"),
    ],
    "Logging": [
        ("log_level", "DEBUG, INFO, WARNING or ERROR"),
        ("log_format", "text, or json (one object a line)"),
        ("log_file", "log file; with the terminal channel the log goes here, not into the chat",
         "chatops.log beside DATABASE_PATH when the terminal channel runs, else stderr only"),
    ],
}

HEADER = """\
# Settings of the covered-call agent. Every one is optional: the defaults run the paper
# exchange, the rule brain, the terminal channel and SQLite under data/. Copy this file to .env
# and uncomment what you change (environment variables win over .env).
#
# Generated by `chatops config example` from agent/settings_doc.py and agent/config.py; a test
# fails when a setting is missing here. Do not edit by hand.
"""


def documented() -> dict[str, tuple[str, str, str | None]]:
    """field -> (group, meaning, shown default or None)."""
    out: dict[str, tuple[str, str, str | None]] = {}
    for group, rows in GROUPS.items():
        for row in rows:
            out[row[0]] = (group, row[1], row[2] if len(row) > 2 else None)  # type: ignore[misc]
    return out


def missing() -> list[str]:
    """Settings without a line here (the test names them)."""
    docs = documented()
    return [n for n in Settings.model_fields if n not in docs]


def unknown() -> list[str]:
    """Lines here for settings that no longer exist."""
    return [n for n in documented() if n not in Settings.model_fields]


def default_text(name: str) -> str:
    """The default as it would be written in .env ('' when there is none)."""
    shown = documented().get(name, (None, None, None))[2]
    if name in PROFILES["conservative"]:
        return f"{PROFILES['conservative'][name]:g}"  # the conservative value; the research one is in the meaning
    field = Settings.model_fields[name]
    value: Any = field.default
    if value is None or shown:
        return ""
    return _env_value(value)


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _meaning(name: str) -> str:
    group, meaning, shown = documented().get(name, ("", "(not documented yet)", None))
    if name in PROFILES["conservative"]:
        meaning += f" (conservative {PROFILES['conservative'][name]:g}, research {PROFILES['research'][name]:g})"
    elif shown:
        meaning += f" (default: {shown})"
    if name in SECRET_FIELDS:
        meaning += " [secret]"
    return meaning


def _groups() -> list[tuple[str, list[str]]]:
    groups = [(g, [r[0] for r in rows if r[0] in Settings.model_fields]) for g, rows in GROUPS.items()]
    extra = missing()
    if extra:
        groups.append(("Not documented yet", extra))
    return groups


def env_example() -> str:
    out = [HEADER]
    for group, names in _groups():
        out.append(f"\n# === {group} ===\n")
        for name in names:
            out.append(f"# {_meaning(name)}\n# {name.upper()}={default_text(name)}\n")
    return "".join(out)


def markdown_table() -> str:
    """The README's settings table: name, default, meaning, grouped."""
    lines = ["| setting | default | meaning |", "|---|---|---|"]
    for group, names in _groups():
        lines.append(f"| **{group}** | | |")
        for name in names:
            d = default_text(name)
            lines.append(f"| `{name.upper()}` | {('`' + d + '`') if d else '-'} | {_meaning(name).replace('|', '/')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m agent.settings_doc [--markdown]
    import sys

    print(markdown_table() if "--markdown" in sys.argv else env_example(), end="")
