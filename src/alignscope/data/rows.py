"""Reading suite files into rows, and turning rows into samples, with errors that name the file, the row
(1-based JSONL line, CSV data row, JSON array item) and the field. Shared by :mod:`alignscope.data.loaders`
(generic files, spec strings) and :mod:`alignscope.data.benchmarks` (the public benchmarks' formats).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, get_args

from alignscope.data.types import Label, Sample, Suite, SuiteError
from alignscope.jsonl import JSONLError, iter_jsonl

LABELS: tuple[Label, ...] = get_args(Label)

_MISSING = object()


@dataclass(frozen=True)
class _Row:
    """One record of a source file and where it came from, so errors can point at it."""

    values: dict[str, Any]
    where: str  # "line 4" (JSONL) or "row 3 (line 4)" (CSV)
    field_kind: str  # "field" (JSONL, HF) or "column" (CSV)


def _read_text(path: Path) -> str:
    """The file's text, decoded as UTF-8 with an optional BOM (Excel writes one); errors name the file."""
    if not path.exists():
        raise SuiteError(f"{path}: file not found")
    if not path.is_file():
        raise SuiteError(f"{path}: not a regular file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SuiteError(f"{path}: cannot read file ({e.strerror or e})") from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SuiteError(f"{path}: line {line}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
    if not text.strip():
        raise SuiteError(f"{path}: file is empty")
    return text


def _read_jsonl(path: Path) -> list[_Row]:
    """One JSON object per non-blank line; blank lines are skipped but still counted in line numbers. A file
    that is one JSON array of objects (``[{"instruction": ...}, ...]``) is read as such."""
    text = _read_text(path)
    if text.lstrip().startswith("["):
        return _parse_json_array(text, str(path))
    return _parse_jsonl(text, str(path))


def _read_json(path: Path) -> list[_Row]:
    """A JSON array of objects (the refusal-direction datasets' format); JSON Lines under a ``.json`` name are
    read as JSON Lines."""
    text = _read_text(path)
    if text.lstrip().startswith("["):
        return _parse_json_array(text, str(path))
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return _parse_jsonl(text, str(path))
    if isinstance(whole, dict) and len(text.strip().splitlines()) == 1:
        return [_Row(whole, "line 1", "field")]
    lists = [k for k, v in whole.items() if isinstance(v, list)] if isinstance(whole, dict) else []
    hint = f" (its list fields: {', '.join(lists)}; extract one to a file)" if lists else ""
    what = "an object" if isinstance(whole, dict) else type(whole).__name__
    raise SuiteError(f"{path}: expected a JSON array of objects, got {what}{hint}")


def _parse_json_array(text: str, origin: str) -> list[_Row]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SuiteError(f"{origin}: line {e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(data, list):
        raise SuiteError(f"{origin}: expected a JSON array of objects, got {type(data).__name__}")
    rows: list[_Row] = []
    for i, obj in enumerate(data, 1):
        if not isinstance(obj, dict):
            raise SuiteError(f"{origin}: item {i}: expected a JSON object, got {type(obj).__name__}")
        rows.append(_Row(obj, f"item {i}", "field"))
    if not rows:
        raise SuiteError(f"{origin}: the JSON array is empty")
    return rows


def _parse_jsonl(text: str, origin: str) -> list[_Row]:
    rows: list[_Row] = []
    try:
        for lineno, obj in iter_jsonl(text, origin):
            rows.append(_Row(obj, f"line {lineno}", "field"))
    except JSONLError as e:
        raise SuiteError(f"{origin}: line {e.line}: {e.detail}") from None
    if not rows:
        raise SuiteError(f"{origin}: file is empty")
    return rows


def _read_csv(path: Path) -> tuple[list[str], list[_Row]]:
    """Header and rows of a CSV file (RFC 4180 quoting, so prompts may hold commas, quotes and newlines)."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
        rows: list[_Row] = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            n = len(rows) + 1
            if len(row) > len(header):
                raise SuiteError(
                    f"{path}: row {n} (line {reader.line_num}): {len(row)} fields but the header has "
                    f"{len(header)} (unquoted comma?)"
                )
            values = dict(zip(header, row + [""] * (len(header) - len(row)), strict=True))
            rows.append(_Row(values, f"row {n} (line {reader.line_num})", "column"))
    except csv.Error as e:
        raise SuiteError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from e
    if not rows:
        raise SuiteError(f"{path}: has a header but no rows")
    return header, rows


def _find(columns: Iterable[str], name: str) -> str | None:
    """The actual column matching ``name`` (exact first, then case-insensitive), so ``Prompt`` works too."""
    cols = list(columns)
    if name in cols:
        return name
    return next((c for c in cols if c.lower() == name.lower()), None)


def _require(origin: str, columns: Sequence[str], *names: str) -> list[str]:
    """The actual names of the required CSV columns; a SuiteError naming the first missing one otherwise."""
    found: list[str] = []
    for name in names:
        col = _find(columns, name)
        if col is None:
            raise SuiteError(f"{origin}: missing required column {name!r} (columns: {', '.join(columns)})")
        found.append(col)
    return found


# --- turning rows into samples ---


def _text(origin: str, row: _Row, key: str | None, *, required: bool = False) -> str | None:
    """The stripped text under ``key``; None if absent or blank. Required fields raise with file/row/field."""
    value = _MISSING if key is None else row.values.get(key, _MISSING)
    if value is _MISSING and required:
        present = ", ".join(map(str, row.values)) or "none"
        raise SuiteError(f"{origin}: {row.where}: missing {row.field_kind} {key!r} (present: {present})")
    if value is _MISSING or value is None:
        text = ""
    elif isinstance(value, str):
        text = value.strip()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        text = str(value)
    else:
        raise SuiteError(
            f"{origin}: {row.where}, {row.field_kind} {key!r}: expected text, got {type(value).__name__}"
        )
    if not text:
        if required:
            raise SuiteError(f"{origin}: {row.where}, {row.field_kind} {key!r}: empty prompt")
        return None
    return text


def _label(origin: str, where: str, value: str) -> Label:
    if value not in LABELS:
        raise SuiteError(f"{origin}: {where}: unknown label {value!r} (valid: {', '.join(LABELS)})")
    return cast(Label, value)


def _suite(name: str, source: str, made: list[tuple[_Row, Sample]]) -> Suite:
    """A suite from (row, sample) pairs, rejecting duplicate ids with both rows named."""
    first: dict[str, str] = {}
    for row, s in made:
        if s.id in first:
            raise SuiteError(f"{source}: {row.where}: duplicate id {s.id!r} (first at {first[s.id]})")
        first[s.id] = row.where
    return Suite(name, tuple(s for _, s in made), source)


def _meta(row: _Row, used: Iterable[str | None]) -> dict[str, Any]:
    skip = {u for u in used if u is not None}
    return {k: v for k, v in row.values.items() if k not in skip}


def _jsonl_columns(rows: list[_Row]) -> list[str]:
    """All keys seen in a JSONL file, in first-seen order (lines may differ in their optional fields)."""
    return list(dict.fromkeys(k for r in rows for k in r.values))


def _check_choices(origin: str, what: str, asked: Sequence[str], valid: Sequence[str]) -> None:
    """A SuiteError naming the first of ``asked`` not in ``valid``, with the valid values and a close match."""
    for value in asked:
        if value not in valid:
            raise SuiteError(
                f"{origin}: unknown {what} {value!r}{_did_you_mean(value, valid)} (valid: {', '.join(valid)})"
            )


def _did_you_mean(value: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _selectors(rest: str) -> tuple[str, list[str]]:
    """``PATH#A#B`` -> ``(PATH, ["A", "B"])``; a path that exists as written is taken whole."""
    if "#" not in rest or Path(rest).exists():
        return rest, []
    target, *frags = rest.split("#")
    return target, [f.strip() for f in frags]
