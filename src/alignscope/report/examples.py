"""Sample excerpts and provenance strings for report sections, read from judged records."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from alignscope.judges.outcomes import verdict_of

Extra = Callable[[Mapping[str, Any]], dict[str, str]]


def describe_verdict(record: Mapping[str, Any]) -> str:
    """The verdict in one line: outcome, each judged field, score and the judge's raw output."""
    v = verdict_of(record)
    harm = "unknown (judge does not judge harm)" if v.harmful is None else str(v.harmful)
    parts = [f"{v.outcome}: refused={v.refused} complied={v.complied} harmful={harm}"]
    if v.score is not None:
        parts.append(f"score={v.score:g}")
    if v.refusal_at is not None:
        parts.append(f"refusal at char {v.refusal_at}")
    if v.raw:
        parts.append(f"raw={v.raw[:120]!r}")
    return " ".join(parts)


def examples(
    records: Sequence[Mapping[str, Any]],
    n: int = 4,
    chars: int = 300,
    prompt_key: str = "prompt",
    extra: Extra | None = None,
) -> list[dict[str, str]]:
    """Excerpts of the first ``n`` records: extra fields, prompt, prefill (when any), response and verdict."""
    out = []
    for r in records[:n]:
        ex = dict(extra(r)) if extra else {}
        ex["prompt"] = str(r.get(prompt_key) or r["prompt"])[:chars]
        if r.get("prefill"):
            ex["prefill"] = str(r["prefill"])[:chars]
        ex["response"] = str(r["response"])[:chars]
        ex["verdict"] = describe_verdict(r)
        out.append(ex)
    return out


def joined(values: Iterable[Any]) -> str:
    """Distinct values, sorted and comma-separated (``"n/a"`` when none)."""
    return ", ".join(sorted({str(v) for v in values if v is not None})) or "n/a"


def judges_of(records: Iterable[Mapping[str, Any]]) -> str:
    return joined(r["verdict"]["judge"] for r in records)
