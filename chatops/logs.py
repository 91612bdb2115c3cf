"""Logging: one line per event on stderr, text or JSON lines, secrets redacted.

Redaction happens in the handler, so no logger anywhere (ours, httpx's, the chat libraries') can
print a token (the Telegram token, for one, sits in every Bot API URL): a filter redacts the
record's message with its arguments applied BEFORE formatting, so a secret holding a quote, a
backslash or a newline is replaced whole before JSON escaping or line folding could split it; the
formatted line is redacted once more for what the formatter itself adds.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

from agent.config import Settings

from . import redact as _redact

Redactor = _redact.Redactor  # the one redactor lives in chatops.redact


def secret_values(settings: Settings) -> list[str]:
    return _redact.secret_values(settings)


class _Formatter(logging.Formatter):
    def __init__(self, json_lines: bool, redact: Redactor) -> None:
        super().__init__()
        self.json_lines = json_lines
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        exc = record.exc_text or (self.formatException(record.exc_info) if record.exc_info else "")
        if exc:
            msg += " | " + exc.replace("\n", " | ")
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
    redact = _redact.configure(settings)
    fmt = _Formatter(settings.log_format == "json", redact)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_redact.RedactingFilter(redact))
    handler.setFormatter(fmt)
    handler.addFilter(_ours_or_warning)
    handlers: list[logging.Handler] = [handler]
    path = log_file_path(settings, terminal_chat)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(path, encoding="utf-8")
        fh.addFilter(_redact.RedactingFilter(redact))
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
