"""Deribit's listing calendar and strike grids, as the paper exchange lists them.

Dailies, weeklies (Fridays), monthlies (last Friday) and quarterlies at 08:00 UTC; strikes on round
numbers around the forward, wider and coarser for longer tenors; and more strikes as the spot moves
away from where an expiry was listed, as Deribit adds them.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone
from typing import Literal

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
YEAR_MS = 365 * DAY_MS
EXPIRY_HOUR_UTC = 8

Kind = Literal["day", "week", "month", "quarter"]
_MONTHS = "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split()

# Strike spacing as a fraction of the forward (500 / 1000 / 2500 / 5000 at BTC 95,000) and the
# half-width of the grid around the forward, by the kind of expiry: wider for longer tenors.
GRID: dict[str, tuple[float, float]] = {
    "day": (500 / 95_000, 0.08),
    "week": (1_000 / 95_000, 0.20),
    "month": (2_500 / 95_000, 0.40),
    "quarter": (5_000 / 95_000, 0.60),
}



# --- the expiry calendar ---------------------------------------------------------------------


def _ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, EXPIRY_HOUR_UTC, tzinfo=timezone.utc).timestamp() * 1000)


def _date(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).date()


def _last_friday(year: int, month: int) -> date:
    nxt = date(year + (month == 12), month % 12 + 1, 1)
    d = nxt - timedelta(days=1)
    return d - timedelta(days=(d.weekday() - 4) % 7)


def expiry_kind(expiry_ms: int) -> Kind:
    """Quarterly, monthly (last Friday), weekly (Friday) or daily, from the date alone."""
    d = _date(expiry_ms)
    if d.weekday() == 4 and d == _last_friday(d.year, d.month):
        return "quarter" if d.month % 3 == 0 else "month"
    return "week" if d.weekday() == 4 else "day"


def settlement_period(kind: Kind) -> str:
    """Deribit's `settlement_period`: quarterlies are monthly expiries too."""
    return {"day": "day", "week": "week", "month": "month", "quarter": "month"}[kind]


def next_boundary(t_ms: int) -> int:
    """The first 08:00 UTC strictly after `t_ms`: when expiries settle and new ones list."""
    d = _date(t_ms)
    b = _ms(d)
    return b if b > t_ms else _ms(d + timedelta(days=1))


def calendar(now_ms: int) -> list[int]:
    """Expiries (ms, 08:00 UTC) listed at `now_ms`: Deribit's dailies, weeklies, monthlies, quarterlies."""
    first = _date(next_boundary(now_ms))
    out: set[date] = {first + timedelta(days=i) for i in range(3)}
    friday = first + timedelta(days=(4 - first.weekday()) % 7)
    out |= {friday + timedelta(weeks=i) for i in range(4)}
    y, m, monthly = first.year, first.month, []
    while len(monthly) < 3:
        lf = _last_friday(y, m)
        if lf >= first:
            monthly.append(lf)
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    out |= set(monthly)
    horizon = first + timedelta(days=370)
    y, m = first.year, first.month
    while date(y, m, 1) <= horizon:
        lf = _last_friday(y, m)
        if m % 3 == 0 and first <= lf <= horizon:
            out.add(lf)
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return sorted(_ms(d) for d in out)


def expiry_code(expiry_ms: int) -> str:
    """`4DEC26`: day without a leading zero, month, two-digit year."""
    d = _date(expiry_ms)
    return f"{d.day}{_MONTHS[d.month - 1]}{d.year % 100:02d}"


def format_strike(strike: float) -> str:
    return str(int(strike)) if float(strike).is_integer() else repr(float(strike))


def instrument_name(currency: str, expiry_ms: int, strike: float, option_type: str) -> str:
    return f"{currency}-{expiry_code(expiry_ms)}-{format_strike(strike)}-{'C' if option_type == 'call' else 'P'}"


# --- strike grid -----------------------------------------------------------------------------


def nice_spacing(raw: float) -> float:
    """The round number (1, 2.5 or 5 times a power of ten) nearest to `raw` on a log scale."""
    exp = math.floor(math.log10(raw))
    best = raw
    best_gap = math.inf
    for e in (exp - 1, exp, exp + 1):
        for m in (1.0, 2.5, 5.0):
            cand = m * 10.0**e
            gap = abs(math.log(cand / raw))
            if gap < best_gap:
                best, best_gap = cand, gap
    return float(round(best, 10))


def strike_grid(forward: float, kind: Kind) -> tuple[float, ...]:
    """Round strikes around the forward at listing time; spacing and width grow with tenor."""
    frac, width = GRID[kind]
    sp = nice_spacing(forward * frac)
    lo = math.ceil(forward * (1 - width) / sp)
    hi = math.floor(forward * (1 + width) / sp)
    return tuple(float(round(i * sp, 10)) for i in range(max(lo, 1), hi + 1))


def grid_spacing(listing_forward: float, kind: Kind) -> float:
    """The strike spacing of an expiry: fixed when it lists."""
    return nice_spacing(listing_forward * GRID[kind][0])


def missing_strikes(strikes: tuple[float, ...], listing_forward: float, kind: Kind, forward: float) -> list[float]:
    """Strikes to add when the forward has moved to within half the grid's width of its edge: the
    grid is then extended to its full width around the forward again (outward only: it stays
    contiguous and nothing is unlisted). The hysteresis keeps listings to a few a week, as on Deribit."""
    frac, width = GRID[kind]
    sp = grid_spacing(listing_forward, kind)
    if strikes and min(strikes) <= forward * (1 - width / 2) and max(strikes) >= forward * (1 + width / 2):
        return []
    lo = max(math.ceil(forward * (1 - width) / sp), 1)
    hi = math.floor(forward * (1 + width) / sp)
    have_lo = round(min(strikes) / sp) if strikes else hi + 1
    have_hi = round(max(strikes) / sp) if strikes else lo - 1
    new = [i for i in range(lo, min(hi, have_lo - 1) + 1)] + [i for i in range(max(lo, have_hi + 1), hi + 1)]
    return [float(round(i * sp, 10)) for i in sorted(set(new))]
