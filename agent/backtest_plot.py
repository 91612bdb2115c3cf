"""`--png`: equity against HODL, and the short strikes over the spot (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from .backtest import BacktestRun
from .clock import to_datetime


def draw(run: BacktestRun, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    cur = run.spec.currency
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    first = run.books[0]
    times = [to_datetime(s.t_ms) for s in first.samples]
    hodl = [first.start_equity * s.spot for s in first.samples]
    top.plot(times, hodl, color="0.5", lw=1.2, label=f"HODL {first.start_equity:g} {cur}")
    for b in run.books:
        top.plot([to_datetime(s.t_ms) for s in b.samples], [s.equity * s.spot for s in b.samples], lw=1.2,
                 label=f"covered calls ({b.name})")
    top.set_ylabel("account value, USD")
    top.set_title(f"Backtest {run.spec.market}, {cur}, brain {run.spec.brain}, seed {run.spec.seed}")
    top.legend(loc="best")
    top.grid(alpha=0.3)
    bottom.plot(times, [s.spot for s in first.samples], color="black", lw=1.0, label=f"{cur} index")
    xs, ys = [], []
    for s in first.samples:
        for k in s.shorts:
            xs.append(to_datetime(s.t_ms))
            ys.append(k)
    if xs:
        bottom.scatter(xs, ys, s=2, color="tab:red", label="short call strikes")
    bottom.set_ylabel("USD")
    bottom.legend(loc="best")
    bottom.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Software": None})  # no version stamp: the same run, the same file
    plt.close(fig)
    return out
