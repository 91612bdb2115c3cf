"""Decision rows: one per tick, with the state, the proposal and the risk check."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any


from agent.models import Action, ActionType, Decision, ExecutionResult, RiskResult

from .db import Database
from .common import _decision_dict, iso, parse_ts, serialize_decision
from .base import _order



class DecisionsMixin:
    def record_decision(self, decision: Decision) -> int:
        """Store one tick (and its LLM calls) in one transaction; returns the decision id.
        Raises ValueError if the config snapshot holds an unredacted secret."""
        known = self.__dict__.get("_last_config")  # (config_json, id) of the last committed decision
        row = serialize_decision(decision, checked_config=known[0] if known else None)
        config_json = row.pop("config_json")
        with self.write() as conn:
            top = self._depth == 1  # not inside a caller's transaction (which could still roll back)
            if known is not None and config_json == known[0]:
                row["config_id"] = known[1]  # the same settings as the last tick: the same snapshot row
            else:
                row["config_id"] = self._config_id(conn, config_json)
            decision_id = self._insert(conn, "decisions", row)
            mode_default = "shadow" if decision.shadow_action is not None else "drive"
            for rec in decision.llm_calls:
                fields = {"mode": mode_default, **rec, "decision_id": decision_id}
                fields.pop("default_ts", None)
                self._insert_llm_call(conn, default_ts=row["ts"], **fields)
        if top and config_json is not None and row["config_id"] is not None:
            self._last_config = (config_json, row["config_id"])  # committed: safe to reuse
        return decision_id

    def _config_id(self, conn: Database, config_json: str | None) -> int | None:
        if config_json is None:
            return None
        digest = hashlib.sha256(config_json.encode()).hexdigest()
        found = conn.execute("SELECT id FROM config_snapshots WHERE hash = ?", [digest]).fetchone()
        if found:
            return found[0]
        return self._insert(conn, "config_snapshots", {"hash": digest, "config_json": config_json,
                                                        "first_seen": iso(self._now())})

    def get_decision(self, decision_id: int) -> dict[str, Any] | None:
        """A decision with its JSON parsed (state, proposed, risk, final, execution, shadow, timings, config)."""
        r = self._row("SELECT d.*, c.config_json FROM decisions d LEFT JOIN config_snapshots c ON c.id = d.config_id "
                      "WHERE d.id = ?", [decision_id])
        return None if r is None else _decision_dict(r)

    def decision_model(self, decision_id: int) -> Decision | None:
        """The stored decision as an `agent.models.Decision` (llm_calls stay in their own table)."""
        d = self.get_decision(decision_id)
        if d is None:
            return None
        return Decision(
            timestamp=parse_ts(d["ts"]), underlying=d["underlying"], state=d["state"],
            proposed_action=Action.model_validate(d["proposed"]), risk_check=RiskResult.model_validate(d["risk"]),
            final_action=Action.model_validate(d["final"]),
            execution=ExecutionResult.model_validate(d["execution"]) if d["execution"] else None,
            config_snapshot=d["config"] or {}, decision_source=d["decision_source"],
            shadow_action=Action.model_validate(d["shadow"]) if d["shadow"] else None,
            timings_ms=d["timings"] or {}, requests=d["requests"], credits=d["credits"],
        )

    def list_decisions(self, since: datetime | None = None, until: datetime | None = None,
                       action: str | ActionType | None = None, limit: int = 100, order: str = "desc",
                       underlying: str | None = None, full: bool = True) -> list[dict[str, Any]]:
        """Decisions by time (newest first by default). Each dict has the scalar columns, `reasoning`
        (of the final action) and, with full=True, the JSON parsed (see get_decision)."""
        where, params = self._time_filter("d.ts", since, until)
        if action is not None:
            where.append("d.final_action = ?")
            params.append(action.value if isinstance(action, ActionType) else action)
        if underlying is not None:
            where.append("d.underlying = ?")
            params.append(underlying)
        cols = "d.*, c.config_json" if full else (
            "d.id, d.ts, d.underlying, d.decision_source, d.proposed_action, d.final_action, d.final_symbol, "
            "d.risk_allowed, d.requests, d.credits")
        join = "LEFT JOIN config_snapshots c ON c.id = d.config_id" if full else ""
        o = _order(order)
        reasoning = self.db.json_text("COALESCE(d.final_json, d.proposed_json)", "reasoning")
        sql = (f"SELECT {cols}, {reasoning} AS reasoning "
               f"FROM decisions d {join} {self._where(where)} ORDER BY d.ts {o}, d.id {o} LIMIT ?")
        return [_decision_dict(r, full) for r in self._rows(sql, params + [limit])]

    def last_decision(self, underlying: str | None = None) -> dict[str, Any] | None:
        rows = self.list_decisions(limit=1, underlying=underlying)
        return rows[0] if rows else None

    def last_tick_at(self) -> datetime | None:
        return parse_ts(self._scalar("SELECT MAX(ts) FROM decisions"))

    # --- proposals and the state machine --------------------------------------------------
