"""Generate-then-judge stages that append every sample to a run as it finishes, and skip finished ones.

Every black-box measurement in alignscope (refusal, over-refusal, prefilling, decoding sweeps) is a list of
:class:`GenItem` run through :func:`generate_and_judge`: one code path for resume, provenance and judging.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from alignscope.data.types import Sample
from alignscope.judges.base import Judge, Verdict
from alignscope.models.base import ChatModel, Conversation, GenerationConfig, user_turn
from alignscope.runs.store import RunDir

PREFIX_AND_CONTINUATION = "prefix + continuation"
"""What model judges read of a prefilled generation."""


def judge_reads(judge: Judge) -> str:
    """What ``judge`` reads of a prefilled generation (recorded as ``judged`` in every prefilled record)."""
    return str(getattr(judge, "reads", PREFIX_AND_CONTINUATION))


@dataclass(frozen=True)
class GenItem:
    """One generation to make and judge.

    Attributes:
        key: unique within its stage (the resume key).
        sample: the suite sample the prompt comes from.
        conversation: the chat to answer (usually the sample's prompt as one user turn).
        prefill: text or token ids placed at the start of the assistant turn (prefilling attack).
        prefill_text: the prefill as text; the judge gets it beside the response and decides how to read
            the two (model judges: prefix + continuation; keyword: a refusal in the model's own text, which
            may start in the prefix).
        extra: fields copied into the record (e.g. ``{"k": 10}``).
    """

    key: str
    sample: Sample
    conversation: Conversation
    prefill: str | tuple[int, ...] | None = None
    prefill_text: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def of(sample: Sample, key: str | None = None, system: str | None = None, **extra: Any) -> GenItem:
        return GenItem(key or sample.id, sample, user_turn(sample.prompt, system), extra=extra)


def generate_and_judge(
    model: ChatModel,
    items: Sequence[GenItem],
    stage: str,
    config: GenerationConfig,
    judge: Judge,
    run: RunDir | None = None,
    chunk: int = 32,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Generate and judge ``items``; returns one record per item in input order.

    With ``run``, items whose key already has a record in ``stage`` are not redone. Items are generated in
    chunks of ``chunk``; each record is appended (flushed and fsynced) on its own as soon as its chunk is
    judged, so a killed run loses at most the chunk in progress.
    """
    done = run.done(stage) if run is not None else {}
    todo = [it for it in items if it.key not in done]
    new: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=stage, disable=not progress)
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        prefills = [it.prefill for it in part] if any(it.prefill for it in part) else None
        responses = model.generate([it.conversation for it in part], config, prefills=prefills)
        verdicts = judge.judge_batch(
            [it.sample.prompt for it in part], responses, [it.prefill_text for it in part]
        )
        for it, resp, verdict in zip(part, responses, verdicts, strict=True):
            rec = make_record(stage, it, resp, verdict, model.name, config, judge_reads(judge))
            if run is not None:
                run.append(rec)
            new[it.key] = rec
        bar.update(len(part))
    bar.close()
    return [done.get(it.key) or new[it.key] for it in items]


def make_record(
    stage: str,
    item: GenItem,
    response: str,
    verdict: Verdict,
    model_name: str,
    config: GenerationConfig,
    reads: str = PREFIX_AND_CONTINUATION,
) -> dict[str, Any]:
    """The stored record of one judged generation (``reads``: what the judge read of a prefilled one)."""
    return {
        "stage": stage,
        "key": item.key,
        "sample_id": item.sample.id,
        "category": item.sample.category,
        "label": item.sample.label,
        "prompt": item.sample.prompt,
        "prefill": item.prefill_text,
        "response": response,
        "judged": reads if item.prefill_text else "response",
        "verdict": verdict.to_dict(),
        "model": model_name,
        "generation": config.to_dict(),
        **item.extra,
    }
