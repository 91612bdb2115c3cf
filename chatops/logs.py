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


def setup_logging(settings: Settings, stream=None) -> Redactor:
    redact = _redact.configure(settings)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_redact.RedactingFilter(redact))
    handler.setFormatter(_Formatter(settings.log_format == "json", redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # Libraries that log every request at INFO: keep them to warnings.
    for noisy in ("httpx", "httpcore", "apscheduler", "telegram", "slack_bolt", "slack_sdk", "aiohttp.access", "openai"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return redact
