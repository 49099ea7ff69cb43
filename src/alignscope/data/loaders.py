"""Load suites: the built-in ones, public benchmark files (:mod:`alignscope.data.benchmarks`), generic
JSON/JSONL/CSV, and Hugging Face datasets.

Everything is reachable from one spec string (:func:`load_suite`) so the CLI, configs and notebooks name a
suite the same way. Bad input raises :class:`SuiteError` naming the file, the row (1-based JSONL line, CSV
data row) and the field, because a red-teamer's hand-made file is the usual input and a bare ``KeyError``
helps nobody.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, cast

from alignscope.data.benchmarks import (
    _advbench,
    _harmbench,
    _strongreject,
    _xstest,
    harmbench_from_spec,
    load_advbench,
    load_strongreject,
    load_xstest,
)
from alignscope.data.rows import (
    _did_you_mean,
    _find,
    _jsonl_columns,
    _label,
    _meta,
    _parse_jsonl,
    _read_csv,
    _read_json,
    _read_jsonl,
    _Row,
    _selectors,
    _suite,
    _text,
)
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

BUILTIN_SUITES: tuple[str, ...] = ("harmful", "benign", "borderline", "safe-alarming", "unsafe-contrast")
"""Names of the suites shipped inside the package (our own text, see ``data/builtin/``). ``safe-alarming``
and ``unsafe-contrast`` are contrastive twins: the same alarming word with harmless and with harmful intent
(ids ``safe-alarming-<category>-NNN`` and ``unsafe-contrast-<category>-NNN`` pair up)."""

PROMPT_COLUMNS: tuple[str, ...] = ("prompt", "instruction", "goal")
"""Columns a bare ``.csv``/``.jsonl`` path is searched for, in order, when no column is named."""

_FILE_KINDS = ("advbench", "harmbench", "strongreject", "xstest", "json", "jsonl", "csv")
_SPEC_HELP = (
    f"built-in {', '.join(BUILTIN_SUITES)}; advbench:PATH, harmbench:PATH[#standard,contextual,copyright|#all]"
    "[#category=NAME,...], strongreject:PATH, xstest:PATH[#safe|#unsafe], json:PATH[#COLUMN[#LABEL]], "
    "jsonl:PATH[#COLUMN[#LABEL]], csv:PATH[#COLUMN[#LABEL]], hf:DATASET[:SPLIT][#COLUMN[#LABEL]], "
    "or a path ending in .csv/.json/.jsonl; any of them with an optional @N suffix (N >= 1); SPEC+SPEC for "
    "their union"
)


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


def load_json(path: str | Path, column: str = "prompt", label: Label | None = None) -> Suite:
    """A JSON array of objects, e.g. the refusal-direction datasets' ``[{"instruction": ..., "category": ...}]``
    (``json:PATH#instruction``); columns as in :func:`_generic`. Errors name the array item."""
    p = Path(path)
    rows = _read_json(p)
    return _generic(_stem(p), str(p), rows, column, label, _jsonl_columns(rows))


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
    """A bare ``.csv``/``.json``/``.jsonl`` path: recognise the public formats by their columns, else a generic suite
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
        rows = _read_json(p) if p.suffix.lower() == ".json" else _read_jsonl(p)
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

    Forms:

    * ``harmful`` | ``benign`` | ``borderline`` | ``safe-alarming`` | ``unsafe-contrast``: built-in.
    * ``advbench:PATH``; ``strongreject:PATH``.
    * ``harmbench:PATH``: the standard and contextual behaviours (copyright ones left out). Selections, as
      ``#`` fragments: FunctionalCategory values comma-separated (``#copyright``,
      ``#standard,contextual,copyright``) or ``#all``; SemanticCategory values as
      ``#category=cybercrime_intrusion,chemical_biological``; both may be given
      (``harmbench:PATH#all#category=copyright``). The suite is named after the selection
      (``harmbench-copyright``).
    * ``xstest:PATH`` (both halves), ``xstest:PATH#safe`` (the safe prompts, label borderline),
      ``xstest:PATH#unsafe`` (the contrast prompts, label harmful).
    * ``json:PATH#COLUMN#LABEL`` (a JSON array of objects, e.g. ``[{"instruction": ...}]``),
      ``jsonl:PATH#COLUMN#LABEL`` and ``csv:PATH#COLUMN#LABEL``: both fragments optional, COLUMN defaults to
      ``prompt``.
    * ``hf:DATASET[:SPLIT]#COLUMN#LABEL``.
    * a bare path ending in ``.csv``/``.json``/``.jsonl`` (format guessed from its columns).

    Any spec may end in ``@N`` (N >= 1) for the deterministic, category-stratified ``suite.take(N)``, e.g.
    ``harmful@20``. ``SPEC+SPEC`` is the union of suites in order (``benign+borderline``; sample ids must not
    repeat); since :meth:`Suite.split` goes by sample id, the union's train split is the union of the parts'
    train splits.

    Raises:
        SuiteError: unknown name (listing valid forms, with the closest one: "did you mean harmful?"), a bad
            ``@N``, an unknown selection, or bad file content (naming file, row and field).
    """
    spec = str(spec).strip()
    if "+" in spec and not Path(spec).exists():
        parts = [load_suite(p) for p in spec.split("+")]
        return Suite.of(spec, [s for part in parts for s in part.samples], "+".join(p.source for p in parts))
    n: int | None = None
    m = re.fullmatch(r"(.+)@([^@/\\]*)", spec)
    if m and not Path(spec).exists():
        try:
            n = int(m.group(2))
        except ValueError:
            raise SuiteError(
                f"{spec}: the @N suffix is the subset size, a whole number >= 1; got {m.group(2)!r}"
            ) from None
        if n < 1:
            raise SuiteError(f"{spec}: the @N suffix is the subset size and must be >= 1, got {n}")
        spec = m.group(1)
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
        if kind in ("json", "jsonl", "csv"):
            target, column, label = _fragments(rest, spec)
            loader = {"json": load_json, "jsonl": load_jsonl, "csv": load_csv}[kind]
            return loader(target, column or "prompt", label)
        if kind == "harmbench":
            return harmbench_from_spec(rest, spec)
        if kind == "xstest":
            target, frags = _selectors(rest)
            if len(frags) > 1:
                raise SuiteError(f"{spec}: expected xstest:PATH, xstest:PATH#safe or xstest:PATH#unsafe")
            return load_xstest(target, frags[0].lower() if frags else None)
        return {"advbench": load_advbench, "strongreject": load_strongreject}[kind](rest)
    if sep and re.fullmatch(r"[A-Za-z]+", kind) and not Path(spec.split("#")[0]).exists():
        close = _did_you_mean(kind.lower(), (*_FILE_KINDS, "hf"))  # a misspelt kind: "advbnch:PATH"
        if close:
            raise SuiteError(f"unknown suite {spec!r}{close.replace('?', f':{rest}?')}; valid: {_SPEC_HELP}")
    target, column, label = _fragments(spec, spec)
    if Path(target).suffix.lower() in (".csv", ".json", ".jsonl"):
        return _guess(target, column, label)
    hint = _did_you_mean(spec.lower(), BUILTIN_SUITES)
    raise SuiteError(f"unknown suite {spec!r}{hint}; valid: {_SPEC_HELP}")
