"""A short synthetic backtest end to end, through `chatops backtest`: the report's figures come
from the exchange's records and add up, the run's database opens in `chatops audit`, the same
seed gives the same report byte for byte."""

from __future__ import annotations

import json
import sqlite3

import pytest

from agent.backtest import BacktestError, make_spec, parse_interval
from agent.backtest_report import max_drawdown
from chatops.cli import main

# No closes and no rolls: every call is held to expiry, so settlements (in and out of the money) happen.
HOLD_TO_EXPIRY = {"CLOSE_CAPTURE_PCT": "100", "ROLL_TRIGGER_DELTA": "0.99", "ROLL_TRIGGER_SPOT_PCT": "1000",
                  "EXPIRE_MAX_DELTA": "0.99"}


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["backtest", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def hold(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for k, v in HOLD_TO_EXPIRY.items():
        monkeypatch.setenv(k, v)
    return tmp_path


def test_end_to_end_figures_add_up_and_come_from_the_exchange(hold, capsys):
    out_dir = hold / "run"
    code, out, err = _run(capsys, "--days", "24", "--seed", "4", "--json", "--out", str(out_dir), "--png",
                          str(hold / "chart.png"))
    assert code == 0, err
    report = json.loads(out)
    assert report == json.loads((out_dir / "report.json").read_text())
    book = report["books"][0]
    c, n = book["coin"], book["counts"]
    assert report["run"]["ticks"] == 24 * 24 + 1 and book["ticks"] == 24 * 24 + 1 and book["failed_ticks"] == 0
    # Coin P&L is the account's equity change ...
    assert c["pnl"] == pytest.approx(c["end_equity"] - c["start_equity"], abs=1e-9)
    # ... and premium - buy-backs - fees + settlement cash + what is still open explains all of it.
    assert c["premium_collected"] > 0 and c["fees"] > 0
    assert c["settlement_cash"] < 0  # expiries in the money paid out
    assert c["premium_collected"] - c["bought_back"] - c["fees"] + c["settlement_cash"] + c["open_options_value"] \
        == pytest.approx(c["pnl"], abs=1e-6)
    assert c["unexplained"] == pytest.approx(0.0, abs=1e-9)
    assert n["expired_itm"] >= 1 and n["expired_otm"] >= 1 and n["opens"] >= 3
    assert n["expired_itm"] + n["expired_otm"] == n["settlements"]
    assert c["ledger_check_ok"] is True
    # The per-cycle table (the ledger's legs): one row per open or roll; the legs sum to the book.
    cycles = book["cycles"]
    assert len(cycles) == n["opens"] + n["rolls"]
    # Each figure is rounded to 6 dp in the report: the rounded legs may differ from the rounded
    # total by half a unit of the last place per leg, and by no more.
    rounding = 0.5e-6 * (len(cycles) + 1) + 1e-12
    assert sum(cy["premium"] for cy in cycles) == pytest.approx(c["premium_collected"], abs=rounding)
    assert sum(cy["settlement"] for cy in cycles) == pytest.approx(c["settlement_cash"], abs=rounding)
    assert sum(cy["pnl"] for cy in cycles) == pytest.approx(c["pnl"], abs=1e-6)
    assert {cy["outcome"] for cy in cycles} <= {"expired ITM", "expired OTM", "closed", "rolled", "open at the end"}
    assert sum(cy["outcome"] == "expired ITM" for cy in cycles) == n["expired_itm"]
    # USD against HODL: the strategy beat holding by exactly its coin P&L valued at the end.
    u = book["usd"]
    assert u["vs_hodl"] == pytest.approx(c["pnl"] * report["run"]["spot_end"], abs=0.05)
    assert u["hodl_pnl"] == pytest.approx(report["run"]["spot_end"] - report["run"]["spot_start"], abs=0.05)
    # The chart was drawn.
    assert (hold / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The run's database: every tick a decision, every trade an executed proposal; audit opens it.
    db = sqlite3.connect(out_dir / "backtest.db")
    try:
        assert db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == book["ticks"]
        executed = db.execute("SELECT COUNT(*) FROM proposals WHERE status='executed'").fetchone()[0]
    finally:
        db.close()
    assert executed == n["opens"] + n["rolls"] + n["closes"]
    import os

    os.environ["DATABASE_PATH"] = str(out_dir / "backtest.db")
    try:
        assert main(["audit", "proposals", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert len(rows) == executed and all(r["status"] == "executed" for r in rows)
        assert main(["audit", "verify"]) == 0
        assert "audit chain OK" in capsys.readouterr().out
    finally:
        del os.environ["DATABASE_PATH"]


def test_same_seed_same_report_byte_for_byte(hold, capsys):
    runs = []
    for out in ("a", "b"):
        code, text, err = _run(capsys, "--days", "6", "--seed", "2", "--out", str(hold / out))
        assert code == 0, err
        runs.append(((hold / out / "report.txt").read_bytes(), (hold / out / "report.json").read_bytes(), text))
    assert runs[0] == runs[1]
    assert runs[0][2].startswith("Backtest 2025-01-01 00:00 UTC to 2025-01-07 00:00 UTC")
    code, text, _ = _run(capsys, "--days", "6", "--seed", "3")
    assert code == 0 and text != runs[0][2]  # another seed, another market


def test_bad_arguments_are_one_line(hold, capsys):
    for args, needle in ((["--interval", "5s"], "bad --interval"), (["--market", "nyse"], "unknown market"),
                         (["--start", "2025-13-01"], "bad date"), (["--days", "-3"], "--days must be positive"),
                         (["--start", "2025-01-01", "--end", "2025-02-01", "--days", "3"], "at most two")):
        code, out, err = _run(capsys, *args)
        assert code == 2 and needle in err and "Traceback" not in err, (args, err)


def test_window_from_start_end_days():
    day = 86_400_000
    s = make_spec(start="2025-03-01", days=10)
    assert (s.end_ms - s.start_ms) == 10 * day and s.ticks == 241
    s = make_spec(start="2025-03-01", end="2025-03-02", interval="4h")
    assert s.ticks == 7
    s = make_spec(days=30, market="deribit", now_ms=1_750_000_000_000)
    assert s.end_ms % day == 0 and s.end_ms - s.start_ms == 30 * day
    assert parse_interval("15m") == 900_000
    with pytest.raises(BacktestError):
        parse_interval("1w")


def test_max_drawdown():
    assert max_drawdown([1.0, 1.2, 0.9, 1.3, 1.1]) == pytest.approx(0.25)
    assert max_drawdown([1.0, 1.1, 1.2]) == 0.0


async def test_shadow_rules_against_the_llm_on_the_same_ticks(tmp_path):
    """--brain shadow: the rules drive one book with the LLM deciding beside them (agreement), the
    LLM drives another on the same market and ticks (its own P&L); both from the fake OpenAI server."""
    from agent.backtest_report import report_text
    from agent.config import load_settings
    from chatops.backtest import run
    from tests.fakes.openai_server import fake_openai_server, json_reply
    from tests.llm_helpers import answer

    def responder(body):
        prompt = body["messages"][-1]["content"]
        if "Open positions" in prompt:  # it holds a call: keep it
            return json_reply(answer("DO_NOTHING", reasoning="holding the call"))
        return json_reply(answer("OPEN_COVERED_CALL", "c1", reasoning="best candidate"))

    async with fake_openai_server() as srv:
        srv.responder = responder
        settings = load_settings(env_file=None, openai_base_url=srv.base_url, openai_api_key="k", llm_timeout_sec=5)
        spec = make_spec(days=3, seed=5, brain="shadow")
        result, report = await run(settings, spec, tmp_path / "out")
    assert [b["book"] for b in report["books"]] == ["rules", "llm"]
    assert (tmp_path / "out" / "backtest.db").exists() and (tmp_path / "out" / "backtest-llm.db").exists()
    s = report["shadow"]
    assert s["ticks"] == spec.ticks  # the LLM decided beside the rules on every tick
    assert 0 <= s["same_action_pct"] <= 100
    rules, llm = report["books"]
    assert rules["decision_mode"] == "shadow" and llm["decision_mode"] == "llm"
    assert llm["counts"]["opens"] >= 1  # the LLM's own book traded on its choices
    for b in (rules, llm):
        assert b["coin"]["unexplained"] == pytest.approx(0.0, abs=1e-9)
    text = report_text(report)
    assert "Rules vs LLM on the same" in text and "P&L of each" in text
