"""Sample excerpts and provenance strings for report sections, read from judged records."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from alignscope.judges.outcomes import verdict_of
from alignscope.judges.records import JudgedRecord, RecordLike, as_judged

Extra = Callable[[Mapping[str, Any]], dict[str, str]]


def describe_verdict(record: RecordLike) -> str:
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
    records: Sequence[RecordLike],
    n: int = 4,
    chars: int = 300,
    prompt_key: str = "prompt",
    extra: Extra | None = None,
) -> list[dict[str, str]]:
    """Excerpts of the first ``n`` records: extra fields, prompt (or the stored field ``prompt_key`` when it
    is set, e.g. a GCG record's ``attack_prompt``), prefill (when any), response and verdict. ``extra`` gets
    each record in its stored form."""
    out = []
    for record in records[:n]:
        r = as_judged(record)
        stored = record.to_dict() if isinstance(record, JudgedRecord) else record
        ex = dict(extra(stored)) if extra else {}
        ex["prompt"] = str(r.extra.get(prompt_key) or r.prompt)[:chars]
        if r.prefill:
            ex["prefill"] = r.prefill[:chars]
        ex["response"] = r.response[:chars]
        ex["verdict"] = describe_verdict(r)
        out.append(ex)
    return out


def joined(values: Iterable[Any]) -> str:
    """Distinct values, sorted and comma-separated (``"n/a"`` when none)."""
    return ", ".join(sorted({str(v) for v in values if v is not None})) or "n/a"


def judges_of(records: Iterable[RecordLike]) -> str:
    """The judges that gave the records' verdicts, joined."""
    return joined(as_judged(r).verdict.judge for r in records)
