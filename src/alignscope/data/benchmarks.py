"""Loaders for the public benchmarks' files as published: AdvBench, HarmBench (with FunctionalCategory and
SemanticCategory selection), StrongREJECT and XSTest (with its safe or unsafe half)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

from alignscope.data.rows import (
    _check_choices,
    _did_you_mean,
    _find,
    _meta,
    _read_csv,
    _require,
    _Row,
    _selectors,
    _suite,
    _text,
)
from alignscope.data.types import Sample, Suite, SuiteError

HARMBENCH_FUNCTIONAL: tuple[str, ...] = ("standard", "contextual", "copyright", "multimodal")
"""HarmBench's FunctionalCategory values; ``harmbench:PATH`` keeps :data:`HARMBENCH_DEFAULT` of them."""

HARMBENCH_DEFAULT: tuple[str, ...] = ("standard", "contextual")
"""The functional categories a HarmBench suite holds unless its spec selects others: copyright behaviours
("Generate the lyrics of ...") are judged by hashing against the copyrighted text, not by a harm judge."""

XSTEST_HALVES = {"safe": "borderline", "unsafe": "harmful"}
"""XSTest's halves by the label alignscope gives them: safe prompts with alarming words (borderline), and the
``contrast_*`` unsafe prompts (harmful)."""


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


def load_harmbench(
    path: str | Path,
    functional: Sequence[str] | None = HARMBENCH_DEFAULT,
    semantic: Sequence[str] | None = None,
) -> Suite:
    """HarmBench behaviours CSV (Mazeika et al. 2024). Contextual behaviours put their context first,
    separated by ``---``, as HarmBench's own prompts do; the category is the SemanticCategory.

    Args:
        path: the CSV (columns ``Behavior, FunctionalCategory, SemanticCategory, Tags, ContextString,
            BehaviorID``; only Behavior and SemanticCategory are required).
        functional: FunctionalCategory values kept (default standard and contextual: copyright behaviours are
            not harm judgements); None keeps every row. A file without the column keeps every row unless
            categories other than the default are asked for.
        semantic: SemanticCategory values kept (e.g. ``("cybercrime_intrusion",)``); None keeps all.

    In a spec: ``harmbench:PATH#copyright``, ``harmbench:PATH#standard,contextual,copyright`` (or ``#all``),
    ``harmbench:PATH#category=cybercrime_intrusion,chemical_biological``, or both fragments.
    """
    p = Path(path)
    return _harmbench(p, *_read_csv(p), functional=functional, semantic=semantic)


def _harmbench(
    p: Path,
    header: list[str],
    rows: list[_Row],
    functional: Sequence[str] | None = HARMBENCH_DEFAULT,
    semantic: Sequence[str] | None = None,
    name: str = "harmbench",
) -> Suite:
    origin = str(p)
    behavior, semantic_col = _require(origin, header, "Behavior", "SemanticCategory")
    context_col, id_col = _find(header, "ContextString"), _find(header, "BehaviorID")
    functional_col = _find(header, "FunctionalCategory")
    if functional is not None:
        _check_choices(origin, "functional category", functional, HARMBENCH_FUNCTIONAL)
        if functional_col is None:
            if set(functional) != set(HARMBENCH_DEFAULT):
                raise SuiteError(
                    f"{origin}: no FunctionalCategory column (columns: {', '.join(header)}), so behaviours "
                    f"cannot be selected by functional category ({', '.join(functional)})"
                )
            functional = None  # an older file without the column: every row
    if semantic is not None:
        present = sorted({_text(origin, r, semantic_col) or "uncategorized" for r in rows})
        _check_choices(origin, "SemanticCategory", semantic, present)
    made: list[tuple[_Row, Sample]] = []
    for i, row in enumerate(rows):
        if functional is not None and (_text(origin, row, functional_col) or "").lower() not in functional:
            continue
        if semantic is not None and (_text(origin, row, semantic_col) or "uncategorized") not in semantic:
            continue
        prompt = cast(str, _text(origin, row, behavior, required=True))
        context = _text(origin, row, context_col)
        made.append(
            (
                row,
                Sample(
                    id=_text(origin, row, id_col) or f"harmbench-{i:04d}",
                    prompt=f"{context}\n\n---\n\n{prompt}" if context else prompt,
                    category=_text(origin, row, semantic_col) or "uncategorized",
                    label="harmful",
                    meta=_meta(row, (behavior, semantic_col, context_col, id_col)),
                ),
            )
        )
    if not made:
        raise SuiteError(
            f"{origin}: no behaviour is in functional categories {', '.join(functional or ['any'])} and "
            f"semantic categories {', '.join(semantic or ['any'])}"
        )
    return _suite(name, origin, made)


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


def load_xstest(path: str | Path, half: str | None = None) -> Suite:
    """XSTest CSV (Röttger et al. 2024; columns ``id_v2`` or ``id``, ``type``, ``prompt``, ...). ``contrast_*``
    types are the unsafe contrast prompts (label harmful); every other type is a safe prompt with alarming words
    (label borderline), the over-refusal probe.

    ``half``: ``"safe"`` keeps the safe prompts only, ``"unsafe"`` the contrast prompts only, None both. In a
    spec: ``xstest:PATH#safe``, ``xstest:PATH#unsafe``.
    """
    p = Path(path)
    return _xstest(p, *_read_csv(p), half=half)


def _xstest(p: Path, header: list[str], rows: list[_Row], half: str | None = None) -> Suite:
    origin = str(p)
    if half is not None and half not in XSTEST_HALVES:
        raise SuiteError(
            f"{origin}: unknown XSTest half {half!r}{_did_you_mean(half, XSTEST_HALVES)} (valid: safe, unsafe)"
        )
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
    if half is not None:
        made = [(row, s) for row, s in made if s.label == XSTEST_HALVES[half]]
        if not made:
            raise SuiteError(
                f"{origin}: no {half} prompts (types starting with 'contrast_' are the unsafe ones)"
            )
    return _suite(f"xstest-{half}" if half else "xstest", origin, made)


def harmbench_from_spec(rest: str, spec: str) -> Suite:
    """``harmbench:PATH[#FUNCTIONAL,...|#all][#category=SEMANTIC,...]`` (see :func:`load_harmbench`)."""
    target, frags = _selectors(rest)
    functional: tuple[str, ...] | None = HARMBENCH_DEFAULT
    semantic: tuple[str, ...] | None = None
    seen: set[str] = set()
    for frag in frags:
        kind = "semantic" if frag.startswith("category=") else "functional"
        values = tuple(v.strip() for v in frag.removeprefix("category=").split(",") if v.strip())
        if not values or kind in seen:
            raise SuiteError(
                f"{spec}: expected harmbench:PATH[#standard,contextual,copyright|#all][#category=NAME,...]"
            )
        seen.add(kind)
        if kind == "semantic":
            semantic = values
        else:
            functional = None if values == ("all",) else tuple(v.lower() for v in values)
    name = "-".join(["harmbench", *(f.removeprefix("category=").replace(",", "-") for f in frags)])
    p = Path(target)
    return _harmbench(p, *_read_csv(p), functional=functional, semantic=semantic, name=name)
