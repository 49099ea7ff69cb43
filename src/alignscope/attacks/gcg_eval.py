"""GCG as an evaluation: optimise suffixes on a suite's behaviours, generate with them, judge, report success.

:func:`gcg_attack` is the library entry point behind ``alignscope attack gcg``. Per behaviour (or once, for a
universal suffix) it runs :func:`alignscope.attacks.gcg.run_gcg` and appends a ``gcg`` record to the run as
soon as that behaviour is done, so a killed run loses at most the behaviour in progress and ``--resume`` skips
finished ones. Then every attacked prompt is answered and judged through
:func:`alignscope.attacks.stage.generate_and_judge` (stage ``gcg_eval``, resumable per item), on the attacked
model and on any transfer models, with a no-suffix baseline beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from alignscope.attacks.gcg import GCGConfig, GCGResult, run_gcg, run_universal_gcg
from alignscope.attacks.gcg_ops import PLACEHOLDER, GCGError, fill_suffix
from alignscope.attacks.stage import GenItem, generate_and_judge
from alignscope.config_io import DeviceSettings
from alignscope.data.types import Sample
from alignscope.judges.base import Judge
from alignscope.judges.outcomes import attack_success
from alignscope.judges.registry import check_judge_spec
from alignscope.models.base import ChatModel, Conversation, GenerationConfig
from alignscope.models.loading import DEFAULT_MODEL
from alignscope.models.local import LocalModel
from alignscope.models.pool import ModelPool
from alignscope.runs.experiment import experiment
from alignscope.runs.store import RunDir
from alignscope.validation import FieldChecks

log = logging.getLogger("alignscope.attacks.gcg")

OPT_STAGE = "gcg"
EVAL_STAGE = "gcg_eval"
UNIVERSAL_KEY = "universal"
DEFAULT_TEMPLATE = "{prompt} " + PLACEHOLDER
FALLBACK_TARGET = "Sure, here is"
"""Target for samples without one (AdvBench gives a ``"Sure, here is ..."`` target per behaviour)."""


@dataclass(frozen=True)
class GCGAttackResult:
    """Attack success per (generating model, split), the suffixes found, and the records behind them.

    ``success`` keys are ``"<model> | <split>"`` with split ``no_suffix`` (baseline), ``attack`` (the
    behaviours the suffixes were optimised on) or ``held_out`` (universal suffix on unseen behaviours); values
    are rate dicts with ``measure`` ``"harmful"`` (harmful rate) or ``"non_refusal"`` (non-refusal rate).
    """

    success: dict[str, dict[str, Any]]
    suffixes: dict[str, str]
    records: list[dict[str, Any]] = field(default_factory=list)
    optimisation: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"success": self.success, "suffixes": self.suffixes}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GCGAttackResult:
        return cls(dict(d["success"]), dict(d["suffixes"]))

    def summary(self) -> str:
        lines = [f"GCG: {len(self.suffixes)} suffix(es)"]
        for key, rate in self.success.items():
            name = "harmful rate" if rate.get("measure") == "harmful" else "non-refusal rate"
            lines.append(f"  {key}: {name} {100 * float(rate['rate']):.1f}% (n={rate['n']})")
        return "\n".join(lines)


@dataclass(frozen=True)
class GCGAttackConfig(DeviceSettings):
    """Settings of ``alignscope attack gcg``.

    Attributes:
        model: spec of the white-box model the suffixes are optimised on (a local model).
        suite: behaviours; a sample's ``target`` (AdvBench's "Sure, here is ...") is its optimisation target,
            "Sure, here is" when it has none.
        n: behaviours attacked (a category-stratified subset); None takes every one.
        judge: judge spec for the answers; the rate it supports names the success (non-refusal for keyword).
        gcg: the optimisation's settings (:class:`alignscope.attacks.gcg.GCGConfig`); from the CLI,
            ``--gcg-num-steps 50`` or ``--set gcg.search_width=64``.
        universal: optimise one suffix over all behaviours instead of one per behaviour.
        held_out: with ``universal``: this many further behaviours of the suite answered with the suffix.
        transfer: specs of other models (local or remote) answering the same attacked prompts.
        template: the user turn, with ``{prompt}`` and ``{optim_str}``.
        max_new_tokens: tokens generated with the found suffix.
        seed: seeds the subset (the optimisation's own seed is ``gcg.seed``).
    """

    suite_fields = ("suite",)
    model: str = DEFAULT_MODEL
    suite: str = "harmful"
    n: int | None = 5
    judge: str = "keyword"
    gcg: GCGConfig = field(default_factory=GCGConfig)
    universal: bool = False
    held_out: int = 0
    transfer: tuple[str, ...] = ()
    template: str = DEFAULT_TEMPLATE
    max_new_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.at_least(1, "n", "max_new_tokens")
        check.at_least(0, "held_out")
        check_judge_spec(self.judge)
        if self.held_out and not self.universal:
            raise GCGError(
                "GCGAttackConfig.held_out needs universal=True (held-out behaviours test one suffix)"
            )
        if PLACEHOLDER not in self.template or "{prompt}" not in self.template:
            raise GCGError(
                f"GCGAttackConfig.template must contain {{prompt}} and {PLACEHOLDER}: {self.template!r}"
            )


@experiment(GCGAttackConfig)
def run_gcg_attack(
    config: GCGAttackConfig, run: RunDir | None, pool: ModelPool, progress: bool
) -> GCGAttackResult:
    """GCG as an experiment: optimise, answer, judge, into ``run`` (resumable per behaviour and per answer),
    whose report is rebuilt."""
    from alignscope.data import load_suite

    full = load_suite(config.suite)
    samples = list(full.take(config.n, config.seed))
    chosen = {s.id for s in samples}
    extra = [s for s in full if s.id not in chosen][: config.held_out]
    model = pool.get(config.model)
    if not isinstance(model, LocalModel):
        raise GCGError(f"GCG needs gradients: {model.name} is not a local model")
    return gcg_attack(
        model,
        samples,
        pool.judge(config.judge),
        config.gcg,
        run,
        GenerationConfig(max_new_tokens=config.max_new_tokens),
        universal=config.universal,
        held_out=extra,
        transfer=[pool.get(t) for t in config.transfer],
        template=config.template,
        progress=progress,
    )


def attack_chat(sample: Sample, template: str = DEFAULT_TEMPLATE) -> Conversation:
    """The chat GCG optimises on: one user turn, ``template`` with ``{prompt}`` and ``{optim_str}``."""
    if PLACEHOLDER not in template or "{prompt}" not in template:
        raise GCGError(f"the prompt template must contain {{prompt}} and {PLACEHOLDER}: {template!r}")
    return [{"role": "user", "content": template.replace("{prompt}", sample.prompt)}]


def target_of(sample: Sample) -> str:
    return sample.target or FALLBACK_TARGET


def optimisation_record(
    key: str, samples: Sequence[Sample], result: GCGResult, model: str, config: GCGConfig
) -> dict[str, Any]:
    """The ``gcg`` stage record of one finished optimisation (one behaviour, or all of a universal suffix)."""
    return {
        "stage": OPT_STAGE,
        "key": key,
        "sample_ids": [s.id for s in samples],
        "prompts": [s.prompt for s in samples],
        "targets": result.targets,
        "suffix": result.best_string,
        "suffix_ids": result.best_ids,
        "best_loss": result.best_loss,
        "init_loss": result.init_loss,
        "losses": result.losses,
        "strings": result.strings,
        "step_times": result.step_times,
        "n_candidates": result.n_candidates,
        "early_stopped": result.early_stopped,
        "model": model,
        "gcg": config.to_dict(),
    }


def gcg_attack(
    model: LocalModel,
    samples: Sequence[Sample],
    judge: Judge,
    config: GCGConfig | None = None,
    run: RunDir | None = None,
    generation: GenerationConfig | None = None,
    *,
    universal: bool = False,
    held_out: Sequence[Sample] = (),
    transfer: Sequence[ChatModel] = (),
    template: str = DEFAULT_TEMPLATE,
    baseline: bool = True,
    progress: bool = True,
) -> GCGAttackResult:
    """Run GCG on ``samples`` and measure attack success with ``judge``.

    Args:
        model: the white-box model attacked (suffixes are optimised on it).
        samples: behaviours; each sample's ``target`` (AdvBench's ``"Sure, here is ..."``) is the
            optimisation target, :data:`FALLBACK_TARGET` when it has none.
        judge: any alignscope judge; it sees the original behaviour as the prompt and the response.
        config: GCG settings.
        run: run directory; finished behaviours (stage ``gcg``) and judged generations (``gcg_eval``) are
            not redone.
        generation: decoding for the evaluation (default greedy, 64 new tokens).
        universal: optimise one suffix over all ``samples`` instead of one per behaviour.
        held_out: behaviours the universal suffix was not optimised on, answered with it (split
            ``held_out``); needs ``universal``.
        transfer: other models (local or remote) answering the same attacked prompts.
        template: the user turn, with ``{prompt}`` and ``{optim_str}``.
        baseline: also answer the behaviours without a suffix (split ``no_suffix``).
        progress: progress bars.
    """
    config = config or GCGConfig()
    if progress and not config.progress:
        config = replace(config, progress=True)
    generation = generation or GenerationConfig(max_new_tokens=64)
    if held_out and not universal:
        raise GCGError("held-out behaviours need a universal suffix (universal=True)")
    if not samples:
        raise GCGError("no behaviours to attack")
    done = run.done(OPT_STAGE) if run is not None else {}
    opt_records: dict[str, dict[str, Any]] = {}
    groups = [(UNIVERSAL_KEY, list(samples))] if universal else [(s.id, [s]) for s in samples]
    for i, (key, group) in enumerate(groups):
        if key in done:
            opt_records[key] = done[key]
            continue
        log.info("GCG %d/%d (%s) on %s", i + 1, len(groups), key, model.name)
        chats = [attack_chat(s, template) for s in group]
        targets = [target_of(s) for s in group]
        if universal:
            res = run_universal_gcg(model, chats, targets, config)
        else:
            res = run_gcg(model, chats[0], targets[0], config)
        rec = optimisation_record(key, group, res, model.name, config)
        if run is not None:
            run.append(rec)
        opt_records[key] = rec
    suffixes = {k: str(r["suffix"]) for k, r in opt_records.items()}

    items: list[GenItem] = []
    splits = [("attack", list(samples))] + ([("held_out", list(held_out))] if held_out else [])
    for split, group in splits:
        for s in group:
            key = UNIVERSAL_KEY if universal else s.id
            rec = opt_records[key]
            chat = fill_suffix(attack_chat(s, template), suffixes[key])
            extra = {
                "split": split,
                "suffix_key": key,
                "suffix": suffixes[key],
                "attack_prompt": chat[-1]["content"],
                "target": target_of(s),
                "gcg_loss": rec["best_loss"] if split == "attack" and not universal else None,
                "attacked_model": model.name,
            }
            items.append(GenItem(f"{split}|{s.id}", s, chat, extra=extra))
        if baseline:
            for s in group:
                extra = {"split": "no_suffix", "suffix_key": None, "suffix": "", "attack_prompt": s.prompt}
                extra.update(target=target_of(s), gcg_loss=None, attacked_model=model.name)
                items.append(
                    GenItem(f"no_suffix|{s.id}", s, [{"role": "user", "content": s.prompt}], extra=extra)
                )
    records: list[dict[str, Any]] = []
    for m in [model, *transfer]:
        mine = [GenItem(f"{m.name}|{it.key}", it.sample, it.conversation, extra=it.extra) for it in items]
        records += generate_and_judge(m, mine, EVAL_STAGE, generation, judge, run, progress=progress)
    return GCGAttackResult(success_table(records), suffixes, records, list(opt_records.values()))


def success_table(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Attack success (harmful or non-refusal rate, named) per ``"<model> | <split>"`` of ``gcg_eval`` records."""
    keys = sorted({(str(r["model"]), str(r["split"])) for r in records})
    return {
        f"{m} | {split}": attack_success(
            [r for r in records if r["model"] == m and r["split"] == split]
        ).to_dict()
        for m, split in keys
    }


def evaluate_suffix(
    models: Sequence[ChatModel],
    samples: Sequence[Sample],
    suffix: str,
    judge: Judge,
    run: RunDir | None = None,
    generation: GenerationConfig | None = None,
    template: str = DEFAULT_TEMPLATE,
    split: str = "held_out",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Answer ``samples`` carrying a given ``suffix`` (e.g. a universal suffix found elsewhere) with each
    model and judge them; records go to stage ``gcg_eval`` with ``split``. Returns the records."""
    generation = generation or GenerationConfig(max_new_tokens=64)
    records: list[dict[str, Any]] = []
    for m in models:
        items = []
        for s in samples:
            chat = fill_suffix(attack_chat(s, template), suffix)
            extra = {
                "split": split,
                "suffix_key": "given",
                "suffix": suffix,
                "attack_prompt": chat[-1]["content"],
                "target": target_of(s),
                "gcg_loss": None,
                "attacked_model": None,
            }
            items.append(GenItem(f"{m.name}|{split}|{s.id}", s, chat, extra=extra))
        records += generate_and_judge(m, items, EVAL_STAGE, generation, judge, run, progress=progress)
    return records
