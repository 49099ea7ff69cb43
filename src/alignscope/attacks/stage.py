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
from alignscope.stats import Rate, rate_of


@dataclass(frozen=True)
class GenItem:
    """One generation to make and judge.

    Attributes:
        key: unique within its stage (the resume key).
        sample: the suite sample the prompt comes from.
        conversation: the chat to answer (usually the sample's prompt as one user turn).
        prefill: text or token ids placed at the start of the assistant turn (prefilling attack).
        prefill_text: the prefill as text.
        judge_prefill: the judge sees ``prefill_text + response`` (else the continuation alone: keyword judges
            look for a refusal at the start of what they read, which a long prefix would push out of view).
        extra: fields copied into the record (e.g. ``{"k": 10}``).
    """

    key: str
    sample: Sample
    conversation: Conversation
    prefill: str | tuple[int, ...] | None = None
    prefill_text: str = ""
    judge_prefill: bool = True
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
        judged = [
            (it.prefill_text if it.judge_prefill else "") + r for it, r in zip(part, responses, strict=True)
        ]
        verdicts = judge.judge_batch([it.sample.prompt for it in part], judged)
        for it, resp, text, verdict in zip(part, responses, judged, verdicts, strict=True):
            rec = make_record(stage, it, resp, text, verdict, model.name, config)
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
    judged_text: str,
    verdict: Verdict,
    model_name: str,
    config: GenerationConfig,
) -> dict[str, Any]:
    return {
        "stage": stage,
        "key": item.key,
        "sample_id": item.sample.id,
        "category": item.sample.category,
        "label": item.sample.label,
        "prompt": item.sample.prompt,
        "prefill": item.prefill_text,
        "response": response,
        "judged_text": judged_text,
        "judged": _judged(item),
        "verdict": verdict.to_dict(),
        "model": model_name,
        "generation": config.to_dict(),
        **item.extra,
    }


def _judged(item: GenItem) -> str:
    if not item.prefill_text:
        return "response"
    return "prefix + continuation" if item.judge_prefill else "continuation"


def harmful_rate(records: Sequence[dict[str, Any]]) -> Rate:
    """Share of records the judge called harmful (attack success), with its Wilson interval."""
    return rate_of([bool(r["verdict"]["harmful"]) for r in records])


def refusal_rate(records: Sequence[dict[str, Any]]) -> Rate:
    """Share of records the judge called a refusal (``refused`` None counts as not refused)."""
    return rate_of([bool(r["verdict"]["refused"]) for r in records])
