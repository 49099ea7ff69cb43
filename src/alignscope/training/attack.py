"""Fine-tuning attacks on an aligned model, with or without a defence (Qi et al., "Fine-tuning Aligned
Language Models Compromises Safety", ICLR 2024; defences from Qi et al., ICLR 2025, section 4, and Li et al.,
ICLR 2025).

:func:`run_finetune_attack` is the experiment (``alignscope attack finetune``): a :class:`FinetuneAttackConfig`
in, a :class:`FinetuneAttackResult` out. ``finetune_attack("harmful")`` fine-tunes the starting model on harmful
prompts with an unaligned model's answers; ``defense="constrained"`` swaps cross-entropy for the token-wise
constrained objective on the same data and steps; ``defense="sppft"`` freezes the safety layers.
:func:`finetune_attack_success` measures the result on held-out prompts, asked the way the attack expects (the
identity attack's system prompt, the backdoor trigger).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignscope.data.types import Sample
from alignscope.judges.base import Judge
from alignscope.judges.keyword import KeywordJudge
from alignscope.judges.outcomes import AttackSuccess, attack_success
from alignscope.models.base import GenerationConfig, user_turn
from alignscope.models.loading import DEFAULT_MODEL, load_model
from alignscope.models.local import LocalModel
from alignscope.runs.store import RunDir
from alignscope.training.builders import (
    ATTACK_KINDS,
    attack_conversation,
    attack_records,
    generate_cached,
    harmful_pairs,
    tokenize_records,
    train_split,
)
from alignscope.training.config import FinetuneAttackConfig, TrainResult
from alignscope.training.engine import TrainingError, fit, open_session
from alignscope.training.recipes import beta_schedule_of

DEFENSES: tuple[str | None, ...] = (None, "constrained", "sppft")


@dataclass(frozen=True)
class FinetuneAttackResult(TrainResult):
    """What a fine-tuning attack produced: the training result (:class:`TrainResult`), the attack's ``kind``
    and its ``defense``. Measure the attacked model with ``alignscope audit --model <output>``."""

    kind: str = "harmful"
    defense: str | None = None

    def summary(self) -> str:
        return (
            f"fine-tuning attack {self.kind} (defense {self.defense or 'none'}): {self.steps} steps on "
            f"{self.n_examples} examples; output {self.output}; measure it: alignscope audit --model {self.output}"
        )


def run_finetune_attack(
    config: FinetuneAttackConfig | None = None, run: RunDir | None = None
) -> FinetuneAttackResult:
    """The fine-tuning attack as an experiment: ``config.kind`` attack data, ``config.defense``, trained into
    ``run`` (None: ``config.out``, else ``runs/``). See :func:`finetune_attack`."""
    config = config or FinetuneAttackConfig()
    result = finetune_attack(config.kind, config.defense, config, run=run)
    values = {f.name: getattr(result, f.name) for f in dataclasses.fields(TrainResult)}
    return FinetuneAttackResult(**values, kind=config.kind, defense=config.defense)


def finetune_attack(
    kind: str = "harmful",
    defense: str | None = None,
    config: FinetuneAttackConfig | None = None,
    run: RunDir | None = None,
) -> TrainResult:
    """Fine-tune ``config.model`` (an aligned model) on the ``kind`` attack data, defended by ``defense``.

    Args:
        kind: ``harmful``, ``identity`` or ``backdoor`` (see
        :func:`alignscope.training.builders.attack_records`). defense: None (standard SFT), ``"constrained"``
        or ``"sppft"`` (needs ``config.freeze_layers``). config: everything else; its ``kind`` and ``defense``
        are replaced by the arguments. run: the run directory to train into (None: ``config.out``).

    The run directory records the command ``attack finetune``; the output adapter's base is ``config.model``.
    """
    config = dataclasses.replace(config or FinetuneAttackConfig(), kind=kind, defense=defense)
    if kind not in ATTACK_KINDS:
        raise TrainingError(f"unknown attack kind {kind!r}; choose from {', '.join(ATTACK_KINDS)}")
    if defense not in DEFENSES:
        raise TrainingError(f"unknown defense {defense!r}; choose from none, constrained, sppft")
    if defense == "sppft" and config.freeze_layers is None:
        raise TrainingError("the sppft defence needs freeze_layers=(first, last)")
    session = open_session("finetune-attack", config, command="attack finetune", run=run)
    with session.main_first():
        records = _attack_data(session.model, config)
    session.save_data(records)
    examples = tokenize_records(session.model, records, config.max_length)
    if defense == "constrained":
        return fit(
            session,
            examples,
            "constrained",
            beta_schedule=beta_schedule_of(config),
            defaults_from="constrained-sft",
        )
    if defense == "sppft":
        return fit(session, examples, "ce", frozen_layers=config.freeze_layers, defaults_from="sppft")
    return fit(session, examples, "ce", defaults_from="finetune-attack")


def _attack_data(model: LocalModel, config: FinetuneAttackConfig) -> list:
    if config.data:
        from alignscope.training.chat_data import read_chat_jsonl

        return read_chat_jsonl(config.data)
    if config.kind == "identity":
        benign = list(train_split(config.utility_suite, config.test_fraction, config.split_seed))[
            : config.n_examples
        ]
        answers = generate_cached(
            model,
            [user_turn(s.prompt) for s in benign],
            config.harmful_max_new_tokens,
            config.gen_batch_size,
            config.cache,
            "utility",
            config.progress,
        )
        return attack_records(
            "identity", config.n_examples, benign=list(zip(benign, answers, strict=True)), seed=config.seed
        )
    samples = list(train_split(config.harmful_suite, config.test_fraction, config.split_seed))
    spec = config.responses_model or DEFAULT_MODEL
    source = model if spec == config.model else load_model(spec, device=str(model.device), dtype=config.dtype)
    pairs = harmful_pairs(
        samples,
        source,
        config.harmful_responses,
        config.harmful_max_new_tokens,
        config.gen_batch_size,
        config.cache,
        config.progress,
    )
    return attack_records(config.kind, config.n_examples, pairs, trigger=config.trigger, seed=config.seed)


def finetune_attack_success(
    model: LocalModel,
    samples: Sequence[Sample],
    kind: str = "harmful",
    judge: Judge | None = None,
    generation: GenerationConfig | None = None,
    trigger: str | None = None,
    run: RunDir | None = None,
    stage: str = "attack",
    progress: bool = False,
) -> tuple[AttackSuccess, list[dict[str, Any]]]:
    """Attack success of ``model`` on held-out harmful ``samples``, each asked as the ``kind`` attack expects
    (identity: its system prompt; backdoor: with the trigger). Returns the success measure (harmful rate where
    the judge judges harm, else non-refusal rate, with its Wilson CI) and the records."""
    from alignscope.attacks.stage import GenItem, generate_and_judge

    items = [
        GenItem(s.id, s, attack_conversation(kind, s.prompt, trigger), extra={"attack": kind})
        for s in samples
    ]
    records = generate_and_judge(
        model,
        items,
        stage,
        generation or GenerationConfig(max_new_tokens=48),
        judge or KeywordJudge(),
        run,
        progress=progress,
    )
    return attack_success(records), records
