"""Settings from environment variables and `.env`, with profiles and secret redaction.

A bad value stops start-up with one line naming the variable, the value and what is allowed
(`ConfigError`). The profile (`MODE`) fills in the policy defaults; any single value can still be
set on its own.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REDACTED = "***"

# Policy defaults per profile. `research` widens what the conservative profile allows.
PROFILES: dict[str, dict[str, Any]] = {
    "conservative": {
        "min_dte": 5.0,
        "max_dte": 10.0,
        "target_dte": 7.0,
        "min_delta": 0.15,
        "max_delta": 0.30,
        "target_delta": 0.25,
        "min_otm_pct": 2.0,
        "min_premium": 0.003,
        "min_annual_yield_pct": 15.0,
        "max_spread_pct": 10.0,
        "min_open_interest": 50.0,
        "roll_min_dte": 5.0,
        "roll_max_dte": 21.0,
        "roll_target_delta": 0.25,
        "roll_max_delta": 0.30,
    },
    "research": {
        "min_dte": 1.0,
        "max_dte": 30.0,
        "target_dte": 7.0,
        "min_delta": 0.05,
        "max_delta": 0.45,
        "target_delta": 0.25,
        "min_otm_pct": 0.0,
        "min_premium": 0.001,
        "min_annual_yield_pct": 5.0,
        "max_spread_pct": 25.0,
        "min_open_interest": 0.0,
        "roll_min_dte": 1.0,
        "roll_max_dte": 30.0,
        "roll_target_delta": 0.25,
        "roll_max_delta": 0.45,
    },
}

CommaList = Annotated[tuple[str, ...], NoDecode]

COINS = ("BTC", "ETH")
# Deribit's minimum option trade per coin (and the size step): an order size must be a multiple.
MIN_TRADE = {"BTC": 0.1, "ETH": 1.0}
# Settings a coin may override with NAME_<COIN> (DEFAULT_ORDER_SIZE_ETH=2): `Settings.for_underlying`.
PER_COIN = ("default_order_size", "max_expiry_exposure", "max_options_delta_abs", "max_net_delta_abs", "auto_approve_max_size",
            "min_premium", "min_open_interest")
# A coin's own default where the plain default does not fit it (ETH trades in whole coins). Used
# when neither NAME_<COIN> nor the plain NAME is set.
COIN_DEFAULTS: dict[str, dict[str, float]] = {
    "ETH": {"default_order_size": 1.0, "max_expiry_exposure": 5.0, "max_options_delta_abs": 10.0},
}


class ConfigError(Exception):
    """A bad configuration value; the message is one line meant for the operator."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True, case_sensitive=False,
        allow_inf_nan=False,  # inf and nan are never a setting: APPROVAL_TTL_SEC=inf would disable a check
    )

    # Exchange
    exchange: Literal["paper", "deribit"] = "paper"
    deribit_base_url: str = "https://test.deribit.com"
    deribit_client_id: SecretStr | None = None
    deribit_client_secret: SecretStr | None = None
    # UNDERLYING=BTC or ETH or a comma list (BTC,ETH): one bot, one tick per coin. `underlying` is
    # the first (or, in a view from for_underlying, that coin); `underlyings` all of them.
    underlying: Literal["BTC", "ETH"] = "BTC"
    underlyings: tuple[Literal["BTC", "ETH"], ...] = ("BTC",)
    dry_run: bool | None = None  # None: true for deribit, false for paper
    allow_mainnet: bool = False  # production (www.deribit.com) only with this

    # Paper exchange (EXCHANGE=paper). With PAPER_EXCHANGE_URL set, the bot talks to a paper
    # exchange served by `chatops paper-exchange`; otherwise it runs one in process.
    paper_exchange_url: str | None = None
    paper_state_path: str | None = None  # default data/paper_exchange.json (both coins, one state)
    paper_seed: int = Field(7, ge=0, le=2**31 - 1)
    paper_equity: float = Field(1.0, ge=0, le=1_000_000)
    paper_speed: float | None = Field(None, gt=0, le=100_000)  # simulated clock speed factor; None = wall time
    paper_client_id: str | None = None
    paper_client_secret: SecretStr | None = None

    # Brains
    llm_enabled: bool = False
    decision_mode: Literal["rule", "llm", "shadow"] | None = None  # None: from LLM_ENABLED
    llm_model_name: str = "gpt-4.1-mini"
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    llm_timeout_sec: float = Field(30.0, gt=0, le=600)
    llm_daily_token_budget: int = Field(200_000, ge=0, le=1_000_000_000)
    llm_fallback_alert_pct: float = Field(30.0, ge=0, le=100)
    # USD per million tokens; None: from the model's row in agent.llm.caps.PRICES (0 if unlisted)
    llm_price_in_per_mtok: float | None = Field(None, ge=0, le=10_000)
    llm_price_out_per_mtok: float | None = Field(None, ge=0, le=10_000)
    # Reasoning models (o1, o3, o4, gpt-5 and later): how hard they think before answering
    llm_reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] = "low"

    # Policy profile and its values (None: from the profile)
    mode: Literal["conservative", "research"] = "conservative"
    min_dte: float | None = Field(None, ge=0, le=365)
    max_dte: float | None = Field(None, gt=0, le=365)
    target_dte: float | None = Field(None, gt=0, le=365)
    min_delta: float | None = Field(None, gt=0, lt=1)
    max_delta: float | None = Field(None, gt=0, lt=1)
    target_delta: float | None = Field(None, gt=0, lt=1)
    min_otm_pct: float | None = Field(None, ge=0, le=100)
    min_premium: float | None = Field(None, ge=0, le=1)
    min_annual_yield_pct: float | None = Field(None, ge=0, le=1000)
    max_spread_pct: float | None = Field(None, gt=0, le=1000)
    min_open_interest: float | None = Field(None, ge=0, le=1_000_000_000)

    # Managing an open call
    close_capture_pct: float = Field(80.0, gt=0, le=100)
    close_min_hours_left: float = Field(48.0, ge=0, le=8760)
    expire_hours: float = Field(24.0, ge=0, le=8760)
    expire_max_delta: float = Field(0.05, ge=0, lt=1)
    roll_trigger_delta: float = Field(0.50, gt=0, lt=1)
    roll_trigger_spot_pct: float = Field(98.0, gt=0, le=1000)
    # Where a roll may go, searched over the whole chain (None: from the profile)
    roll_min_dte: float | None = Field(None, ge=0, le=3650)
    roll_max_dte: float | None = Field(None, gt=0, le=3650)
    roll_target_delta: float | None = Field(None, gt=0, lt=1)
    roll_max_delta: float | None = Field(None, gt=0, lt=1)
    deep_itm_delta: float = Field(0.80, gt=0, le=1)  # a short this deep with no credit roll: told once in chat
    max_rolls: int = Field(3, ge=0, le=100)
    hysteresis_min: float = Field(60.0, ge=0, le=10_080)
    reject_cooldown_min: float = Field(60.0, ge=0, le=10_080)  # a rejected action is not proposed again for this long

    # Sizing and risk
    default_order_size: float = Field(0.1, gt=0, le=10_000)  # per coin: DEFAULT_ORDER_SIZE_<COIN>; ETH defaults to 1
    max_margin_used_pct: float = Field(50.0, gt=0, le=100)
    # Deltas are premium-adjusted, as Deribit's options_delta. MAX_OPTIONS_DELTA_ABS bounds the options
    # book alone; MAX_NET_DELTA_ABS the coin held plus the options book (None: no net limit).
    max_options_delta_abs: float = Field(1.0, ge=0, le=100_000)
    max_net_delta_abs: float | None = Field(None, ge=0, le=100_000)
    max_expiry_exposure: float = Field(0.5, ge=0, le=100_000)
    max_state_age_sec: float = Field(30.0, gt=0, le=3600)
    max_slippage_pct: float = Field(10.0, ge=0, le=100)  # BTC option spreads are wide: 1 tick of 0.0005 is ~4 % of a 0.012 premium
    # Per coin (PER_COIN): NAME_BTC / NAME_ETH override NAME for that coin; None: NAME (or COIN_DEFAULTS)
    default_order_size_btc: float | None = Field(None, gt=0, le=10_000)
    default_order_size_eth: float | None = Field(None, gt=0, le=10_000)
    max_expiry_exposure_btc: float | None = Field(None, ge=0, le=100_000)
    max_expiry_exposure_eth: float | None = Field(None, ge=0, le=100_000)
    max_options_delta_abs_btc: float | None = Field(None, ge=0, le=100_000)
    max_options_delta_abs_eth: float | None = Field(None, ge=0, le=100_000)
    max_net_delta_abs_btc: float | None = Field(None, ge=0, le=100_000)
    max_net_delta_abs_eth: float | None = Field(None, ge=0, le=100_000)
    auto_approve_max_size_btc: float | None = Field(None, gt=0, le=10_000)
    auto_approve_max_size_eth: float | None = Field(None, gt=0, le=10_000)
    min_premium_btc: float | None = Field(None, ge=0, le=1)
    min_premium_eth: float | None = Field(None, ge=0, le=1)
    min_open_interest_btc: float | None = Field(None, ge=0, le=1_000_000_000)
    min_open_interest_eth: float | None = Field(None, ge=0, le=1_000_000_000)

    # Working orders (agent/orders.py): start at the mid, step toward the touch every
    # ORDER_REPRICE_SEC, cancel what still rests after ORDER_TIMEOUT_SEC. A send whose answer was
    # lost is looked up by label until ORDER_UNKNOWN_GIVEUP_SEC, never resent.
    order_reprice_sec: float = Field(20.0, ge=0.01, le=3600)
    order_timeout_sec: float = Field(180.0, ge=0.01, le=86400)
    order_unknown_giveup_sec: float = Field(60.0, ge=0.01, le=86400)

    # Loop and approvals
    loop_interval_sec: float = Field(300.0, ge=1, le=86_400)
    approval_mode: Literal["manual", "auto"] = "manual"
    approval_ttl_sec: float = Field(300.0, ge=5, le=604_800)
    approvals_required: int = Field(1, ge=1, le=10)
    max_price_drift_pct: float = Field(10.0, ge=0, le=100)
    auto_approve_max_size: float | None = Field(None, gt=0, le=10_000)  # None: DEFAULT_ORDER_SIZE
    database_path: str = "data/chatops.db"
    # sqlite:///path or postgresql://user:pass@host:port/db; unset: SQLite at DATABASE_PATH. A secret
    # (it may hold a password): shown as '***' everywhere.
    database_url: SecretStr | None = None
    leader_lease_sec: float = Field(10.0, ge=1, le=300)  # one bot leads; a standby takes over within 2x this

    # Who may decide, and tamper evidence (chatops/identity.py, chatops/store/chain.py)
    people_file: str | None = None  # TOML: persons, their identity per channel, their role
    audit_anchor_file: str | None = None  # append-only copy of chain heads; None: audit-anchors.log beside the database
    audit_anchor_every: int = Field(100, ge=1, le=1_000_000)  # events between two anchors

    # Channels
    outbox_max_attempts: int = Field(20, ge=1, le=1000)  # an undeliverable message is given up after this (or a day)
    telegram_bot_token: SecretStr | None = None
    telegram_chat_id: str | None = None
    telegram_allowed_user_ids: CommaList = ()
    telegram_api_base_url: str = "https://api.telegram.org/bot"
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_channel_id: str | None = None
    slack_allowed_user_ids: CommaList = ()
    slack_api_base_url: str | None = None
    slack_http_port: int = Field(3000, ge=1, le=65535)
    slack_command: str = "cc"  # the one namespaced command: /cc status, /cc why 3 ("" : none)
    slack_legacy_commands: bool = False  # also /status, /why ... (named with SLACK_COMMAND_PREFIX)
    slack_command_prefix: str = ""  # legacy commands: "cc-" makes /cc-status, /cc-why ...
    console_allowed_users: CommaList = ()  # empty: the current OS user
    console_enabled: bool | None = None  # None: only when no chat channel is configured

    # Web dashboard and REST API (chatops/web): served by `chatops run` unless WEB_PORT=0
    web_host: str = "127.0.0.1"
    web_port: int = Field(8080, ge=0, le=65535)
    web_users_file: str = "data/web-users.json"  # written by `chatops web-user add NAME`
    web_users: SecretStr | None = None  # or inline: name:scrypt$...,name2:scrypt$... (hashes, never passwords)
    web_allowed_users: CommaList = ()  # web users who may approve, reject, cancel, pause, resume and ask
    web_session_hours: float = Field(12.0, gt=0, le=24 * 30)

    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    log_file: str | None = None  # None: chatops.log beside the database when the terminal channel runs, else stderr

    @field_validator("telegram_allowed_user_ids", "slack_allowed_user_ids", "console_allowed_users",
                     "web_allowed_users", mode="before")
    @classmethod
    def _split_commas(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(x.strip() for x in v.split(",") if x.strip())
        return v

    @field_validator("telegram_allowed_user_ids")
    @classmethod
    def _numeric_ids(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for x in v:
            if not x.lstrip("-").isdigit():
                raise ValueError("Telegram user ids are numbers, comma-separated")
        return v

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: SecretStr | None) -> SecretStr | None:
        url = v.get_secret_value().strip() if v is not None else ""
        if not url:
            return None
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if not (scheme in ("sqlite", "postgresql", "postgres", "postgresql+psycopg") and url.split("://", 1)[1]):
            raise ValueError("must be sqlite:///path/to/file.db or postgresql://user:password@host:5432/dbname")
        return SecretStr(url)

    @field_validator("underlying", "log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("exchange", "mode", "approval_mode", "decision_mode", "log_format", "llm_reasoning_effort", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="before")
    @classmethod
    def _split_underlyings(cls, data: Any) -> Any:
        """UNDERLYING=BTC,ETH -> underlying BTC (the first), underlyings (BTC, ETH)."""
        if not isinstance(data, dict):
            return data
        key = next((k for k in data if str(k).lower() == "underlying"), None)
        raw = data.get(key, "BTC") if key is not None else "BTC"
        # `underlyings` comes from UNDERLYING only (an UNDERLYINGS variable is ignored).
        out = {k: v for k, v in data.items() if k != key and str(k).lower() != "underlyings"}
        if not isinstance(raw, str):
            return {**out, "underlying": raw}
        parts = [p.strip().upper() for p in raw.split(",") if p.strip()]
        bad = [p for p in parts if p not in COINS]
        if bad or not parts:  # the field's own check names the bad value
            out["underlying"] = bad[0] if bad else raw
            return out
        if len(set(parts)) != len(parts):
            raise ValueError(f"UNDERLYING={raw!r} names a coin twice")
        out["underlying"], out["underlyings"] = parts[0], tuple(parts)
        return out

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        lowered = {str(k).lower(): v for k, v in data.items()}
        profile = str(lowered.get("mode") or "conservative").lower()
        if profile not in PROFILES:
            return data  # the field validator reports it
        out = dict(data)
        for key, value in PROFILES[profile].items():
            if lowered.get(key) in (None, ""):
                out[key] = value
        return out

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        if self.min_dte > self.max_dte:  # type: ignore[operator]
            raise ValueError(f"MIN_DTE ({self.min_dte}) must not exceed MAX_DTE ({self.max_dte})")
        if self.roll_min_dte > self.roll_max_dte:  # type: ignore[operator]
            raise ValueError(f"ROLL_MIN_DTE ({self.roll_min_dte}) must not exceed ROLL_MAX_DTE ({self.roll_max_dte})")
        if self.roll_target_delta > self.roll_max_delta:  # type: ignore[operator]
            raise ValueError(f"ROLL_TARGET_DELTA ({self.roll_target_delta}) must not exceed ROLL_MAX_DELTA ({self.roll_max_delta})")
        if self.min_delta > self.max_delta:  # type: ignore[operator]
            raise ValueError(f"MIN_DELTA ({self.min_delta}) must not exceed MAX_DELTA ({self.max_delta})")
        if self.order_reprice_sec > self.order_timeout_sec:
            raise ValueError(f"ORDER_REPRICE_SEC ({self.order_reprice_sec:g}) must not exceed ORDER_TIMEOUT_SEC "
                             f"({self.order_timeout_sec:g})")
        if self.exchange == "deribit" and not (self.deribit_client_id and self.deribit_client_secret):
            # Even a dry run reads the account and positions, which are private methods.
            raise ValueError("EXCHANGE=deribit needs DERIBIT_CLIENT_ID and DERIBIT_CLIENT_SECRET (an API key with "
                             "account:read, and trade:read_write unless DRY_RUN) from test.deribit.com")
        if self.exchange == "deribit" and self.is_mainnet_url and not self.allow_mainnet:
            raise ValueError(f"DERIBIT_BASE_URL={self.deribit_base_url} is Deribit production (real money): set "
                             "ALLOW_MAINNET=true to trade there, or use https://test.deribit.com (docs/deribit.md)")
        if self.underlying not in self.underlyings:  # Settings(underlying="ETH") given directly
            object.__setattr__(self, "underlyings", (self.underlying,))
        return self

    def check_min_trade(self) -> None:
        """At start-up (the bot, `chatops tick`): a coin whose order size is below its minimum trade
        could never sell a call; raise ConfigError naming the variable. (The policy alone would
        only say so on every tick; above the minimum it rounds down to a multiple.)"""
        for coin in self.underlyings:
            size = self.for_underlying(coin).default_order_size
            step = MIN_TRADE[coin]
            if size < step - 1e-12:
                name = f"DEFAULT_ORDER_SIZE_{coin}" if getattr(self, f"default_order_size_{coin.lower()}") else "DEFAULT_ORDER_SIZE"
                raise ConfigError(f"config error: {name}={size:g} is below the {coin} minimum trade of {step:g} {coin}: "
                                  f"no {coin} call could be sold (set DEFAULT_ORDER_SIZE_{coin})")

    def for_underlying(self, coin: str) -> "Settings":
        """These settings as one coin sees them: `underlying` is that coin and each PER_COIN value
        is NAME_<COIN> if set, else NAME if set, else the coin's default (COIN_DEFAULTS), else NAME's."""
        coin = coin.upper()
        if coin not in self.underlyings:
            raise ValueError(f"{coin} is not traded here (UNDERLYING={','.join(self.underlyings)})")
        update: dict[str, Any] = {"underlying": coin}
        for name in PER_COIN:
            own = getattr(self, f"{name}_{coin.lower()}")
            if own is not None:
                update[name] = own
            elif name not in self.model_fields_set and name in COIN_DEFAULTS.get(coin, {}):
                update[name] = COIN_DEFAULTS[coin][name]
        return self.model_copy(update=update)

    # Derived values -----------------------------------------------------------------------

    @property
    def effective_dry_run(self) -> bool:
        return self.dry_run if self.dry_run is not None else self.exchange == "deribit"

    @property
    def effective_decision_mode(self) -> str:
        return self.decision_mode or ("llm" if self.llm_enabled else "rule")

    @property
    def effective_auto_max_size(self) -> float:
        return self.auto_approve_max_size if self.auto_approve_max_size is not None else self.default_order_size

    @property
    def effective_paper_state_path(self) -> str:
        return self.paper_state_path or str(Path("data") / "paper_exchange.json")

    @property
    def effective_audit_anchor_file(self) -> str:
        """AUDIT_ANCHOR_FILE, else audit-anchors.log in the database's directory (data/ by default)."""
        return self.audit_anchor_file or str(Path(self.database_path).parent / "audit-anchors.log")

    @property
    def effective_console_users(self) -> tuple[str, ...]:
        return self.console_allowed_users or (_os_user(),)

    @property
    def is_mainnet_url(self) -> bool:
        """DERIBIT_BASE_URL is Deribit production (anything on deribit.com but test.deribit.com)."""
        from urllib.parse import urlparse

        host = (urlparse(self.deribit_base_url).hostname or "").lower()
        return (host == "deribit.com" or host.endswith(".deribit.com")) and host != "test.deribit.com"

    def tag_for(self, testnet: bool | None = None) -> str:
        """[PAPER], [TESTNET], [TESTNET DRY-RUN], [MAINNET] or [MAINNET DRY-RUN]: what an approval
        would really do. `testnet` is the flag of Deribit's own responses when one was read."""
        dry = " DRY-RUN" if self.effective_dry_run else ""
        if self.exchange == "paper":
            return f"[PAPER{dry}]"
        mainnet = (testnet is False) if testnet is not None else self.is_mainnet_url
        return f"[{'MAINNET' if mainnet else 'TESTNET'}{dry}]"

    @property
    def trading_tag(self) -> str:
        return self.tag_for(None)

    @property
    def index_name(self) -> str:
        return f"{self.underlying.lower()}_usd"

    @property
    def database_target(self) -> str:
        """What the store opens: DATABASE_URL if set, else the SQLite file at DATABASE_PATH."""
        return self.secret("database_url") or self.database_path

    def secret(self, name: str) -> str | None:
        """The plain value of a secret field, for the one place that must send it."""
        value = getattr(self, name)
        return value.get_secret_value() if isinstance(value, SecretStr) else value

    def redacted(self) -> dict[str, Any]:
        """Every setting, secrets replaced by '***' (or None when unset): safe to log and store."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                out[name] = REDACTED if value.get_secret_value() else None
            elif isinstance(value, tuple):
                out[name] = list(value)
            else:
                out[name] = value
        out["effective_dry_run"] = self.effective_dry_run
        out["effective_decision_mode"] = self.effective_decision_mode
        return out

    def __repr__(self) -> str:  # pydantic's repr already masks SecretStr; keep it short too
        return f"Settings(exchange={self.exchange!r}, underlying={self.underlying!r}, mode={self.mode!r}, dry_run={self.effective_dry_run})"

    __str__ = __repr__


def _os_user() -> str:
    """The account of the real uid (LOGNAME and USER are anyone's to set)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid{os.getuid()}"


SECRET_FIELDS = frozenset(
    name for name, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)
)


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Read the settings; raise ConfigError with one line on the first bad value."""
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = [str(x) for x in err.get("loc", ()) if not str(x).isdigit()]
    name = loc[0].upper() if loc else ""
    msg = err.get("msg", "invalid value")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if not name:  # a cross-field check: its message names the variables
        return f"config error: {msg}"
    value = err.get("input")
    shown = REDACTED if name.lower() in SECRET_FIELDS else repr(value)
    allowed = value_range(name.lower())
    return f"config error: {name}={shown} is not allowed: {msg}" + (f" (allowed: {allowed})" if allowed else "")


def value_range(name: str) -> str | None:
    """The allowed range of a numeric setting as text ("1 <= x <= 86400"), or None."""
    field = Settings.model_fields.get(name)
    if field is None:
        return None
    lo = hi = None
    for m in field.metadata:
        for attr, sym in (("ge", "<="), ("gt", "<")):
            if getattr(m, attr, None) is not None:
                lo = f"{getattr(m, attr):g} {sym} "
        for attr, sym in (("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                hi = f" {sym} {getattr(m, attr):g}"
    return f"{lo or ''}x{hi or ''}" if lo or hi else None

