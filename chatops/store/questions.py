"""Questions, answers and LLM calls."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any



from .db import Database
from .common import LLM_MODES, _LLM_KEYS, _first, _ts_param, dumps, iso, parse_ref



class QuestionsMixin:
    def record_question(self, user: str, channel: str, kind: str, text: str, ref: int | str | None = None, *,
                        proposal_id: int | None = None, decision_id: int | None = None) -> int:
        """A question asked in chat (kind why|ask|whatif). `ref` is what it refers to as typed: a
        proposal (12, "12", "#12", "cc-12") or a decision ("d34"); kept as text and parsed into ids."""
        ref_pid, ref_did = parse_ref(ref)
        with self.write() as conn:
            return self._insert(conn, "questions", {
                "ts": iso(self._now()), "user": str(user), "channel": channel, "kind": kind, "text": text,
                "ref": None if ref is None or ref == "" else str(ref),
                "proposal_id": proposal_id if proposal_id is not None else ref_pid,
                "decision_id": decision_id if decision_id is not None else ref_did})

    def record_answer(self, question_id: int, text: str, source: str) -> int:
        """The answer given (source db|llm|rules)."""
        with self.write() as conn:
            return self._insert(conn, "answers", {"question_id": question_id, "ts": iso(self._now()), "text": text,
                                                  "source": source})

    # --- LLM calls ------------------------------------------------------------------------

    def record_llm_call(self, *, mode: str, valid: bool, model: str | None = None, prompt: str | None = None,
                        raw_response: str | None = None, parsed: Any = None, error: str | None = None,
                        tokens_in: int | None = None, tokens_out: int | None = None, latency_ms: float | None = None,
                        cost_usd: float | None = None, decision_id: int | None = None, ts: datetime | None = None,
                        **extra: Any) -> int:
        """One LLM call (mode drive|shadow|ask); unknown keyword fields go to extra_json."""
        with self.write() as conn:
            return self._insert_llm_call(conn, mode=mode, valid=valid, model=model, prompt=prompt,
                                         raw_response=raw_response, parsed=parsed, error=error, tokens_in=tokens_in,
                                         tokens_out=tokens_out, latency_ms=latency_ms, cost_usd=cost_usd,
                                         decision_id=decision_id, ts=ts, **extra)

    def _insert_llm_call(self, conn: Database, *, default_ts: str | None = None, **rec: Any) -> int:
        parsed = _first(rec, "parsed", "parsed_json")
        if isinstance(parsed, str):
            try:
                parsed = json.loads(parsed)
            except ValueError:
                pass
        ts = rec.get("ts")
        mode = rec.get("mode") or "drive"
        extra = {k: v for k, v in rec.items() if k not in _LLM_KEYS and v is not None and v not in ((), [], {})}
        if mode not in LLM_MODES:  # keep the caller's word, but never lose the record over it
            extra["mode"], mode = mode, "drive"
        tokens_in = _first(rec, "tokens_in", "prompt_tokens")
        tokens_out = _first(rec, "tokens_out", "completion_tokens")
        return self._insert(conn, "llm_calls", {
            "ts": _ts_param(ts) or default_ts or iso(self._now()), "decision_id": rec.get("decision_id"),
            "mode": mode, "model": rec.get("model"), "prompt": rec.get("prompt"),
            "raw_response": rec.get("raw_response"), "parsed_json": None if parsed is None else dumps(parsed),
            "valid": int(bool(rec.get("valid"))), "error": rec.get("error"), "tokens_in": tokens_in,
            "tokens_out": tokens_out, "latency_ms": rec.get("latency_ms"), "cost_usd": rec.get("cost_usd"),
            "reasoning_tokens": rec.get("reasoning_tokens"), "cached_tokens": rec.get("cached_tokens"),
            "extra_json": dumps(extra) if extra else None})

    def llm_stats(self, since: datetime | None = None) -> dict[str, Any]:
        """LLM use since a time: calls, fallbacks (= invalid: calls whose answer was not used, so the
        rules decided), errors, tokens_in, tokens_out, tokens (both), reasoning_tokens and cached_tokens
        (parts of tokens_out and tokens_in), cost_usd, avg_latency_ms,
        by_mode {mode: calls}, fallback_decisions (decisions with source llm_fallback)."""
        cutoff = _ts_param(since) or ""
        r = self._row(
            "SELECT COUNT(*) AS calls, COALESCE(SUM(CASE WHEN valid = 0 THEN 1 ELSE 0 END), 0) AS invalid, "
            "COALESCE(SUM(CASE WHEN error IS NOT NULL THEN 1 ELSE 0 END), 0) AS errors, "
            "COALESCE(SUM(CASE WHEN valid = 0 THEN 1 ELSE 0 END), 0) AS fallbacks, "
            "COALESCE(SUM(tokens_in), 0) AS tokens_in, COALESCE(SUM(tokens_out), 0) AS tokens_out, "
            "COALESCE(SUM(cost_usd), 0.0) AS cost_usd, AVG(latency_ms) AS avg_latency_ms, "
            "COALESCE(SUM(reasoning_tokens), 0) AS reasoning_tokens, COALESCE(SUM(cached_tokens), 0) AS cached_tokens "
            "FROM llm_calls WHERE ts >= ?", [cutoff]) or {}
        out = dict(r)
        out["tokens"] = out["tokens_in"] + out["tokens_out"]
        out["by_mode"] = {x["mode"]: x["n"] for x in self._rows(
            "SELECT mode, COUNT(*) AS n FROM llm_calls WHERE ts >= ? GROUP BY mode", [cutoff])}
        out["fallback_decisions"] = self._scalar(
            "SELECT COUNT(*) FROM decisions WHERE ts >= ? AND decision_source = 'llm_fallback'", [cutoff])
        return out

    # --- chat messages and the outbox -----------------------------------------------------
