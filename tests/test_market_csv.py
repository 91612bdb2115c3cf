"""`csv:PATH`: a user's own series, with and without an implied-vol column; bad files get one line."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from agent.market import MarketDataError, parse_market
from agent.market.csvfile import load_csv, parse_timestamp
from chatops.cli import main

T0 = datetime(2024, 6, 3, tzinfo=timezone.utc)


def _write(path, rows, header="timestamp,price,iv"):
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n", encoding="utf-8")
    return path


def _series(n_hours: int, with_iv: bool = True):
    rows = []
    for h in range(n_hours):
        t = T0 + timedelta(hours=h)
        price = round(65_000 * (1 + 0.05 * math.sin(h / 40)), 2)
        rows.append([t.isoformat().replace("+00:00", "Z"), price] + ([round(50 + 10 * math.sin(h / 90), 2)] if with_iv else []))
    return rows


def test_timestamps_in_three_spellings():
    ms = int(T0.timestamp() * 1000)
    assert parse_timestamp("2024-06-03T00:00:00Z") == ms
    assert parse_timestamp("2024-06-03 00:00") == ms  # naive: UTC
    assert parse_timestamp(str(ms // 1000)) == ms
    assert parse_timestamp(str(ms)) == ms


def test_csv_with_iv_in_percent(tmp_path):
    path = load_csv(_write(tmp_path / "s.csv", _series(200)))
    t = int((T0 + timedelta(hours=50, minutes=30)).timestamp() * 1000)
    assert path.spot(t) == pytest.approx(round(65_000 * (1 + 0.05 * math.sin(50 / 40)), 2))  # the last known row
    assert path.iv30_at(t) == pytest.approx((50 + 10 * math.sin(50 / 90)) / 100, abs=1e-4)
    assert path.atm_vol(t, 30 / 365) == pytest.approx(path.iv30_at(t))
    assert "implied vol from its iv column" in path.describe()


def test_csv_without_iv_uses_trailing_realized_plus_vrp(tmp_path):
    path = load_csv(_write(tmp_path / "s.csv", _series(24 * 40, with_iv=False), header="time,close"), vrp=0.07)
    assert not path.implied_given
    t = int((T0 + timedelta(days=35)).timestamp() * 1000)
    assert 0.07 < path.iv30_at(t) < 3.0
    assert "trailing 30-day realized + 7 vol points" in path.describe()


@pytest.mark.parametrize("text, needle", [
    ("timestamp,price\n2024-06-03,65000\n2024-06-03T01:00,abc\n", "line 3"),
    ("timestamp,price\n2024-06-03,65000\n2024-06-03T01:00,-5\n", "line 3: price must be positive"),
    ("when,price\n2024-06-03,65000\n", "no timestamp column"),
    ("timestamp,price\n2024-06-03,65000\n", "at least two rows"),
    ("timestamp,price,iv\n2024-06-03,65000,0\n2024-06-03T01:00,65000,50\n", "iv must be positive"),
])
def test_bad_csv_is_one_line(tmp_path, text, needle):
    p = tmp_path / "bad.csv"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(MarketDataError) as err:
        load_csv(p)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_market_names():
    assert parse_market("csv:/x/y.csv") == ("csv", "/x/y.csv")
    with pytest.raises(MarketDataError, match="synthetic, deribit or csv:PATH"):
        parse_market("binance")


def test_backtest_on_a_csv_from_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    csv_path = _write(tmp_path / "s.csv", _series(24 * 6))
    assert main(["backtest", "--market", f"csv:{csv_path}", "--json", "--out", str(tmp_path / "run")]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["run"]["market"] == f"csv:{csv_path}"
    assert report["run"]["start"] == "2024-06-03 00:00 UTC" and report["run"]["ticks"] == 24 * 6 - 1 + 1
    assert report["books"][0]["coin"]["unexplained"] == pytest.approx(0.0, abs=1e-9)
    # A missing file: one line, exit 1, no traceback.
    assert main(["backtest", "--market", f"csv:{tmp_path / 'nope.csv'}"]) == 1
    err = capsys.readouterr().err
    assert "cannot read" in err and "Traceback" not in err
