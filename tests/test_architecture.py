"""The arrows of the design: agent/ never imports chatops/; policy and risk stay pure."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out.add(base)
    return out


def test_agent_never_imports_chatops():
    offenders = {str(p.relative_to(ROOT)): sorted(i for i in imports(p) if i.startswith("chatops"))
                 for p in (ROOT / "agent").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_policy_and_risk_are_pure():
    allowed = {"__future__", "math", "datetime", "collections", ".config", ".models"}
    for name in ("policy.py", "risk.py"):
        assert imports(ROOT / "agent" / name) <= allowed, name


def test_the_core_never_imports_an_adapter():
    core = [ROOT / "chatops" / n for n in ("core.py", "approvals.py", "engine.py", "ask.py", "render.py",
                                            "scheduler.py")]
    core += sorted((ROOT / "chatops" / "store").glob("*.py"))
    for path in core:
        bad = [i for i in imports(path) if "telegram" in i or "slack" in i or "console" in i]
        assert bad == [], path.name


def test_the_paper_exchange_does_not_import_its_front_end():
    # paper_server serves a PaperExchange; the exchange itself never imports its HTTP front end.
    for path in (ROOT / "agent" / "deribit").glob("paper*.py"):
        if path.name != "paper_server.py":
            assert not any("paper_server" in i for i in imports(path)), path.name
