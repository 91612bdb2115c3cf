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

from agent.config import REDACTED, SECRET_FIELDS, Settings

# Shapes of well-known secrets, redacted even when they are not ours.
_PATTERNS = [
    re.compile(r"xox[abpr]-[0-9A-Za-z-]{8,}"),
    re.compile(r"xapp-[0-9A-Za-z-]{8,}"),
    re.compile(r"sk-[A-Za-z0-9_-]{16,}"),
    re.compile(r"\b\d{6,12}:[A-Za-z0-9_-]{30,}\b"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{12,}"),
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


def setup_logging(settings: Settings, stream=None) -> Redactor:
    redact = Redactor(secret_values(settings))
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(settings.log_format == "json", redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # Libraries that log every request at INFO: keep them to warnings.
    for noisy in ("httpx", "httpcore", "apscheduler", "telegram", "slack_bolt", "slack_sdk", "aiohttp.access", "openai"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return redact
