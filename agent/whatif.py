"""What-if: a modified copy of a state (equity, spot, implied vol, time), repriced with Black-76.

Pure: the caller supplies the state and the overrides; nothing here talks to an exchange.
"""

from __future__ import annotations

import re
from datetime import timedelta

from .config import Settings
from .models import AgentState
from .pricing import call_delta, call_price_coin
from .state import candidate_score

ALLOWED = {
    "equity": "coin held, e.g. equity=0 or equity=2",
    "spot": "index price, absolute (spot=90000) or relative (spot=-5%)",
    "iv": "implied vol in points, absolute (iv=60) or added (iv=+10)",
    "days": "time passing, in days (days=2)",
    "margin": "margin used %, e.g. margin=45",
}
_PAIR = re.compile(r"^\s*([a-z_]+)\s*=\s*([+-]?\d+(?:\.\d+)?)(%?)\s*$")


class WhatIfError(ValueError):
    pass


def parse_overrides(text: str) -> dict[str, tuple[float, str]]:
    """`equity=0 spot=-5% iv=+10` -> {"equity": (0, "abs"), "spot": (-5, "pct"), "iv": (10, "add")}."""
    out: dict[str, tuple[float, str]] = {}
    for part in re.split(r"[\s,]+", text.strip()):
        if not part:
            continue
        m = _PAIR.match(part.lower())
        if not m:
            raise WhatIfError(f"cannot read {part!r}: use key=value with keys {', '.join(ALLOWED)}")
        key, raw, pct = m.groups()
        if key not in ALLOWED:
            raise WhatIfError(f"unknown what-if key {key!r}: allowed are {', '.join(ALLOWED)}")
        value = float(raw)
        kind = "pct" if pct else ("add" if raw[0] in "+-" and key in ("iv", "spot") else "abs")
        if key == "spot" and kind == "add":
            kind = "abs_delta"
        out[key] = (value, kind)
    if not out:
        raise WhatIfError(f"nothing to change: give key=value pairs ({'; '.join(f'{k}: {v}' for k, v in ALLOWED.items())})")
    return out


def apply_overrides(state: AgentState, overrides: dict[str, tuple[float, str]], settings: Settings) -> AgentState:
    """The state as it would be with these changes; candidates repriced and refiltered."""
    spot = state.spot
    if "spot" in overrides:
        v, kind = overrides["spot"]
        spot = spot * (1 + v / 100) if kind == "pct" else (spot + v if kind == "abs_delta" else v)
        if spot <= 0:
            raise WhatIfError("spot must stay positive")
    ratio = spot / state.spot
    iv_add, iv_abs = 0.0, None
    if "iv" in overrides:
        v, kind = overrides["iv"]
        if kind == "abs":
            iv_abs = v
        else:
            iv_add = v
    days = overrides.get("days", (0.0, "abs"))[0]
    if days < 0:
        raise WhatIfError("days must not be negative")

    def new_iv(iv: float) -> float:
        out = iv_abs if iv_abs is not None else iv + iv_add
        if out <= 0:
            raise WhatIfError("implied vol must stay positive")
        return out

    cands = []
    for c in state.candidates:
        dte = c.dte - days
        if dte <= 0:
            continue
        iv = new_iv(c.mark_iv)
        fwd = c.forward * ratio
        t = dte / 365.0
        mark = call_price_coin(fwd, c.strike, iv / 100, t)
        old = call_price_coin(c.forward, c.strike, c.mark_iv / 100, c.dte / 365.0) or c.mark
        scale = mark / old if old > 0 else 1.0
        bid = c.bid * scale
        delta = call_delta(fwd, c.strike, iv / 100, t)
        if not (settings.min_delta <= delta <= settings.max_delta) or not (settings.min_dte <= dte <= settings.max_dte):
            continue
        yld = bid * 365.0 / dte * 100.0
        cands.append(c.model_copy(update=dict(
            dte=round(dte, 4), delta=round(delta, 4), mark_iv=iv, forward=fwd, bid=bid,
            ask=c.ask * scale if c.ask is not None else None, mark=mark, bid_usd=bid * fwd,
            ask_usd=c.ask * scale * fwd if c.ask is not None else None, mark_usd=mark * fwd,
            otm_pct=(c.strike / fwd - 1) * 100, annualized_yield_pct=yld,
            score=candidate_score(delta, dte, settings),
        )))
    cands.sort(key=lambda c: -c.score)
    cands = [c.model_copy(update={"id": f"c{i}"}) for i, c in enumerate(cands, start=1)]

    positions = []
    for p in state.positions:
        dte = max(p.dte - days, 0.0)
        iv = new_iv(p.mark_iv) if p.mark_iv else None
        fwd = p.forward * ratio
        if iv and dte > 0:
            t = dte / 365.0
            mark = call_price_coin(fwd, p.strike, iv / 100, t)
            delta = call_delta(fwd, p.strike, iv / 100, t)
        else:
            mark = max(fwd - p.strike, 0.0) / fwd
            delta = 1.0 if fwd > p.strike else 0.0
        scale = mark / p.mark if p.mark > 0 else 1.0
        positions.append(p.model_copy(update=dict(
            dte=dte, forward=fwd, mark=mark, delta=round(delta, 4), mark_iv=iv,
            bid=p.bid * scale if p.bid is not None else None, ask=p.ask * scale if p.ask is not None else None)))

    account = state.account
    upd: dict = {}
    if "equity" in overrides:
        eq = overrides["equity"][0]
        if eq < 0:
            raise WhatIfError("equity must not be negative")
        upd.update(equity=eq, balance=eq, available_funds=max(eq - account.initial_margin, 0.0),
                   margin_used_pct=(account.initial_margin / eq * 100) if eq > 0 else (100.0 if account.initial_margin else 0.0))
    if "margin" in overrides:
        m = overrides["margin"][0]
        eq = upd.get("equity", account.equity)
        upd.update(margin_used_pct=m, initial_margin=eq * m / 100)
    upd["options_delta"] = sum(p.size * p.delta for p in positions if p.option_type == "call") if positions else 0.0
    return state.model_copy(update=dict(
        spot=spot, forward=state.forward * ratio, candidates=tuple(cands), positions=tuple(positions),
        account=account.model_copy(update=upd), timestamp=state.timestamp + timedelta(days=days),
    ))


def describe(overrides: dict[str, tuple[float, str]]) -> str:
    parts = []
    for k, (v, kind) in overrides.items():
        parts.append(f"{k}{'%+g%%' % v if kind == 'pct' else ('%+g' % v if kind in ('add', 'abs_delta') else '=%g' % v)}")
    return ", ".join(parts)




# --- a hypothetical state is not the live one ---------------------------------------------------


def whole_chain_settings(settings: Settings) -> Settings:
    """Settings that keep every liquid call as a candidate (any DTE, any delta), so that
    `apply_overrides` re-selects from the whole chain under the new spot and IV, not only from
    the calls that pass today's filters."""
    return settings.model_copy(update={"min_dte": 0.0, "max_dte": 3650.0, "min_delta": 0.0001, "max_delta": 0.9999})


def without_waiting(state: AgentState) -> AgentState:
    """The state with the hysteresis and the rejection cool-down lifted: a what-if asks what the
    agent would do in that market, not what it would wait for."""
    h = state.history.model_copy(update={"last_action_at": {}, "rejections": ()})
    return state.model_copy(update={"history": h})


def waiting_note(state: AgentState, settings: Settings) -> str | None:
    """What `without_waiting` lifted, in words (None when nothing was in force)."""
    parts = []
    recent = [s for s, at in state.history.last_action_at.items()
              if timedelta(0) <= state.timestamp - at < timedelta(minutes=settings.hysteresis_min)]
    if recent:
        parts.append(f"the {settings.hysteresis_min:g}-min hysteresis after the last action ({', '.join(sorted(recent))})")
    rejected = [r for r in state.history.rejections
                if timedelta(0) <= state.timestamp - r.at < timedelta(minutes=settings.reject_cooldown_min)]
    if rejected:
        parts.append("the rejection cool-down (" + "; ".join(r.text() for r in rejected[:3]) + ")")
    return ("Hypothetical, so not applied: " + " and ".join(parts) + ".") if parts else None


def uncovered_calls(state: AgentState) -> list[str]:
    """Short calls the coin held no longer covers (one coin per contract), named."""
    shorts = state.short_calls
    short_total = sum(abs(p.size) for p in shorts)
    equity = state.account.equity
    if not shorts or short_total <= equity + 1e-9:
        return []
    gap = short_total - equity
    return [f"UNCOVERED: short {abs(p.size):g} {p.instrument_name} (strike {p.strike:,.0f}, {p.dte:.1f} DTE) is not "
            f"covered: {equity:.4f} {state.underlying} held against {short_total:g} sold ({gap:g} naked); "
            f"a rise above the strike would cost coin the account does not have" for p in shorts]
