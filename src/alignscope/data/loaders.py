"""Load suites: the built-in ones, public benchmark files, generic JSONL/CSV, and Hugging Face datasets.

Everything is reachable from one spec string (:func:`load_suite`) so the CLI, configs and notebooks name a
suite the same way. Bad input raises :class:`SuiteError` naming the file, the row (1-based JSONL line, CSV
data row) and the field, because a red-teamer's hand-made file is the usual input and a bare ``KeyError``
helps nobody.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast, get_args

from alignscope.data.types import Label, Sample, Suite, SuiteError

HEX_PHI_CATEGORIES: tuple[str, ...] = (
    "illegal_activity",
    "child_abuse",
    "hate_harass_violence",
    "malware",
    "physical_harm",
    "economic_harm",
    "fraud_deception",
    "adult_content",
    "political_campaigning",
    "privacy_violation",
    "tailored_financial_advice",
)
"""The 11 HEx-PHI harm categories (Qi et al. 2023), the category slugs of the built-in ``harmful`` suite."""

BUILTIN_SUITES: tuple[str, ...] = ("harmful", "benign", "borderline")
"""Names of the suites shipped inside the package (our own text, see ``data/builtin/``)."""

LABELS: tuple[Label, ...] = get_args(Label)

PROMPT_COLUMNS: tuple[str, ...] = ("prompt", "instruction", "goal")
"""Columns a bare ``.csv``/``.jsonl`` path is searched for, in order, when no column is named."""

_FILE_KINDS = ("advbench", "harmbench", "strongreject", "xstest", "jsonl", "csv")
_SPEC_HELP = (
    f"built-in {', '.join(BUILTIN_SUITES)}; advbench:PATH, harmbench:PATH, strongreject:PATH, xstest:PATH, "
    "jsonl:PATH[#COLUMN[#LABEL]], csv:PATH[#COLUMN[#LABEL]], hf:DATASET[:SPLIT][#COLUMN[#LABEL]], "
    "or a path ending in .csv/.jsonl; any of them with an optional @N suffix; SPEC+SPEC for their union"
)
_MISSING = object()


@dataclass(frozen=True)
class _Row:
    """One record of a source file and where it came from, so errors can point at it."""

    values: dict[str, Any]
    where: str  # "line 4" (JSONL) or "row 3 (line 4)" (CSV)
    field_kind: str  # "field" (JSONL, HF) or "column" (CSV)


# --- reading files ---


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
    """One JSON object per non-blank line; blank lines are skipped but still counted in line numbers."""
    return _parse_jsonl(_read_text(path), str(path))


def _parse_jsonl(text: str, origin: str) -> list[_Row]:
    rows: list[_Row] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SuiteError(f"{origin}: line {lineno}: malformed JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(obj, dict):
            raise SuiteError(f"{origin}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
        rows.append(_Row(obj, f"line {lineno}", "field"))
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


def _generic(
    name: str, origin: str, rows: list[_Row], column: str, label: Label | None, columns: Sequence[str]
) -> Suite:
    """Rows with a prompt column and optional ``id``/``category``/``target``/``response``/``label`` columns.

    The label comes from ``label`` when given, else from a ``label`` column, else ``harmful`` (custom suites
    are mostly red-team prompts; pass ``#benign`` for instruction sets like Alpaca).
    """
    prompt_col = _find(columns, column)
    if prompt_col is None:
        raise SuiteError(
            f"{origin}: missing required {rows[0].field_kind} {column!r} (present: {', '.join(columns)}); "
            "name the prompt column with a #COLUMN fragment, e.g. jsonl:PATH#instruction"
        )
    id_col, cat_col, tgt_col, resp_col, lab_col = (
        _find(columns, c) for c in ("id", "category", "target", "response", "label")
    )
    made: list[tuple[_Row, Sample]] = []
    for i, row in enumerate(rows):
        prompt = cast(str, _text(origin, row, prompt_col, required=True))
        row_label = label
        if row_label is None:
            raw = _text(origin, row, lab_col)
            row_label = "harmful" if raw is None else _label(origin, f"{row.where}, field 'label'", raw)
        made.append(
            (
                row,
                Sample(
                    id=_text(origin, row, id_col) or f"{name}-{i:04d}",
                    prompt=prompt,
                    category=_text(origin, row, cat_col) or "uncategorized",
                    label=row_label,
                    target=_text(origin, row, tgt_col),
                    response=_text(origin, row, resp_col),
                    meta=_meta(row, (prompt_col, id_col, cat_col, tgt_col, resp_col, lab_col)),
                ),
            )
        )
    return _suite(name, origin, made)


def _jsonl_columns(rows: list[_Row]) -> list[str]:
    """All keys seen in a JSONL file, in first-seen order (lines may differ in their optional fields)."""
    return list(dict.fromkeys(k for r in rows for k in r.values))


# --- public loaders ---


@functools.cache
def builtin_suite(name: str) -> Suite:
    """A suite shipped with the package, read through importlib.resources so it works from an installed wheel.

    Cached: suites are immutable, and evaluation code asks for the same suite many times.
    """
    if name not in BUILTIN_SUITES:
        raise SuiteError(f"unknown built-in suite {name!r} (valid: {', '.join(BUILTIN_SUITES)})")
    resource = resources.files("alignscope.data").joinpath("builtin", f"{name}.jsonl")
    origin = f"alignscope/data/builtin/{name}.jsonl"
    try:
        text = resource.read_text(encoding="utf-8")
    except OSError as e:
        raise SuiteError(f"{origin}: built-in suite missing from the installation ({e})") from e
    rows = _parse_jsonl(text, origin)
    suite = _generic(name, origin, rows, "prompt", None, _jsonl_columns(rows))
    return Suite(name, suite.samples, "builtin")


def load_advbench(path: str | Path) -> Suite:
    """AdvBench ``harmful_behaviors.csv`` (Zou et al. 2023): columns ``goal,target``; ``target`` is the
    affirmative start GCG optimises towards, kept on each sample."""
    p = Path(path)
    return _advbench(p, *_read_csv(p))


def _advbench(p: Path, header: list[str], rows: list[_Row]) -> Suite:
    goal, target = _require(str(p), header, "goal", "target")
    made = [
        (
            row,
            Sample(
                id=f"advbench-{i:04d}",
                prompt=cast(str, _text(str(p), row, goal, required=True)),
                category="advbench",
                label="harmful",
                target=_text(str(p), row, target),
                meta=_meta(row, (goal, target)),
            ),
        )
        for i, row in enumerate(rows)
    ]
    return _suite("advbench", str(p), made)


def load_harmbench(path: str | Path) -> Suite:
    """HarmBench behaviours CSV (Mazeika et al. 2024). Contextual behaviours put their context first,
    separated by ``---``, as HarmBench's own prompts do; the category is the SemanticCategory."""
    p = Path(path)
    return _harmbench(p, *_read_csv(p))


def _harmbench(p: Path, header: list[str], rows: list[_Row]) -> Suite:
    origin = str(p)
    behavior, semantic = _require(origin, header, "Behavior", "SemanticCategory")
    context_col, id_col = _find(header, "ContextString"), _find(header, "BehaviorID")
    made: list[tuple[_Row, Sample]] = []
    for i, row in enumerate(rows):
        prompt = cast(str, _text(origin, row, behavior, required=True))
        context = _text(origin, row, context_col)
        made.append(
            (
                row,
                Sample(
                    id=_text(origin, row, id_col) or f"harmbench-{i:04d}",
                    prompt=f"{context}\n\n---\n\n{prompt}" if context else prompt,
                    category=_text(origin, row, semantic) or "uncategorized",
                    label="harmful",
                    meta=_meta(row, (behavior, semantic, context_col, id_col)),
                ),
            )
        )
    return _suite("harmbench", origin, made)


def load_strongreject(path: str | Path) -> Suite:
    """StrongREJECT CSV (Souly et al. 2024): columns ``category, source, forbidden_prompt``."""
    p = Path(path)
    return _strongreject(p, *_read_csv(p))


def _strongreject(p: Path, header: list[str], rows: list[_Row]) -> Suite:
    origin = str(p)
    prompt_col, cat_col = _require(origin, header, "forbidden_prompt", "category")
    made = [
        (
            row,
            Sample(
                id=f"strongreject-{i:04d}",
                prompt=cast(str, _text(origin, row, prompt_col, required=True)),
                category=_text(origin, row, cat_col) or "uncategorized",
                label="harmful",
                meta=_meta(row, (prompt_col, cat_col)),
            ),
        )
        for i, row in enumerate(rows)
    ]
    return _suite("strongreject", origin, made)


def load_xstest(path: str | Path) -> Suite:
    """XSTest CSV (Röttger et al. 2024). ``contrast_*`` types are the unsafe contrast prompts (label harmful);
    every other type is a safe prompt with alarming words (label borderline), the over-refusal probe."""
    p = Path(path)
    return _xstest(p, *_read_csv(p))


def _xstest(p: Path, header: list[str], rows: list[_Row]) -> Suite:
    origin = str(p)
    prompt_col, type_col = _require(origin, header, "prompt", "type")
    id_col = _find(header, "id_v2") or _find(header, "id")
    made: list[tuple[_Row, Sample]] = []
    for i, row in enumerate(rows):
        kind = _text(origin, row, type_col)
        if kind is None:
            raise SuiteError(f"{origin}: {row.where}, column {type_col!r}: empty type")
        made.append(
            (
                row,
                Sample(
                    id=f"xstest-{_text(origin, row, id_col) or f'{i:04d}'}",
                    prompt=cast(str, _text(origin, row, prompt_col, required=True)),
                    category=kind,
                    label="harmful" if kind.startswith("contrast_") else "borderline",
                    meta=_meta(row, (prompt_col, type_col, id_col)),
                ),
            )
        )
    return _suite("xstest", origin, made)


def load_jsonl(path: str | Path, column: str = "prompt", label: Label | None = None) -> Suite:
    """Any JSONL file with one object per line (HEx-PHI style); see :func:`_generic` for the columns used."""
    p = Path(path)
    rows = _read_jsonl(p)
    return _generic(_stem(p), str(p), rows, column, label, _jsonl_columns(rows))


def load_csv(path: str | Path, column: str = "prompt", label: Label | None = None) -> Suite:
    """Any CSV file with a header row; see :func:`_generic` for the columns used."""
    p = Path(path)
    header, rows = _read_csv(p)
    return _generic(_stem(p), str(p), rows, column, label, header)


def _hf_rows(dataset: str, split: str) -> list[dict[str, Any]]:
    """Rows of a Hugging Face dataset split. A separate function so tests can replace it offline, and so the
    slow ``datasets`` import only happens when an ``hf:`` suite is asked for."""
    import datasets

    return [dict(r) for r in datasets.load_dataset(dataset, split=split)]


def load_hf(dataset: str, split: str = "train", column: str = "prompt", label: Label | None = None) -> Suite:
    """A Hugging Face Hub dataset split, via ``datasets.load_dataset`` (needs network or a warm HF cache)."""
    origin = f"hf:{dataset}:{split}"
    try:
        records = _hf_rows(dataset, split)
    except Exception as e:  # datasets raises many unrelated types (ConnectionError, FileNotFoundError, ...)
        raise SuiteError(
            f"{origin}: could not load the Hugging Face dataset ({type(e).__name__}: {e}). hf: suites are "
            "downloaded with datasets.load_dataset and need network access (or the dataset already in the "
            "local Hugging Face cache); offline, export the dataset to JSONL and use jsonl:PATH instead"
        ) from e
    if not records:
        raise SuiteError(f"{origin}: dataset split is empty")
    rows = [_Row(r, f"row {i}", "field") for i, r in enumerate(records, 1)]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset.split("/")[-1])
    return _generic(name, origin, rows, column, label, _jsonl_columns(rows))


def _stem(p: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", p.stem) or "suite"


# --- spec strings ---


def _fragments(rest: str, spec: str) -> tuple[str, str | None, Label | None]:
    """Split ``PATH#COLUMN#LABEL`` (``LABEL`` may be written ``label=benign``). A path that exists as written
    is taken whole, so the rare file name containing ``#`` still loads."""
    if "#" not in rest or Path(rest).exists():
        return rest, None, None
    target, *frags = rest.split("#")
    if len(frags) > 2:
        raise SuiteError(f"{spec}: too many '#' fragments (expected PATH#COLUMN#LABEL)")
    column = frags[0].strip() or None
    label: Label | None = None
    if len(frags) == 2:
        raw = frags[1].strip().removeprefix("label=")
        label = _label(spec, "label fragment", raw)
    return target, column, label


def _guess(path: str, column: str | None, label: Label | None) -> Suite:
    """A bare ``.csv``/``.jsonl`` path: recognise the public formats by their columns, else a generic suite
    using the first of :data:`PROMPT_COLUMNS` present."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        header, rows = _read_csv(p)
        has = {h.lower() for h in header}
        if column is None and label is None:
            if {"goal", "target"} <= has:
                return _advbench(p, header, rows)
            if {"behavior", "semanticcategory"} <= has:
                return _harmbench(p, header, rows)
            if "forbidden_prompt" in has and "category" in has:
                return _strongreject(p, header, rows)
            if {"prompt", "type", "focus"} <= has:
                return _xstest(p, header, rows)
        columns: Sequence[str] = header
    else:
        rows = _read_jsonl(p)
        columns = _jsonl_columns(rows)
    if column is None:
        column = next((c for c in PROMPT_COLUMNS if _find(columns, c)), None)
        if column is None:
            raise SuiteError(
                f"{p}: no prompt column found (looked for {', '.join(PROMPT_COLUMNS)}; present: "
                f"{', '.join(columns)}); name it with {p}#COLUMN"
            )
    return _generic(_stem(p), str(p), rows, column, label, columns)


def load_suite(spec: str | Path) -> Suite:
    """Resolve a suite spec string (the one way the CLI, configs and notebooks name a suite).

    Forms: ``harmful`` | ``benign`` | ``borderline`` (built-in); ``advbench:PATH``; ``harmbench:PATH``;
    ``strongreject:PATH``; ``xstest:PATH``; ``jsonl:PATH#COLUMN#LABEL`` and ``csv:PATH#COLUMN#LABEL`` (both
    fragments optional, COLUMN defaults to ``prompt``); ``hf:DATASET[:SPLIT]#COLUMN#LABEL``; a bare path
    ending in ``.csv``/``.jsonl`` (format guessed from its columns). Any spec may end in ``@N`` for the
    deterministic, category-stratified ``suite.take(N)``, e.g. ``harmful@20``. ``SPEC+SPEC`` is the union of
    suites in order (``benign+borderline``; sample ids must not repeat); since :meth:`Suite.split` goes by
    sample id, the union's train split is the union of the parts' train splits.

    Raises:
        SuiteError: unknown name (listing valid forms), or bad file content (naming file, row and field).
    """
    spec = str(spec).strip()
    if "+" in spec and not Path(spec).exists():
        parts = [load_suite(p) for p in spec.split("+")]
        return Suite.of(spec, [s for part in parts for s in part.samples], "+".join(p.source for p in parts))
    n: int | None = None
    m = re.fullmatch(r"(.+)@(\d+)", spec)
    if m and not Path(spec).exists():
        spec, n = m.group(1), int(m.group(2))
        if n < 1:
            raise SuiteError(f"{spec}@{n}: the @N suffix must be at least 1")
    suite = _resolve(spec)
    return suite.take(n) if n is not None else suite


def _resolve(spec: str) -> Suite:
    if spec in BUILTIN_SUITES:
        return builtin_suite(spec)
    kind, sep, rest = spec.partition(":")
    if sep and kind in (*_FILE_KINDS, "hf"):
        if not rest:
            raise SuiteError(f"{spec}: missing path after '{kind}:' (forms: {_SPEC_HELP})")
        if kind == "hf":
            target, column, label = _fragments(rest, spec)
            dataset, _, split = target.partition(":")
            return load_hf(dataset, split or "train", column or "prompt", label)
        if kind in ("jsonl", "csv"):
            target, column, label = _fragments(rest, spec)
            loader = load_jsonl if kind == "jsonl" else load_csv
            return loader(target, column or "prompt", label)
        return {
            "advbench": load_advbench,
            "harmbench": load_harmbench,
            "strongreject": load_strongreject,
            "xstest": load_xstest,
        }[kind](rest)
    target, column, label = _fragments(spec, spec)
    if Path(target).suffix.lower() in (".csv", ".jsonl"):
        return _guess(target, column, label)
    raise SuiteError(f"unknown suite {spec!r}; valid: {_SPEC_HELP}")
