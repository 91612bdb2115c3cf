"""Bad values are refused at start-up with one line naming the variable, the value and the range
(issue 11): inf and nan never pass, the order size follows the underlying, `--interval` is checked
like LOOP_INTERVAL_SEC."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from agent.config import ConfigError, Settings, load_settings
from tests.spine_helpers import make_bot

ROOT = Path(__file__).resolve().parents[1]


def numeric_fields() -> list[str]:
    out = []
    for name, f in Settings.model_fields.items():
        types = set(typing.get_args(f.annotation)) or {f.annotation}
        if types & {int, float} and bool not in types:
            out.append(name)
    return out


def test_every_number_has_a_finite_range():
    names = numeric_fields()
    assert {"approval_ttl_sec", "default_order_size", "max_price_drift_pct", "loop_interval_sec"} <= set(names)
    for name in names:
        meta = Settings.model_fields[name].metadata
        lo = any(getattr(m, a, None) is not None for m in meta for a in ("ge", "gt"))
        hi = any(getattr(m, a, None) is not None for m in meta for a in ("le", "lt"))
        assert lo and hi, f"{name.upper()} needs a lower and an upper bound"


@pytest.mark.parametrize("name", ["APPROVAL_TTL_SEC", "DEFAULT_ORDER_SIZE", "MAX_PRICE_DRIFT_PCT", "LOOP_INTERVAL_SEC",
                                  "MAX_NET_DELTA_ABS", "AUTO_APPROVE_MAX_SIZE"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_inf_and_nan_are_refused_in_one_line(name, value):
    with pytest.raises(ConfigError) as err:
        load_settings(env_file=None, **{name.lower(): value})
    text = str(err.value)
    assert "\n" not in text and f"{name}='{value}'" in text and "(allowed: " in text


def test_out_of_range_names_the_range():
    with pytest.raises(ConfigError, match=r"APPROVAL_TTL_SEC=1000000000.0 is not allowed: .* \(allowed: 5 <= x <= 604800\)"):
        load_settings(env_file=None, approval_ttl_sec=1e9)


def test_the_default_order_size_follows_the_underlying():
    # What a coin trades with is its own view of the settings (one mechanism for one coin or two).
    assert load_settings(env_file=None).for_underlying("BTC").default_order_size == 0.1
    assert load_settings(env_file=None, underlying="ETH").for_underlying("ETH").default_order_size == 1.0
    assert load_settings(env_file=None, underlying="eth", default_order_size=3).for_underlying("ETH").default_order_size == 3


async def test_a_size_under_the_instrument_minimum_stops_start_up(tmp_path):
    b = make_bot(tmp_path, underlying="ETH", default_order_size=0.1)
    with pytest.raises(ConfigError) as err:
        await b.start()
    assert "DEFAULT_ORDER_SIZE=0.1 is below the ETH minimum trade of 1 ETH" in str(err.value)
    assert "\n" not in str(err.value)
    await b.exchange.aclose()
    b.store.close()
    ok = make_bot(tmp_path / "eth", underlying="ETH")  # the default, 1 ETH, trades
    await ok.start()
    try:
        _, decision = await ok.tick()
        assert decision.final_action.size == 1.0
    finally:
        await ok.stop()


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
            "DATABASE_PATH": str(tmp_path / "chatops.db"), "PAPER_STATE_PATH": str(tmp_path / "paper.json")}
    return subprocess.run([sys.executable, "-m", "chatops", *args], env={**base, **env}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("value", ["0.5", "inf", "soon"])
def test_interval_gets_the_same_check_and_one_line_as_loop_interval_sec(tmp_path, value):
    flag = run_cli(tmp_path, "run", "--ticks", "1", "--interval", value)
    env = run_cli(tmp_path, "run", "--ticks", "1", LOOP_INTERVAL_SEC=value)
    for done in (flag, env):
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.count("\n") == 1 and f"LOOP_INTERVAL_SEC='{value}'" in done.stderr
    assert "(allowed: 1 <= x <= 86400)" in flag.stderr


def test_eth_with_a_too_small_size_refuses_to_run_in_one_line(tmp_path):
    done = run_cli(tmp_path, "run", "--ticks", "1", UNDERLYING="ETH", DEFAULT_ORDER_SIZE="0.1")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "is below the ETH minimum trade of 1 ETH" in done.stderr
