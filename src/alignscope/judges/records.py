"""The judged-sample record: one generation and its verdict, as a run stores it in ``samples.jsonl``.

Stages write these records, reports read them and re-judging replaces their verdicts. On disk a record stays
the flat JSON object it has always been (``{"stage": ..., "prompt": ..., "verdict": {...}, "k": 10}``), so old
run directories load unchanged; :class:`JudgedRecord` is its typed view.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from alignscope.judges.base import Verdict

_TEXT_FIELDS = ("stage", "key", "sample_id", "category", "label")
"""Text fields stored before ``prompt`` (this order is the stored key order of a record)."""


@dataclass(frozen=True)
class JudgedRecord:
    """One judged generation.

    Attributes:
        prompt: the request the judge saw (the sample's prompt).
        response: the model's own text (after the prefill, when there was one).
        verdict: the judge's verdict (old stored verdicts are upgraded, see :meth:`Verdict.from_dict`).
        stage: the run stage that made it, e.g. ``"evaluate"`` or ``"prefill"``.
        key: unique within the stage (the resume key).
        sample_id, category, label: the suite sample's.
        prefill: the text forced at the start of the assistant turn (``""`` for none).
        judged: what the judge read: ``"response"``, or for a prefilled one e.g. ``"prefix + continuation"``.
        model: the generating model's name.
        generation: the decoding settings (:meth:`GenerationConfig.to_dict`).
        extra: every other stored field, as stored (stage-specific ones such as ``k``, ``suite``, ``split``).

    A field that is absent, or stored with an unexpected type, is None here and its stored value (if any) is
    kept in ``extra``, so :meth:`to_dict` gives back what :meth:`from_dict` read (the verdict in its current
    format).
    """

    prompt: str
    response: str
    verdict: Verdict
    stage: str | None = None
    key: str | None = None
    sample_id: str | None = None
    category: str | None = None
    label: str | None = None
    prefill: str | None = None
    judged: str | None = None
    model: str | None = None
    generation: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def is_judged(record: Mapping[str, Any]) -> bool:
        """``record`` holds a prompt, a response and a verdict (other records, e.g. notes, do not)."""
        return "verdict" in record and "response" in record and "prompt" in record

    @staticmethod
    def from_dict(record: Mapping[str, Any]) -> JudgedRecord:
        """Read a stored record; raises ValueError naming the field when it has no prompt, response or
        verdict."""
        for name in ("prompt", "response", "verdict"):
            if name not in record:
                raise ValueError(f"not a judged record: no {name!r} field (fields: {', '.join(record)})")
        extra = {k: v for k, v in record.items() if k not in ("prompt", "response", "verdict")}
        known: dict[str, Any] = {}
        for name in (*_TEXT_FIELDS, "prefill", "judged", "model"):
            if isinstance(extra.get(name), str):
                known[name] = extra.pop(name)
        if isinstance(extra.get("generation"), dict):
            known["generation"] = extra.pop("generation")
        return JudgedRecord(
            prompt=str(record["prompt"]),
            response=str(record["response"]),
            verdict=Verdict.from_dict(record["verdict"]),
            extra=extra,
            **known,
        )

    def to_dict(self) -> dict[str, Any]:
        """The stored form: the fields that are set, in the stored order, then ``extra``."""
        out: dict[str, Any] = {k: getattr(self, k) for k in _TEXT_FIELDS if getattr(self, k) is not None}
        out["prompt"] = self.prompt
        if self.prefill is not None:
            out["prefill"] = self.prefill
        out["response"] = self.response
        if self.judged is not None:
            out["judged"] = self.judged
        out["verdict"] = self.verdict.to_dict()
        if self.model is not None:
            out["model"] = self.model
        if self.generation is not None:
            out["generation"] = self.generation
        out.update(self.extra)
        return out

    def rejudged(self, verdict: Verdict, reads: str) -> JudgedRecord:
        """This record with another judge's ``verdict``; ``reads`` is what that judge reads of a prefilled
        generation (the old judge's reading of the text, ``judged_text``, is dropped)."""
        extra = {k: v for k, v in self.extra.items() if k != "judged_text"}
        prefilled = self.prefill or self.extra.get("prefill")
        return replace(self, verdict=verdict, judged=reads if prefilled else self.judged, extra=extra)


RecordLike = Mapping[str, Any] | JudgedRecord
"""A judged record, stored (a dict read from ``samples.jsonl``) or typed."""


def as_judged(record: RecordLike) -> JudgedRecord:
    """``record`` as a :class:`JudgedRecord` (read from its stored form when it is a mapping)."""
    return record if isinstance(record, JudgedRecord) else JudgedRecord.from_dict(record)


def judged_records(records: Iterable[RecordLike]) -> list[JudgedRecord]:
    """:func:`as_judged` of each record."""
    return [as_judged(r) for r in records]
