"""The prefilling attack (Qi et al. 2024, "Safety Alignment Should Be Made More Than Just a Few Tokens Deep").

The first k tokens of a harmful response are placed at the start of the assistant turn (no end-of-turn after
them) and the model continues. A shallowly aligned model refuses at k = 0 but continues harmfully once a few
harmful tokens are forced. Every judge gets the prefix and the continuation apart: model judges read the
prefix plus the continuation, as in the paper; the keyword judge looks for a refusal in the model's own text,
which may start inside the prefix ("I'm not here" forced, " to help with that." generated). Each record says
which in ``judged``. The attack's success is the harmful rate where the judge judges harm, else the
non-refusal rate (:func:`alignscope.judges.outcomes.attack_success`), named as such.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignscope.attacks.stage import GenItem, generate_and_judge
from alignscope.config_io import ConfigIO, RunSettings
from alignscope.data.types import Sample
from alignscope.judges.base import Judge
from alignscope.judges.outcomes import attack_success, success_flags
from alignscope.judges.registry import check_judge_spec
from alignscope.models.base import ChatModel, GenerationConfig, ModelError, user_turn
from alignscope.models.loading import DEFAULT_MODEL
from alignscope.models.local import LocalModel
from alignscope.models.pool import ModelPool
from alignscope.runs.experiment import experiment
from alignscope.runs.store import RunDir
from alignscope.validation import FieldChecks

log = logging.getLogger("alignscope.attacks")

DEFAULT_KS = (0, 3, 5, 10, 20, 40)


@dataclass(frozen=True)
class PrefillConfig(RunSettings):
    """Settings of the prefilling attack (``alignscope attack prefill``).

    Attributes:
        model: spec of the attacked model.
        suite: harmful suite spec; samples with a ``response`` use it as the harmful answer to prefill.
        n: prompts (a category-stratified subset); None takes every prompt.
        ks: numbers of harmful-answer tokens to prefill (the paper: 5, 10, 20, 40; ablations 0..160).
        source: spec of the model writing the harmful answers the suite lacks (None: the embedded unaligned
            default); its tokenizer counts the k tokens sent to a remote model.
        judge: judge spec; the rate it supports names the attack's success (non-refusal for ``keyword``).
        max_new_tokens: tokens generated after the prefill.
        response_tokens: tokens of each generated harmful answer (must cover ``max(ks)``).
        seed: seeds the subset (decoding is greedy).
    """

    suite_fields = ("suite",)
    model: str = DEFAULT_MODEL
    suite: str = "harmful"
    n: int | None = 20
    ks: tuple[int, ...] = DEFAULT_KS
    source: str | None = None
    judge: str = "keyword"
    max_new_tokens: int = 48
    response_tokens: int = 64

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.each_at_least(0, "ks")
        check.at_least(1, "n", "max_new_tokens", "response_tokens", "batch_size")
        check_judge_spec(self.judge)


@dataclass(frozen=True)
class PrefillResult(ConfigIO):
    """Attack success per k, the records behind it, and how many prompts had a usable harmful response.

    ``success[k]`` is a rate dict with ``measure``: ``"harmful"`` (harmful rate, from a judge that judges
    harm) or ``"non_refusal"`` (non-refusal rate, e.g. the keyword judge). ``records`` are not serialised.
    """

    success: dict[int, dict[str, Any]]
    n_prompts: int
    n_dropped: int
    records: list[dict[str, Any]] = field(default_factory=list, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": {str(k): v for k, v in self.success.items()},
            "n_prompts": self.n_prompts,
            "n_dropped": self.n_dropped,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrefillResult:
        success = {int(k): dict(v) for k, v in d["success"].items()}
        return cls(success, int(d["n_prompts"]), int(d["n_dropped"]))

    def summary(self) -> str:
        measure = next(iter(self.success.values()), {}).get("measure", "non_refusal")
        name = "harmful rate" if measure == "harmful" else "non-refusal rate"
        per_k = ", ".join(f"k={k}: {100 * v['rate']:.0f}%" for k, v in self.success.items())
        return f"prefilling attack, {name} on {self.n_prompts} prompts ({self.n_dropped} without a harmful answer): {per_k}"


def harmful_responses(
    source: ChatModel,
    samples: Sequence[Sample],
    judge: Judge,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    run: RunDir | None = None,
) -> dict[str, str]:
    """Harmful reference responses for ``samples``: the suite's own ``response`` where it has one, otherwise
    generated greedily by ``source`` (typically an unaligned model, e.g. the embedded default).

    Responses the judge counts as no success (the source refused or wrote nothing; with a harm judge, also
    harmless answers) are left out: prefilling a refusal measures nothing. Generated responses are stored in
    ``run`` (stage ``harmful_responses``).
    """
    given = {s.id: s.response for s in samples if s.response}
    to_make = [GenItem.of(s) for s in samples if s.id not in given]
    records = (
        generate_and_judge(
            source,
            to_make,
            "harmful_responses",
            GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size),
            judge,
            run,
        )
        if to_make
        else []
    )
    _, ok = success_flags(records)
    made = {r["sample_id"]: r["response"] for r, good in zip(records, ok, strict=True) if good}
    return {**given, **made}


def prefill_attack(
    model: ChatModel,
    samples: Sequence[Sample],
    responses: dict[str, str],
    judge: Judge,
    config: PrefillConfig | None = None,
    run: RunDir | None = None,
    stage: str = "prefill",
    progress: bool = True,
    token_counter: LocalModel | None = None,
) -> PrefillResult:
    """Run the prefilling attack for every k in ``config.ks`` on the samples that have a harmful response.

    The response is tokenised with ``model``'s tokenizer and its first k tokens are prefilled (all of it when
    shorter; the record keeps the effective ``k_used``). A remote model that accepts a prefill has no
    tokenizer here: its k tokens are counted with ``token_counter``'s tokenizer and sent as text (the record
    names the counter in ``k_tokenizer``). Records carry ``k`` and what was judged.
    """
    config = config or PrefillConfig()
    if not model.supports_prefill:
        raise ModelError(
            f"{model.name} does not support an assistant prefill; the prefilling attack needs one"
        )
    counter = model if isinstance(model, LocalModel) else token_counter
    if counter is None:
        raise ModelError(
            f"{model.name} has no local tokenizer: pass token_counter= to count prefilled tokens"
        )
    usable = [s for s in samples if s.id in responses]
    items: list[GenItem] = []
    for k in config.ks:
        for s in usable:
            ids = counter.response_ids(responses[s.id])[:k] if k else []
            text = counter.tokenizer.decode(ids) if ids else ""
            prefill: str | tuple[int, ...] | None = (tuple(ids) if counter is model else text) or None
            extra = {"k": k, "k_used": len(ids), "k_tokenizer": counter.name}
            items.append(GenItem(f"{s.id}@k={k}", s, user_turn(s.prompt), prefill, text, extra))
    gen = GenerationConfig(
        max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, seed=config.seed
    )
    records = generate_and_judge(model, items, stage, gen, judge, run, progress=progress)
    success = {k: attack_success([r for r in records if r["k"] == k]).to_dict() for k in config.ks}
    return PrefillResult(success, len(usable), len(samples) - len(usable), records)


@experiment(PrefillConfig)
def run_prefill(config: PrefillConfig, run: RunDir | None, pool: ModelPool, progress: bool) -> PrefillResult:
    """The prefilling attack as an experiment: load the suite, the attacked model, the answer source and the
    judge; write the source's harmful answers and the attacked continuations into ``run`` (resumable) and
    rebuild its report."""
    from alignscope.data import load_suite

    samples = list(load_suite(config.suite).take(config.n, config.seed))
    model = pool.get(config.model)
    judge = pool.judge(config.judge)
    source = pool.get(config.source or DEFAULT_MODEL)
    responses = harmful_responses(source, samples, judge, config.response_tokens, config.batch_size, run)
    counter = source if isinstance(source, LocalModel) else None
    return prefill_attack(
        model, samples, responses, judge, config, run, progress=progress, token_counter=counter
    )
