"""How big is the LLM's prompt? The compact prompt of agent.llm against a naive whole-chain prompt.

    .venv/bin/python bench/llm_prompt.py [--synthetic [--options 800]] [--seed 7]

Builds a realistic state: from the in-process paper exchange when `agent.deribit.paper` is there,
otherwise from a synthetic Deribit-like chain (Black-76 with a smile, Deribit's tick grid) run
through the same candidate filter (`agent.state.select_candidates`). Two short positions are
added by hand. Tokens are estimated as bytes / 4 (no tokenizer dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import Settings, load_settings  # noqa: E402
from agent.llm import MAX_PROMPT_CANDIDATES, build_prompt, decision_schema, estimate_tokens, extract_json, messages_text, system_prompt  # noqa: E402
from agent.llm.caps import price  # noqa: E402
from agent.models import AccountState, AgentState, OptionPosition, PositionHistory  # noqa: E402
from agent.pricing import call_delta, call_price_coin, round_to_tick  # noqa: E402

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
SPOT = 95_000.0
MONTHS = "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split()
TICK_STEPS = ({"above_price": 0.005, "tick_size": 0.0005},)


def _u(*parts) -> float:
    h = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def _expiries(now: datetime) -> list[datetime]:
    """Deribit-like: 4 dailies, 4 Friday weeklies, 3 month-ends, 4 quarterlies (08:00 UTC)."""
    at8 = now.replace(hour=8, minute=0, second=0, microsecond=0)
    out = {at8 + timedelta(days=d) for d in range(1, 5)}
    friday = at8 + timedelta(days=(4 - at8.weekday()) % 7 or 7)
    out |= {friday + timedelta(weeks=w) for w in range(4)}
    for m in range(1, 13):
        y, mo = now.year + (now.month + m - 1) // 12, (now.month + m - 1) % 12 + 1
        last = datetime(y + (mo == 12), mo % 12 + 1, 1, 8, tzinfo=timezone.utc) - timedelta(days=1)
        last -= timedelta(days=(last.weekday() - 4) % 7)
        if m <= 3 or mo % 3 == 0:
            out.add(last)
    return sorted(out)


def synthetic_chain(n_options: int, seed: int):
    """Instruments and book summaries of about `n_options` BTC options (calls and puts)."""
    from agent.deribit.types import BookSummary, Instrument

    now_ms = int(NOW.timestamp() * 1000)
    exps = _expiries(NOW)
    per_expiry = max(4, n_options // (2 * len(exps)))
    instruments, books = [], []
    for e in exps:
        t = (e - NOW).total_seconds() / (365 * 86400)
        fwd = SPOT * math.exp(0.05 * t)
        step = 500 if t < 4 / 365 else 1000 if t < 35 / 365 else 2500 if t < 100 / 365 else 5000
        k0 = round(fwd / step) * step
        strikes = [k0 + (i - per_expiry // 2) * step for i in range(per_expiry)]
        atm = 0.5 + 0.1 * math.exp(-t * 12)
        for k in strikes:
            if k <= 0:
                continue
            m = max(min(math.log(k / fwd) / math.sqrt(max(t, 1 / 8760)), 3), -3)
            iv = atm * (1 + 0.06 * m + 0.12 * m * m)
            for cp in ("C", "P"):
                name = f"BTC-{e.day}{MONTHS[e.month - 1]}{e.year % 100}-{k:.0f}-{cp}"
                call = call_price_coin(fwd, k, iv, t)
                mark = call if cp == "C" else call - (fwd - k) / fwd
                mark = max(mark, 0.0001)
                bid = round_to_tick(mark * 0.965, 0.0001, TICK_STEPS, side="buy") if mark >= 0.0002 else None
                ask = round_to_tick(mark * 1.035, 0.0001, TICK_STEPS, side="sell")
                instruments.append(Instrument(
                    instrument_name=name, kind="option", base_currency="BTC", option_type="call" if cp == "C" else "put",
                    strike=k, expiration_timestamp=int(e.timestamp() * 1000), creation_timestamp=now_ms - 86400000 * 30,
                    min_trade_amount=0.1, contract_size=1.0, tick_size=0.0001, tick_size_steps=TICK_STEPS,
                    is_active=True, settlement_period="week", instrument_type="reversed"))
                books.append(BookSummary(
                    instrument_name=name, bid_price=bid, ask_price=ask, mid_price=(bid + ask) / 2 if bid else None,
                    mark_price=round(mark, 8), mark_iv=round(iv * 100, 2), underlying_price=round(fwd, 2),
                    underlying_index=f"BTC-{e.day}{MONTHS[e.month - 1]}{e.year % 100}", estimated_delivery_price=SPOT,
                    open_interest=round(1200 * _u(seed, name) * math.exp(-abs(m)), 1), interest_rate=0.0,
                    volume=round(50 * _u(seed, name, "v"), 1), creation_timestamp=now_ms))
    return instruments, books, now_ms


def _positions(state: AgentState, instruments, books) -> tuple[OptionPosition, ...]:
    """Two short calls of the chain (about 3 and 6 days out, 2% and 5% above the forward), priced
    from its book: a realistic pair of positions for the prompt."""
    from agent.pricing import years_between

    now_ms = int(state.timestamp.timestamp() * 1000)
    book = {b.instrument_name: b for b in books}
    calls = [i for i in instruments if i.option_type == "call" and i.instrument_name in book
             and book[i.instrument_name].mark_iv and book[i.instrument_name].underlying_price]
    out = []
    for n, (days, otm) in enumerate(((3, 1.02), (6, 1.05)), start=1):
        inst = min(calls, key=lambda i: (abs((i.expiration_timestamp - now_ms) / 86_400_000 - days),
                                         abs(i.strike - state.forward * otm)))
        b = book[inst.instrument_name]
        t = years_between(now_ms, inst.expiration_timestamp)
        mark = b.mark_price or 0.0
        out.append(OptionPosition(
            id=f"p{n}", instrument_name=inst.instrument_name, option_type="call", strike=inst.strike,
            expiration_timestamp=inst.expiration_timestamp, dte=round((inst.expiration_timestamp - now_ms) / 86_400_000, 4),
            size=-0.1, average_price=round(mark * 1.4, 4), mark=mark, bid=b.bid_price, ask=b.ask_price,
            delta=round(call_delta(b.underlying_price, inst.strike, b.mark_iv / 100, t), 4), mark_iv=b.mark_iv,
            forward=b.underlying_price, min_trade_amount=inst.min_trade_amount, tick_size=inst.tick_size,
            tick_size_steps=tuple((s.above_price, s.tick_size) for s in inst.tick_size_steps)))
    return tuple(out)


def _with_positions(state: AgentState, instruments, books) -> AgentState:
    positions = _positions(state, instruments, books)
    account = state.account.model_copy(update={"options_delta": round(sum(p.size * p.delta for p in positions), 4)})
    return state.model_copy(update={"positions": positions, "account": account, "history": PositionHistory(
        previous_decision=f"OPEN {positions[0].instrument_name} 0.1 @ {positions[0].average_price:.4f}: "
                          "approved by alice, filled")})


def synthetic_state(settings: Settings, n_options: int, seed: int):
    from agent.state import select_candidates

    instruments, books, now_ms = synthetic_chain(n_options, seed)
    cands = select_candidates(instruments, {b.instrument_name: b for b in books}, settings, now_ms)
    st = AgentState(
        timestamp=NOW, underlying="BTC", spot=SPOT, forward=SPOT * math.exp(0.05 * 7 / 365),
        account=AccountState(currency="BTC", equity=1.0, balance=1.0, available_funds=0.8, initial_margin=0.2,
                             maintenance_margin=0.1, margin_used_pct=20.0, options_delta=-0.07),
        candidates=tuple(cands), chain_size=len(books),
    )
    return _with_positions(st, instruments, books), instruments, books, "synthetic chain (--synthetic, or agent.deribit.paper not available)"


async def paper_state(settings: Settings):
    """The state from the in-process paper exchange, and its raw chain for the naive prompt."""
    from agent.deribit.paper import PaperExchange  # noqa: F401  (presence check)
    from agent.exchange import open_exchange
    from agent.state import build_agent_state

    from agent.clock import SimClock

    # A fixed simulated time: the same chain, and the same figures, on every run.
    ex = open_exchange(settings, clock=SimClock(start_ms=int(NOW.timestamp() * 1000)), reset_paper=True)
    try:
        st = await build_agent_state(ex.client, settings, clock=ex.clock)
        instruments = await ex.client.get_instruments("BTC", "option")
        books = await ex.client.get_book_summary_by_currency("BTC", "option")
    finally:
        await ex.aclose()
    return _with_positions(st, instruments, books), instruments, books, "in-process paper exchange"


def naive_prompt(state: AgentState, settings: Settings, instruments, books) -> list[dict[str, str]]:
    """What a first attempt sends: the rules, then every option with every instrument and book field."""
    by_name = {i.instrument_name: i for i in instruments}
    rows = []
    for b in books:
        row = b.model_dump(mode="json")
        inst = by_name.get(b.instrument_name)
        if inst is not None:
            row.update({k: v for k, v in inst.model_dump(mode="json").items() if k != "instrument_name"})
        rows.append(json.dumps(row))
    a = state.account
    user = "\n".join([
        f"Time {state.timestamp.isoformat()}. Index {state.spot}. Account: {a.model_dump_json()}",
        "Positions: " + json.dumps([p.model_dump(mode="json") for p in state.positions]),
        f"Previous decision: {state.history.previous_decision}",
        f"Full option chain ({len(rows)} options), one JSON object per line:",
        *rows,
    ])
    return [{"role": "system", "content": system_prompt(state, settings)}, {"role": "user", "content": user}]


def measure(settings: Settings, n_options: int, seed: int, synthetic: bool = False) -> dict:
    try:
        if synthetic:
            raise ImportError("--synthetic")
        state, instruments, books, source = asyncio.run(paper_state(settings))
    except Exception as exc:  # noqa: BLE001 - the paper exchange is optional here
        if not isinstance(exc, ImportError):
            print(f"(paper exchange failed: {type(exc).__name__}: {exc}; using the synthetic chain)")
        state, instruments, books, source = synthetic_state(settings, n_options, seed)
    compact = build_prompt(state, state.candidates, settings)
    naive = naive_prompt(state, settings, instruments, books)
    schema = json.dumps(decision_schema(state, state.candidates, settings))
    c_text, n_text = messages_text(compact), messages_text(naive)
    return {
        "state": state, "source": source, "chain": len(books), "compact": compact,
        "c_bytes": len(c_text.encode()), "c_tok": estimate_tokens(c_text),
        "s_bytes": len(compact[0]["content"].encode()), "s_tok": estimate_tokens(compact[0]["content"]),
        "j_bytes": len(schema.encode()), "j_tok": estimate_tokens(schema),
        "n_bytes": len(n_text.encode()), "n_tok": estimate_tokens(n_text),
    }


def hostile() -> None:
    """How long the JSON extraction takes on hostile answers (each must end in a ValueError)."""
    import time

    cases = {"100,000 '['": "[" * 100_000, "20,000 '{'": "{" * 20_000, "15,000 '{' (under the size limit)": "{" * 15_000,
             "15,000 '[' (under the size limit)": "[" * 15_000,
             "5,000 '{' then a valid answer": "{" * 5_000 + ' {"action": "DO_NOTHING"}'}
    print("JSON extraction on hostile answers (best of 5):")
    for name, text in cases.items():
        best, outcome = float("inf"), ""
        for _ in range(5):
            t0 = time.perf_counter()
            try:
                extract_json(text)
                outcome = "parsed"
            except ValueError as exc:
                outcome = f"ValueError: {exc}"
            best = min(best, time.perf_counter() - t0)
        print(f"  {name:<36} {best * 1000:8.2f} ms  {outcome}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--options", type=int, default=800, help="options in the synthetic chain (default 800)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--synthetic", action="store_true", help="use the synthetic chain even when the paper exchange is there")
    args = ap.parse_args()
    for key in list(os.environ):  # the developer's environment must not change the figures
        if key.upper() in {n.upper() for n in Settings.model_fields}:
            os.environ.pop(key)
    results = {}
    with tempfile.TemporaryDirectory(prefix="llm-bench-") as tmp:  # the paper exchange's state file
        for mode in ("conservative", "research"):
            settings = load_settings(env_file=None, exchange="paper", mode=mode, paper_seed=args.seed,
                                     paper_state_path=str(Path(tmp) / f"paper-{mode}.json"))
            results[mode] = (settings, measure(settings, args.options, args.seed, args.synthetic))

    first = next(iter(results.values()))[1]
    print(f"source: {first['source']}; chain: {first['chain']} options; 2 short calls added by hand")
    print(f"{'profile':<14}{'cands':>6}{'shown':>6}{'compact B':>11}{'tok~':>7}{'system tok~':>13}"
          f"{'schema tok~':>13}{'naive B':>11}{'naive tok~':>12}{'ratio':>8}")
    for mode, (settings, r) in results.items():
        n = len(r["state"].candidates)
        print(f"{mode:<14}{n:>6}{min(n, MAX_PROMPT_CANDIDATES):>6}{r['c_bytes']:>11,}{r['c_tok']:>7,}{r['s_tok']:>13,}"
              f"{r['j_tok']:>13,}{r['n_bytes']:>11,}{r['n_tok']:>12,}{r['n_tok'] / r['c_tok']:>7.0f}x")
    settings, r = results["research"]
    worst = max(res["c_tok"] for _, res in results.values())
    price_in, _, price_out = price(settings, settings.llm_model_name)
    per_call = (r["c_tok"] + r["j_tok"]) * price_in / 1e6 + 60 * price_out / 1e6
    print(f"budget 1,500 prompt tokens: {'OK' if worst <= 1500 else 'OVER'} (largest compact prompt {worst:,} tokens)")
    print(f"cost of {settings.llm_model_name} at ${price_in:g} in / ${price_out:g} out per Mtok, ~60 tokens out: "
          f"${per_call:.5f} a call, ${per_call * 288:.3f} a day at one call per 5 min "
          f"(naive: ${r['n_tok'] * price_in / 1e6:.4f} a call)")
    hostile()
    print("\n--- compact prompt (research profile), user message ---")
    print(r["compact"][1]["content"])


if __name__ == "__main__":
    main()
