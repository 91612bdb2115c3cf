"""One LLM wiring for every entry point: `chatops tick`, `chatops run`, ask, why, what-if, shadow.

It owns the one client (one connection pool), the one daily token budget every LLM call counts
against (ticks, questions, what-ifs, why narratives: all rows of `llm_calls` in the last 24 h),
and the records of the calls it makes for questions. Once the budget is spent the rules decide,
questions get a clear "budget spent" reply, and the chat is told once per spell.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Sequence

from agent.config import Settings
from agent.models import Action, AgentState, Candidate

log = logging.getLogger(__name__)

Notify = Callable[[str, str], Awaitable[Any]]


def llm_wanted(settings: Settings) -> bool:
    """An LLM is configured for something (decisions, shadow or questions)."""
    return settings.llm_enabled or settings.effective_decision_mode != "rule"


class BudgetSpent(Exception):
    """The daily token budget is spent: no LLM call is made."""


class LLMWiring:
    def __init__(self, settings: Settings, store: Any, *, client: Any = None,
                 now: Callable[[], datetime] | None = None, notify: Notify | None = None) -> None:
        from .redact import configure

        configure(settings)  # the one redactor knows the API key: error texts echoing it are redacted
        self.settings = settings
        self.store = store
        self._client = client
        self._own_client = client is None
        self._now = now or (lambda: datetime.now(timezone.utc))
        self.notify = notify
        self._told = False  # the chat was told the budget is spent (once per spell)

    # --- what is on ----------------------------------------------------------------------------

    @property
    def on(self) -> bool:
        return llm_wanted(self.settings)

    @property
    def drives(self) -> bool:
        """The LLM decides ticks (llm) or decides beside the rules (shadow)."""
        return self.settings.effective_decision_mode in ("llm", "shadow")

    @property
    def client(self) -> Any:
        if self._client is None:
            from agent.llm import make_client

            self._client = make_client(self.settings)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._own_client and hasattr(self._client, "close"):
            await self._client.close()
        self._client = None

    # --- the one budget ---------------------------------------------------------------------------

    def budget_used(self) -> tuple[int, int]:
        """(tokens used in the last 24 h by every LLM call, the daily budget; 0 = no limit)."""
        used = self.store.llm_stats(self._now() - timedelta(days=1)).get("tokens", 0) or 0
        return int(used), self.settings.llm_daily_token_budget

    def budget_spent(self) -> str | None:
        """Why no LLM call may be made now, or None."""
        used, budget = self.budget_used()
        if budget and used >= budget:
            return f"LLM daily token budget spent ({used} of {budget} tokens)"
        return None

    async def check_budget(self) -> str | None:
        """budget_spent(), telling the chat the first time in a spell."""
        note = self.budget_spent()
        if note is None:
            self._told = False
            return None
        if not self._told:
            self._told = True
            if self.notify is not None:
                await self.notify("llm_fallback", f"{note}: the rules decide and questions wait until it refills.")
        return note

    # --- ticks ----------------------------------------------------------------------------------------

    async def tick_brain(self) -> Callable[[AgentState, Settings], Awaitable[tuple[Action, dict[str, Any]]]] | None:
        """The brain `agent.tick.run_tick` takes: None when the rules decide (rule mode, budget spent)."""
        if not self.drives:
            return None
        if await self.check_budget() is not None:
            return None
        return self.brain

    async def brain(self, state: AgentState, settings: Settings) -> tuple[Action, dict[str, Any]]:
        from agent.llm import llm_brain

        return await llm_brain(state, settings, client=self.client)

    # --- questions (recorded here, mode "ask") ----------------------------------------------------

    async def chat(self, system: str, user: str, *, max_tokens: int = 400):
        """An `LLMTextOutcome`; raises BudgetSpent instead of calling when the budget is spent."""
        from agent.llm import llm_chat

        await self._gate()
        out = await llm_chat(self.settings, system, user, client=self.client, max_tokens=max_tokens)
        self.record(out.record)
        return out

    async def whatif_overrides(self, question: str):
        from agent.llm import llm_whatif_overrides

        await self._gate()
        overrides, record = await llm_whatif_overrides(question, self.settings, client=self.client)
        self.record(record)
        return overrides, record

    async def decide(self, state: AgentState, candidates: Sequence[Candidate]):
        from agent.llm import llm_decide

        await self._gate()
        out = await llm_decide(state, candidates, self.settings, client=self.client)
        self.record(out.record)
        return out

    async def _gate(self) -> None:
        note = await self.check_budget()
        if note is not None:
            raise BudgetSpent(note)

    def record(self, record: Any, mode: str = "ask") -> None:
        data = record.to_dict() if hasattr(record, "to_dict") else dict(record)
        data["mode"] = mode
        try:
            self.store.record_llm_call(decision_id=None, **data)
        except Exception:
            log.exception("could not record an LLM call")
