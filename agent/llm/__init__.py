"""The LLM brain: a model picks one of four actions among ids the code prepared, nothing more.

The model only ever names an action, a candidate id ("c3") and a position id ("p1"), plus a short
reasoning. Symbols come from those ids, the size from DEFAULT_ORDER_SIZE, the prices from the book:
the model writes none of them. Its answer is asked for as a strict JSON schema and validated
locally anyway, so a server that ignores the schema is still safe. Anything malformed, invalid,
late or failing becomes DO_NOTHING with decision_source "llm_fallback" and the reason, never an
exception.

By job: `caps` (what a model accepts, learnt from its family and its 400s; prices), `call` (the
one completion call and its record), `parse` (JSON out of text), `prompt` (messages and schema),
`validate` (answer -> Action), `whatif` (question -> overrides), `brain` (the public calls).
"""

from .brain import DECIDE_MAX_TOKENS, choose_action_with_llm, llm_brain, llm_chat, llm_decide
from .call import make_client
from .caps import is_reasoning_model
from .parse import clean_text, extract_json
from .prompt import (
    MAX_PROMPT_CANDIDATES, build_prompt, decision_schema, prompt_candidates, prompt_positions, system_prompt,
    user_prompt,
)
from .records import LLMCallRecord, LLMOutcome, LLMTextOutcome, estimate_tokens, messages_text
from .validate import fallback_action, validate_llm_choice
from .whatif import WHATIF_KEYS, llm_whatif_overrides, validate_whatif, whatif_command

__all__ = [
    "DECIDE_MAX_TOKENS", "LLMCallRecord", "LLMOutcome", "LLMTextOutcome", "MAX_PROMPT_CANDIDATES", "WHATIF_KEYS",
    "build_prompt", "choose_action_with_llm", "clean_text", "decision_schema", "estimate_tokens", "extract_json",
    "fallback_action", "is_reasoning_model", "llm_brain", "llm_chat", "llm_decide", "llm_whatif_overrides",
    "make_client", "messages_text", "prompt_candidates", "prompt_positions", "system_prompt", "user_prompt",
    "validate_llm_choice", "validate_whatif", "whatif_command",
]
