"""The one redactor every stored, exported, sent and logged string passes through.

It knows every configured secret value (`configure(settings)`: every SecretStr setting, and the
password of a DATABASE_URL) and the shapes of well-known tokens even when they are not ours:
Telegram bot tokens, Slack `xox?-` and `xapp-` tokens, `sk-` API keys, Bearer tokens, the
password in a `scheme://user:password@host` URL and Deribit `client_secret=` values.

Where it runs: the store's write boundary (every string parameter of every write, so every
module inherits it), the chat delivery layer (every message before it is queued), exports, and a
logging filter that redacts a record's message and arguments BEFORE they are formatted (a secret
holding a quote, a backslash or a newline is replaced whole, before JSON escaping or line
folding could split it).
"""

from __future__ import annotations

import html
import json
import logging
import re
import threading
from typing import Any, Iterable

REDACTED = "***"

# Shapes of well-known secrets. Group 1, when present, is kept (a prefix such as "Bearer ").
PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"xox[a-z]-[0-9A-Za-z-]{8,}"),
    re.compile(r"xapp-[0-9A-Za-z-]{8,}"),
    re.compile(r"sk-[A-Za-z0-9_-]{16,}"),
    re.compile(r"(?<!\d)\d{6,12}:[A-Za-z0-9_-]{30,}"),  # Telegram bot token, also inside /bot<token>/ URLs
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s@/]+(?=@)"),  # user:PASSWORD@host in a URL
    re.compile(r"(?i)(client_secret[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,}]+"),  # Deribit auth parameters
)
# A literal each pattern cannot match without (looked for in the lower-cased text): most strings
# hold none of them, and a `str in` test costs a fraction of a regex scan of a decision's JSON.
_NEEDS: tuple[str, ...] = ("xox", "xapp-", "sk-", ":", "bearer", "://", "client_secret")

_MIN_SECRET = 4  # shorter "secrets" would redact ordinary text


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self.secrets: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Know more secret values (longest first, so a secret containing another goes whole)."""
        with self._lock:
            new = {s for s in secrets if s and len(s) >= _MIN_SECRET}
            # Also as it appears inside JSON text or a repr (a secret holding a quote, a backslash or
            # a newline is escaped there), and as chat HTML shows it (the delivery layer sees rendered text).
            new |= {j for s in new for j in (json.dumps(s, ensure_ascii=False)[1:-1], json.dumps(s)[1:-1],
                                              repr(s)[1:-1], html.escape(s), html.escape(s, quote=False)) if j != s}
            known = set(self.secrets) | new
            self.secrets = tuple(sorted(known, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        if not text:
            return text
        for s in self.secrets:
            if s in text:
                text = text.replace(s, REDACTED)
        lower = text.lower()
        for p, need in zip(PATTERNS, _NEEDS):
            if need in lower:
                text = p.sub(_keep_prefix, text)
        return text

    def value(self, v: Any) -> Any:
        """Redact a string, or the strings inside a list/tuple/dict (other values unchanged)."""
        if isinstance(v, str):
            return self(v)
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(self.value(x) for x in v)
        return v


def _keep_prefix(m: re.Match[str]) -> str:
    return (m.group(1) or "" if m.re.groups else "") + REDACTED


# The process's redactor: shapes from the start, secret values once configure() has run.
REDACTOR = Redactor()


def redact(text: str) -> str:
    return REDACTOR(text)


def redact_value(v: Any) -> Any:
    return REDACTOR.value(v)


def secret_values(settings: Any) -> list[str]:
    """Every configured secret value of `settings` (SecretStr fields, the DATABASE_URL password)."""
    from agent.config import SECRET_FIELDS

    out = [v for name in SECRET_FIELDS if (v := settings.secret(name))]
    url = getattr(settings, "database_url", None)
    if url:
        m = re.match(r"[a-z][a-z0-9+.-]*://[^:/@]+:([^@]+)@", str(url), re.I)
        if m:
            out.append(m.group(1))
    return out


def configure(settings: Any) -> Redactor:
    """Teach the process's redactor the secrets of `settings` (idempotent; call at start-up)."""
    REDACTOR.add(secret_values(settings))
    return REDACTOR


class RedactingFilter(logging.Filter):
    """Redacts a record's message and args before any formatter sees them (attach to handlers)."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or REDACTOR

    def filter(self, record: logging.LogRecord) -> bool:
        r = self.redactor
        try:
            msg = record.getMessage()  # the args applied, then redacted as one string
        except Exception:  # a bad format string: keep the raw parts, redacted
            msg = f"{record.msg} {record.args}"
        record.msg, record.args = r(msg), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = r(record.exc_text)
        record.exc_info = None if record.exc_text else record.exc_info
        return True
