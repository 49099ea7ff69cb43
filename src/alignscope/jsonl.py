"""One JSONL reader for every file of one JSON value per line: run records, suites, labelled judge sets,
training data, generation caches, guard audit logs.

Blank lines are skipped and lines are numbered from 1, so errors can name the file and the line. A caller that
wants its own error type catches :class:`JSONLError` and re-raises with ``e.line`` and ``e.detail``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("alignscope")


class JSONLError(ValueError):
    """A line that is not valid JSON (or, when objects are required, not a JSON object).

    Attributes:
        origin: the file (or whatever the text came from).
        line: the 1-based line number.
        detail: what is wrong, e.g. ``"malformed JSON (Expecting value at column 1)"``.
    """

    def __init__(self, origin: str, line: int, detail: str) -> None:
        self.origin, self.line, self.detail = origin, line, detail
        super().__init__(f"{origin}:{line}: {detail}")


def parse_line(raw: str | bytes, objects: bool = True) -> tuple[Any, str | None]:
    """``(value, None)`` for a line holding one JSON value (an object when ``objects``), else ``(None, why)``."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as e:
        return None, f"not valid UTF-8 ({e.reason})"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"malformed JSON ({e.msg} at column {e.colno})"
    if objects and not isinstance(value, dict):
        return None, f"expected a JSON object, got {type(value).__name__}"
    return value, None


def iter_jsonl(
    source: str | bytes, origin: str, *, objects: bool = True, torn_tail: bool = False
) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for every non-blank line of ``source`` (JSONL text or bytes).

    Args:
        origin: names the source in errors.
        objects: require every value to be a JSON object.
        torn_tail: skip (and log) the last non-blank line when it does not parse: an append cut short, as a
            killed run leaves it. A bad line before it still raises.

    Raises:
        JSONLError: naming ``origin``, the line and what is wrong.
    """
    lines: list[Any] = source.split(b"\n") if isinstance(source, bytes) else source.split("\n")
    last = max((i for i, raw in enumerate(lines, start=1) if raw.strip()), default=0)
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        value, why = parse_line(raw, objects)
        if why is not None:
            if torn_tail and i == last:
                log.info("%s: ignoring a torn last line (%d bytes: %s)", origin, len(raw), _preview(raw))
                continue
            raise JSONLError(origin, i, why)
        yield i, value


def read_jsonl(
    path: str | os.PathLike[str], *, objects: bool = True, torn_tail: bool = False
) -> Iterator[tuple[int, Any]]:
    """:func:`iter_jsonl` over the file at ``path`` (errors name it); a missing file raises
    ``FileNotFoundError``."""
    file = Path(path)
    return iter_jsonl(file.read_bytes(), str(file), objects=objects, torn_tail=torn_tail)


def _preview(raw: str | bytes, width: int = 60) -> str:
    text = (raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw).strip()
    return repr(text if len(text) <= width else text[:width] + "...")
