"""`csv:PATH`: a user's own series. Columns `timestamp`, `price` and optionally `iv`.

`timestamp` is ISO 8601 (UTC unless it says otherwise), or epoch seconds or milliseconds; `iv` is
the 30-day at-the-money implied vol, in percent (52.3) or as a fraction (0.523). A bad row is named
in a one-line error (`MarketDataError`).
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path

from .errors import MarketDataError
from .series import SeriesPath

TS_NAMES = ("timestamp", "time", "ts", "date", "datetime")
PRICE_NAMES = ("price", "close", "spot", "index_price")
IV_NAMES = ("iv", "implied_vol", "dvol", "mark_iv")


def parse_timestamp(text: str) -> int:
    """Milliseconds since the epoch from ISO 8601 or epoch seconds / milliseconds."""
    s = text.strip()
    try:
        x = float(s)
    except ValueError:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return int(dt.timestamp() * 1000)
    return int(x if x > 1e11 else x * 1000)  # under 1e11: seconds (until the year 5138)


def load_csv(path: str | Path, currency: str = "BTC", vrp: float = 0.05) -> SeriesPath:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise MarketDataError(f"csv market: cannot read {p}: {exc.strerror or exc}") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise MarketDataError(f"csv market: {p} is empty")
    header = [h.strip().lower() for h in rows[0]]

    def col(names: tuple[str, ...], required: bool) -> int | None:
        for n in names:
            if n in header:
                return header.index(n)
        if required:
            raise MarketDataError(f"csv market: {p} has no {names[0]} column (header: {', '.join(header) or 'none'}); "
                                  f"expected timestamp,price[,iv]")
        return None

    i_ts, i_px, i_iv = col(TS_NAMES, True), col(PRICE_NAMES, True), col(IV_NAMES, False)
    ts, px, iv = [], [], []
    for n, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        try:
            ts.append(parse_timestamp(row[i_ts]))  # type: ignore[index]
            price = float(row[i_px])  # type: ignore[index]
            if not price > 0:
                raise ValueError("price must be positive")
            px.append(price)
            if i_iv is not None:
                v = float(row[i_iv])
                if not v > 0:
                    raise ValueError("iv must be positive")
                iv.append(v / 100.0 if v > 3.0 else v)
        except (ValueError, IndexError) as exc:
            raise MarketDataError(f"csv market: {p} line {n}: {exc}") from None
    if len(ts) < 2:
        raise MarketDataError(f"csv market: {p} needs at least two rows of data")
    return SeriesPath(currency, ts, px, iv if i_iv is not None else None, vrp=vrp,
                      source={"kind": "csv", "path": str(p), "currency": currency, "vrp": vrp},
                      description=f"csv {p.name} ({len(ts)} rows; "
                                  + ("implied vol from its iv column" if i_iv is not None else
                                     f"no iv column: implied vol = trailing 30-day realized + {vrp * 100:g} vol points")
                                  + "; option prices modelled by Black-76, not replayed quotes)")
