"""The running bot keeps the ledger from the exchange's records on a simulated clock: a call that
expires out of the money, one that goes deep in the money (told once) and expires in it; the
notices, the daily summary, `chatops pnl --json` with its equity check, and a truthful status."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest

from agent.clock import SimClock
from chatops import cli
from chatops.adapters.base import Notice
from tests.spine_helpers import make_bot
from tests.paper_helpers import T0_MS


class Recorder:
    """A channel that keeps what it is told (our own Channel protocol, no peer to fake)."""

    name = "recorder"

    def __init__(self) -> None:
        self.notices: list[Notice] = []

    async def start(self, core) -> None: ...
    async def stop(self) -> None: ...
    async def post_proposal(self, card) -> None: ...
    async def update_proposal(self, card) -> None: ...

    async def notify(self, notice: Notice) -> None:
        self.notices.append(notice)

    def texts(self, kind: str) -> list[str]:
        return [n.text for n in self.notices if n.kind == kind]


@pytest.fixture
async def bot(tmp_path):
    rec = Recorder()
    b = make_bot(tmp_path, clock=SimClock(start_ms=T0_MS), approval_mode="auto", mode="research", min_dte=1.5,
                 max_dte=4.0, hysteresis_min=30)
    b._channels = [rec]
    await b.start()
    b.rec = rec
    yield b
    await b.stop()


def short(b):
    (p,) = [p for p in b.exchange.paper.accounts["BTC"].positions.items() if p[1].size < 0]
    return p[0], b.exchange.paper.markets["BTC"].options[p[0]]


async def until_filled(b, tries: int = 20) -> None:
    """Ticks a minute apart (the order steps from mid toward the touch) until the ledger has read a new fill."""
    def ledger_fills():
        return [t for t in b.rec.texts("fill") if t.startswith(("Fill:", "Partial fill:"))]

    before = len(ledger_fills())
    for _ in range(tries):
        b.exchange.clock.advance(60)
        await b.sweep()
        await b.tick()
        if len(ledger_fills()) > before:
            return
    raise AssertionError("no fill read by the ledger")


async def run_until_expiry(b, spec, index: float) -> None:
    paper = b.exchange.paper
    left = (spec.expiry_ms - b.exchange.clock.now_ms()) / 1000
    b.exchange.clock.advance(left - 3 * 3600)
    paper.set_index(index)
    await b.tick()
    b.exchange.clock.advance(3 * 3600 + 600)
    await b.tick()


async def test_a_cycle_out_of_the_money_and_one_deep_in_it(bot, tmp_path, monkeypatch):
    b = bot
    await b.tick()  # opens (auto): the order works from mid toward the touch
    await until_filled(b)  # the ledger reads the fill from the exchange
    (fill,) = [t for t in b.rec.texts("fill") if t.startswith("Fill:")][-1:]
    name, spec = short(b)
    assert fill.startswith("Fill: Sold 0.1 " + name) and "fee 0.0000" in fill and "[cc-" in fill
    assert len(b.store.ledger_fills("BTC")) == 1
    # Decision state by name, as Datasette and ad-hoc SQL read it.
    c = b.store.db
    spot, pos = c.execute("SELECT json_extract(state_json, '$.spot'), json_extract(state_json, '$.pos[0].name') "
                          "FROM decisions ORDER BY id DESC LIMIT 1").fetchone()
    assert spot > 0 and pos == name
    assert c.execute("SELECT spot FROM decision_state ORDER BY id DESC LIMIT 1").fetchone()[0] == spot

    await run_until_expiry(b, spec, spec.strike * 0.9)
    (otm,) = b.rec.texts("expiry")
    assert otm.startswith(f"Expired out of the money: {name}") and "Premium kept" in otm

    b.exchange.clock.advance(3600)
    await b.tick()  # opens the next call
    await until_filled(b)
    b.exchange.clock.advance(60)
    await b.tick()  # the ledger reads what the exchange shows now
    name2, spec2 = short(b)
    assert name2 != name
    await b.daily_summary()
    summary = b.rec.texts("daily_summary")[-1]
    assert "Day: option P&L" in summary and f"Open call {name2} -0.1, delta" in summary and "days left" in summary
    assert "cycle P&L" in summary and "premium" in summary

    # Deep in the money, no roll for a credit: told once, with the numbers and the choices.
    b.exchange.paper.set_index(spec2.strike * 1.25)
    b.exchange.clock.advance(2400)  # past the 30-minute hysteresis after the open
    await b.tick()
    b.exchange.clock.advance(600)
    await b.tick()
    deep = b.rec.texts("deep_itm")
    assert len(deep) == 1 and name2 in deep[0] and "hold to expiry and be called away in cash" in deep[0]
    assert "close now at a debit" in deep[0]

    await run_until_expiry(b, spec2, spec2.strike * 1.25)
    itm = b.rec.texts("expiry")[-1]
    assert itm.startswith(f"Expired in the money: {name2}") and "Cash settlement paid" in itm

    # The ledger agrees with the account to 1e-8, and says so in `chatops pnl --json`.
    out = io.StringIO()
    monkeypatch.setenv("DATABASE_PATH", b.settings.database_path)
    with redirect_stdout(out):
        assert cli.main(["pnl", "--json"]) == 0
    data = json.loads(out.getvalue())
    assert data["check"]["ok"] is True and abs(data["check"]["difference"]) <= 1e-8
    ends = [c["end"] for c in data["cycles"]]
    assert ends[:2] == ["expiry_otm", "expiry_itm"]
    assert data["settlement_cash"] < 0 and data["premium"] > 0 and data["fills"] >= 2
    assert abs(data["pnl_coin"] - data["equity_change"]) <= 1e-8

    png = tmp_path / "pnl.png"
    with redirect_stdout(io.StringIO()):
        assert cli.main(["pnl", "--since", "30d", "--png", str(png), "--chart", str(tmp_path / "c.png")]) == 0
    assert png.read_bytes().startswith(b"\x89PNG") and (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG")


async def test_status_describes_the_running_bot_not_the_cli(bot, monkeypatch):
    await bot.tick()
    out = io.StringIO()
    # The CLI is given other settings (rule brain default, conservative): status shows the bot's.
    monkeypatch.setenv("DATABASE_PATH", bot.settings.database_path)
    with redirect_stdout(out):
        assert cli.main(["status"]) == 0
    text = out.getvalue()
    assert "research profile" in text and "approvals auto" in text and "channels recorder" in text
    assert "running since" in text and "Last tick #" in text
    out = io.StringIO()
    monkeypatch.setenv("UNDERLYING", "ETH")
    with redirect_stdout(out):
        assert cli.main(["status"]) == 0
    eth = out.getvalue()
    assert "No bot has run on ETH" in eth and "Last tick" not in eth and "No tick yet" in eth


async def test_start_up_reconciles_the_ledger_with_the_exchange(tmp_path):
    from agent.ledger import Fill
    from chatops.store import Store

    first = make_bot(tmp_path, clock=SimClock(start_ms=T0_MS))
    first._channels = [Recorder()]
    await first.start()
    await first.tick()
    await first.stop()
    # A fill the exchange never made, written behind the bot's back.
    store = Store(first.settings.database_path)
    cursor = store.ledger_cursor("BTC")
    store.record_ledger("BTC", [Fill("FAKE-1", T0_MS + 60_000, "BTC-4DEC26-100000-C", "sell", 0.1, 0.01, 0.00003)],
                        [], cursor)
    store.close()
    rec = Recorder()
    again = make_bot(tmp_path, clock=SimClock(start_ms=T0_MS + 3_600_000))
    again._channels = [rec]
    await again.start()
    try:
        await again.tick()
        (told,) = [t for t in rec.texts("failure") if "Ledger and exchange disagree" in t]
        assert "BTC-4DEC26-100000-C: ledger -0.1, exchange +0" in told
        assert again.ledger.mismatches == ["BTC-4DEC26-100000-C: ledger -0.1, exchange +0"]
    finally:
        await again.stop()
