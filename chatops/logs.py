"""Logging: one line per event on stderr, text or JSON lines, secrets redacted.

Redaction happens in the handler, after formatting, so no logger anywhere (ours, httpx's, the
chat libraries') can print a token: the Telegram token, for one, sits in every Bot API URL.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from agent.config import REDACTED, SECRET_FIELDS, Settings

# Shapes of well-known secrets, redacted even when they are not ours.
_PATTERNS = [
    re.compile(r"xox[abpr]-[0-9A-Za-z-]{8,}"),
    re.compile(r"xapp-[0-9A-Za-z-]{8,}"),
    re.compile(r"sk-[A-Za-z0-9_-]{16,}"),
    re.compile(r"\b\d{6,12}:[A-Za-z0-9_-]{30,}\b"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{12,}"),
    re.compile(r"(?i)((?:client_secret|refresh_token|access_token)=)[^&\s\"']+"),  # in a logged URL
]


class Redactor:
    def __init__(self, secrets: list[str]) -> None:
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, REDACTED)
        for p in _PATTERNS:
            text = p.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
        return text


def secret_values(settings: Settings) -> list[str]:
    return [v for name in SECRET_FIELDS if (v := settings.secret(name))]


class _Formatter(logging.Formatter):
    def __init__(self, json_lines: bool, redact: Redactor) -> None:
        super().__init__()
        self.json_lines = json_lines
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        ts = datetime.fromtimestamp(record.created, tz=timezone.utc)
        if self.json_lines:
            out = json.dumps({"ts": ts.isoformat(timespec="milliseconds"), "level": record.levelname,
                              "logger": record.name, "msg": msg}, ensure_ascii=False)
        else:
            out = f"{ts:%Y-%m-%dT%H:%M:%S}Z {record.levelname:<7} {record.name}: {msg.replace(chr(10), ' | ')}"
        return self.redact(out)


NOISY = ("httpx", "httpx2", "httpcore", "httpcore2", "apscheduler", "telegram", "slack_bolt", "slack_sdk", "aiohttp.access",
         "openai")
LIBRARIES = frozenset(n.split(".", 1)[0] for n in NOISY) | {"aiohttp", "asyncio", "urllib3", "websockets", "hpack"}


def _ours_or_warning(record: logging.LogRecord) -> bool:
    """Libraries' INFO lines (`httpx2: HTTP Request: POST ...`) never reach stderr."""
    return record.levelno >= logging.WARNING or record.name.split(".", 1)[0] not in LIBRARIES


def log_file_path(settings: Settings, terminal_chat: bool) -> str | None:
    """LOG_FILE; with the terminal channel on, chatops.log beside the database by default."""
    if settings.log_file:
        return settings.log_file
    return str(Path(settings.database_path).parent / "chatops.log") if terminal_chat else None


def setup_logging(settings: Settings, stream=None, *, terminal_chat: bool = False) -> Redactor:
    """Log to stderr; with the terminal channel on (`terminal_chat`) the chat owns the terminal,
    so stderr gets warnings only and the whole log goes to the log file."""
    redact = Redactor(secret_values(settings))
    fmt = _Formatter(settings.log_format == "json", redact)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(fmt)
    handler.addFilter(_ours_or_warning)
    handlers: list[logging.Handler] = [handler]
    path = log_file_path(settings, terminal_chat)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(path, encoding="utf-8")
        fh.setFormatter(fmt)
        handlers.append(fh)
        if terminal_chat:
            handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(settings.log_level)
    # Libraries that log every request at INFO: into the log file when there is one, else warnings only.
    for noisy in NOISY:
        chatty = noisy == "apscheduler"  # a line per job run, every 2 s: warnings only, even in the file
        logging.getLogger(noisy).setLevel(max(logging.INFO if path and not chatty else logging.WARNING, root.level))
    return redact
