"""`chatops audit shadow`: the rules against the LLM, decided side by side on the same states.

Answers: how often do they agree, how do their actions differ (a confusion matrix), when both
open a call do they pick different strikes or expiries, does the LLM keep picking the same call,
and how often did it fall back.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from statistics import mean, median
from typing import Any

from agent.models import ActionType
from agent.state import parse_option_name

from .render import table

ACTIONS = [a.value for a in ActionType]
SHORT = {"DO_NOTHING": "NOTHING", "OPEN_COVERED_CALL": "OPEN", "ROLL_COVERED_CALL": "ROLL", "CLOSE_COVERED_CALL": "CLOSE"}


@dataclass
class ShadowReport:
    decisions: int = 0
    agree: int = 0
    same_action: int = 0
    fallbacks: int = 0
    matrix: dict[str, dict[str, int]] = field(default_factory=dict)  # rules -> llm -> n
    both_open: int = 0
    strike_diffs: list[float] = field(default_factory=list)  # llm strike - rules strike
    dte_diffs: list[float] = field(default_factory=list)  # llm dte - rules dte
    llm_symbols: Counter = field(default_factory=Counter)
    rule_symbols: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        def stats(xs: list[float]) -> dict[str, float] | None:
            return {"mean": round(mean(xs), 2), "median": round(median(xs), 2), "min": min(xs), "max": max(xs),
                    "same": sum(1 for x in xs if abs(x) < 1e-9)} if xs else None

        return {
            "decisions": self.decisions,
            "agreement_rate": round(self.agree / self.decisions, 4) if self.decisions else None,
            "same_action_rate": round(self.same_action / self.decisions, 4) if self.decisions else None,
            "llm_fallback_rate": round(self.fallbacks / self.decisions, 4) if self.decisions else None,
            "confusion_matrix": self.matrix,
            "both_open": self.both_open,
            "strike_diff_llm_minus_rules": stats(self.strike_diffs),
            "dte_diff_llm_minus_rules": stats(self.dte_diffs),
            "llm_top_symbols": self.llm_symbols.most_common(5),
            "rules_top_symbols": self.rule_symbols.most_common(5),
        }

    def as_text(self) -> str:
        if not self.decisions:
            return "No shadow decisions yet: run with DECISION_MODE=shadow (and an LLM) first."
        d = self.as_dict()
        lines = [
            f"Shadow mode: {self.decisions} decisions where the rules drove and the LLM decided beside them",
            f"  agreement (same action and instrument): {d['agreement_rate']:.1%}",
            f"  same action type:                       {d['same_action_rate']:.1%}",
            f"  LLM fell back (invalid/failed):         {d['llm_fallback_rate']:.1%} ({self.fallbacks})",
            "",
            "Confusion matrix (rows: rules, columns: LLM):",
        ]
        rows = [[SHORT[r]] + [self.matrix.get(r, {}).get(c, 0) for c in ACTIONS] for r in ACTIONS]
        lines.append(table(rows, ["rules \\ llm"] + [SHORT[c] for c in ACTIONS]))
        lines.append("")
        if self.both_open:
            s, t = d["strike_diff_llm_minus_rules"], d["dte_diff_llm_minus_rules"]
            lines.append(f"When both opened ({self.both_open}): same strike {s['same']} times; LLM strike - rules strike: "
                         f"mean {s['mean']:+,.0f}, median {s['median']:+,.0f}, range {s['min']:+,.0f}..{s['max']:+,.0f}")
            lines.append(f"  LLM DTE - rules DTE: mean {t['mean']:+.2f}, median {t['median']:+.2f} days, same expiry {t['same']} times")
        else:
            lines.append("The two never both opened a call.")
        if self.llm_symbols:
            top, n = self.llm_symbols.most_common(1)[0]
            total = sum(self.llm_symbols.values())
            lines.append(f"LLM's calls: {len(self.llm_symbols)} distinct; most picked {top} ({n} of {total}, {n / total:.0%})")
        if self.rule_symbols:
            top, n = self.rule_symbols.most_common(1)[0]
            total = sum(self.rule_symbols.values())
            lines.append(f"Rules' calls: {len(self.rule_symbols)} distinct; most picked {top} ({n} of {total}, {n / total:.0%})")
        return "\n".join(lines)


def _dte(symbol: str, ts: str) -> float:
    exp = parse_option_name(symbol)["expiration_timestamp"]
    return (exp - datetime.fromisoformat(ts).timestamp() * 1000) / 86_400_000


def shadow_report(store, since: datetime | None = None) -> ShadowReport:
    rep = ShadowReport()
    for row in store.iter_rows("decisions", since=since):
        if not row.get("shadow_json"):
            continue
        d = {"ts": row["ts"]}
        rules, llm = json.loads(row["proposed_json"] or "null"), json.loads(row["shadow_json"])
        if not rules or not llm:
            continue
        rep.decisions += 1
        ra, la = rules["action"], llm["action"]
        rep.matrix.setdefault(ra, {}).setdefault(la, 0)
        rep.matrix[ra][la] += 1
        if llm.get("decision_source") == "llm_fallback":
            rep.fallbacks += 1
        if ra == la:
            rep.same_action += 1
            if rules.get("symbol") == llm.get("symbol") and rules.get("roll_from") == llm.get("roll_from"):
                rep.agree += 1
        if la in ("OPEN_COVERED_CALL", "ROLL_COVERED_CALL") and llm.get("symbol"):
            rep.llm_symbols[llm["symbol"]] += 1
        if ra in ("OPEN_COVERED_CALL", "ROLL_COVERED_CALL") and rules.get("symbol"):
            rep.rule_symbols[rules["symbol"]] += 1
        if ra == la == "OPEN_COVERED_CALL" and rules.get("symbol") and llm.get("symbol"):
            rep.both_open += 1
            rs, ls = parse_option_name(rules["symbol"]), parse_option_name(llm["symbol"])
            rep.strike_diffs.append(ls["strike"] - rs["strike"])
            rep.dte_diffs.append(round(_dte(llm["symbol"], d["ts"]) - _dte(rules["symbol"], d["ts"]), 4))
    return rep
