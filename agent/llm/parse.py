"""JSON out of a model's answer, in linear time, with bounded size and nesting; one-line texts.

A hostile or broken answer (100,000 `[`, 20,000 `{`, an unclosed string) ends in a ValueError
with a reason, never a RecursionError and never a scan that restarts at every brace.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any, Iterator

MAX_ANSWER_CHARS = 16_000  # a decision is a few hundred characters; more is not an answer
MAX_DEPTH = 20  # our answers are flat objects; json's own recursion limit is far away
MAX_RESTARTS = 16  # unclosed objects: how many later '{' are still tried (bounds the work to ~16 passes)
REASONING_MAX_CHARS = 500


def extract_json(text: str) -> Any:
    """The JSON value in a model's answer: the whole text, a ```json fenced block, or the first
    balanced {...} that parses. Raises ValueError (with the reason) when there is none."""
    if len(text) > MAX_ANSWER_CHARS:
        raise ValueError(f"answer too long ({len(text):,} characters, limit {MAX_ANSWER_CHARS:,})")
    s = text.strip()
    deep = False
    for chunk in _whole_then_fences(s):
        try:
            return loads_bounded(chunk)
        except _TooDeep:
            deep = True
        except ValueError:
            pass
    for start, end in _objects(s):
        if end is None:
            deep = True
            continue
        try:
            return json.loads(s[start : end + 1])  # depth already bounded by the scan
        except ValueError:
            continue
    raise ValueError(f"no JSON object in the answer{f' (nested deeper than {MAX_DEPTH} levels)' if deep else ''}")


class _TooDeep(ValueError):
    pass


def loads_bounded(text: str) -> Any:
    """json.loads, after a linear check that nothing nests deeper than MAX_DEPTH."""
    depth, in_str, esc = 0, False, False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise _TooDeep(f"nested deeper than {MAX_DEPTH} levels")
        elif ch in "]}":
            depth -= 1
    return json.loads(text)


def _whole_then_fences(s: str) -> Iterator[str]:
    yield s
    i = 0
    while True:
        open_at = s.find("```", i)
        if open_at < 0:
            return
        body_at = s.find("\n", open_at + 3)  # skip the info string ("json")
        close_at = s.find("```", open_at + 3)
        if close_at < 0:
            return
        if body_at < 0 or body_at > close_at:
            body_at = open_at + 3
        block = s[body_at:close_at].strip()
        if block.lower().startswith("json"):
            block = block[4:].strip()
        yield block
        i = close_at + 3


def _objects(s: str) -> Iterator[tuple[int, int | None]]:
    """(start, end) of each balanced top-level {...} in order; end None for one nested too deep.

    One left-to-right scan: after a closed object the next search starts past it; after an
    unclosed one it starts one character later, at most MAX_RESTARTS times.
    """
    n, i, restarts = len(s), 0, 0
    while i < n:
        start = s.find("{", i)
        if start < 0:
            return
        depth, in_str, esc, j = 0, False, False, start
        end: int | None = None
        while j < n:
            ch = s[j]
            if in_str:
                if esc:
                    esc = False
                elif ch == "\\":
                    esc = True
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
            elif ch in "{[":
                depth += 1
                if depth > MAX_DEPTH:
                    break
            elif ch in "}]":
                depth -= 1
                if depth == 0:
                    end = j
                    break
            j += 1
        if end is not None:
            yield start, end
            i = end + 1
        elif j < n:  # too deep: skip what was scanned
            yield start, None
            i = j + 1
        else:  # unclosed up to the end: a later '{' may still open a whole object
            restarts += 1
            if restarts > MAX_RESTARTS:
                return
            i = start + 1


def clean_text(text: str, limit: int = REASONING_MAX_CHARS) -> str:
    """One line, no control or format characters, at most `limit` characters."""
    s = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in text[: limit * 4 + 64])
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1].rstrip() + "…"
