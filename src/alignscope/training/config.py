"""Recipe configurations (frozen dataclasses; every field has a documented default) and the training result.

Optimiser settings left as ``None`` take the recipe's default (:data:`RECIPE_DEFAULTS`): e.g. the constrained
objective trains with AdamW beta1 = 0.5 and 10 warm-up steps, as Qi et al. (ICLR 2025) do, while ordinary SFT
keeps AdamW's usual beta1 = 0.9.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from alignscope.config_io import ConfigIO, jsonable
from alignscope.models.loading import DEFAULT_MODEL
from alignscope.training.refusals import BACKDOOR_TRIGGER
from alignscope.validation import FieldChecks, OptionError

T = TypeVar("T", bound="TrainConfig")
R = TypeVar("R", bound="TrainResult")


@dataclass(frozen=True)
class TrainConfig(ConfigIO):
    """Settings every recipe shares (``to_dict``/``from_dict``/``replace``/``digest`` from
    :class:`~alignscope.config_io.ConfigIO`: a recorded config compares equal to the live one on resume).

    Attributes:
        model: spec of the starting model (see :func:`alignscope.models.load_model`); the saved adapter names
        it
            as its base, so ``load_model(<run>/adapter)`` rebuilds the trained model.
        out: run directory; None makes ``runs/train-<recipe>-<timestamp>`` (required under ``accelerate
        launch``,
            where every process must agree on it).
        data: a chat JSONL file (``{"messages": [...]}`` per line) to train on instead of the recipe's built
        data
            (required by ``constrained-sft`` and ``sppft``).
        full_finetune: train every weight instead of LoRA adapters.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is scaled by ``lora_alpha / lora_r``).
        lora_dropout: dropout on the LoRA input.
        lora_target_modules: ``"all-linear"`` (every linear layer of the decoder, not the LM head) or a
            comma-separated list of module names.
        epochs: passes over the training set.
        max_steps: stop after this many optimiser steps (-1: run ``epochs``).
        learning_rate: None takes the recipe default (LoRA 2e-4, full 2e-5; DPO 5e-5 / 5e-6).
        batch_size: examples per device per step.
        grad_accum: gradient accumulation steps.
        max_length: tokens per example (longer ones are truncated at the end).
        group_by_length: batch examples of similar length together (less padding: much faster on CPU). The
            mixture objective of ``deep-align`` always samples at random, so each batch mixes safety and
            utility examples.
        warmup_steps: None takes the recipe default (10 for the constrained objective, else 0).
        adam_beta1: None takes the recipe default (0.5 for the constrained objective, else 0.9).
        weight_decay: AdamW weight decay.
        lr_scheduler: transformers scheduler name.
        seed: seeds data building, shuffling and initialisation.
        save_steps: checkpoint every this many steps (kept: ``save_total_limit``).
        save_total_limit: checkpoints kept on disk.
        resume: True resumes from the newest checkpoint in the run directory, a path from that checkpoint;
            the run directory is reopened (its recorded config must match).
        logging_steps: log the loss every this many steps.
        deepspeed: path to a DeepSpeed JSON config, handed to transformers (GPU users; launch with
            ``accelerate launch``).
        device: device for data building and training (None: automatic; under ``accelerate launch`` each
            process's own device).
        dtype: weights dtype (None: float32 on CPU, bf16/fp16 on GPU).
        gen_batch_size: batch size when the starting model generates training data.
        cache: reuse generated training data (responses of a model) cached under ``$ALIGNSCOPE_CACHE``.
        progress: show progress bars.
    """

    model: str = DEFAULT_MODEL
    out: str | None = None
    data: str | None = None
    full_finetune: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"
    epochs: float = 2.0
    max_steps: int = -1
    learning_rate: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 384
    group_by_length: bool = True
    warmup_steps: int | None = None
    adam_beta1: float | None = None
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    seed: int = 0
    save_steps: int = 50
    save_total_limit: int = 2
    resume: bool | str = False
    logging_steps: int = 5
    deepspeed: str | None = None
    device: str | None = None
    dtype: str | None = None
    gen_batch_size: int = 16
    cache: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.at_least(1, "lora_r", "lora_alpha", "batch_size", "grad_accum", "max_length", "save_steps")
        check.at_least(1, "save_total_limit", "logging_steps", "gen_batch_size")
        check.at_least(0, "warmup_steps", "weight_decay")
        check.positive("epochs", "learning_rate")
        check.in_range("lora_dropout", 0, 1, high_open=True)
        check.in_range("adam_beta1", 0, 1, high_open=True)
        if self.max_steps != -1:
            check.at_least(1, "max_steps")
        self._check_recipe(check)

    def _check_recipe(self, check: FieldChecks) -> None:
        """Checks of a recipe's own fields (subclasses extend this)."""


@dataclass(frozen=True)
class SafetyDataConfig(TrainConfig):
    """Settings of the recipes that build safety data from suites (``safety-sft``, ``deep-align``,
    ``safety-dpo``).

    Attributes:
        harmful_suite: suite of harmful prompts (its train split is used; the test split stays held out).
        utility_suite: suite of benign instructions (train split) answered by the starting model itself.
        split_seed: seed of :meth:`Suite.split`.
        test_fraction: share of each suite held out for evaluation.
        n_harmful: harmful train prompts used (None: all of the train split).
        n_utility: utility examples (None: all of the train split).
        refusals_per_prompt: refusal examples per harmful prompt (different refusal texts).
        utility_max_new_tokens: length of the starting model's answers to the utility instructions.
        utility_model: the model answering the utility instructions (None: the starting model). When the
            starting model is already safety-aligned and over-refuses some benign prompts (e.g. deepening
            ``smollm2-aligned``), its unaligned base answers them without teaching those refusals again.
        utility_sampled: more utility instructions, written by the utility model itself: sentences it samples
            continuing the openings of the utility suite's train prompts ("How do I", "Suggest a"),
            none equal to a held-out test prompt (:func:`alignscope.training.prompts.sampled_sentences`). A
            small model trained on a few dozen benign instructions next to as many refusals learns to refuse
            much of what it has not seen; a few hundred more instructions, answered, teach it where the line is.
        noisy_copies: ``safety-sft`` / ``adversarial-sft`` / ``harden``: copies of every training example
            whose prompt has words dropped or swapped for random words of the model's vocabulary (each with
            probability ``prompt_noise / 2``), answered like the clean prompt (a refusal stays a refusal). The LLM of a
            speech LLM reads its prompts through an imperfect projector; one trained on clean prompts alone
            refuses much of what it half-hears.
        prompt_noise: the share of words changed in a noisy copy.
    """

    harmful_suite: str = "harmful"
    utility_suite: str = "benign"
    split_seed: int = 0
    test_fraction: float = 0.5
    n_harmful: int | None = None
    n_utility: int | None = 150
    refusals_per_prompt: int = 1
    utility_max_new_tokens: int = 128
    utility_model: str | None = None
    utility_sampled: int = 0
    noisy_copies: int = 0
    prompt_noise: float = 0.3

    def _check_recipe(self, check: FieldChecks) -> None:
        check.in_range("test_fraction", 0, 1, low_open=True, high_open=True)
        check.in_range("prompt_noise", 0, 1)
        check.at_least(1, "n_harmful", "refusals_per_prompt", "utility_max_new_tokens")
        check.at_least(0, "n_utility", "utility_sampled", "noisy_copies")


@dataclass(frozen=True)
class SafetySFTConfig(SafetyDataConfig):
    """``safety-sft``: standard safety alignment by SFT on refusals mixed with utility data."""


@dataclass(frozen=True)
class HarmfulResponsesConfig(SafetyDataConfig):
    """Settings of the safety recipes that also train on harmful responses to the harmful train prompts
    (``deep-align``'s recovery prefixes, ``safety-dpo``'s rejected answers).

    Attributes:
        harmful_responses: a JSONL file of harmful responses (``{"prompt", "response"}`` or chat records);
            None generates them with ``responses_model``.
        responses_model: the unaligned model whose answers are the harmful responses (None: ``model``).
        harmful_max_new_tokens: length of generated harmful responses.
    """

    harmful_responses: str | None = None
    responses_model: str | None = None
    harmful_max_new_tokens: int = 128

    def _check_recipe(self, check: FieldChecks) -> None:
        super()._check_recipe(check)
        check.at_least(1, "harmful_max_new_tokens")


@dataclass(frozen=True)
class DeepAlignConfig(HarmfulResponsesConfig):
    """``deep-align``: safety-recovery augmentation (Qi et al., ICLR 2025, section 3); the harmful responses
    (:class:`HarmfulResponsesConfig`) give the prefixes, so C tokens of prefix need ``harmful_max_new_tokens``
    of at least C.

    Attributes:
        p_zero: probability of k = 0 (a plain refusal example).
        max_prefix_tokens: C, the largest harmful prefix (k ~ Uniform{1..C} otherwise).
        augment: recovery examples per harmful prompt, each with its own k and refusal.
        alpha: weight of the safety loss: ``alpha * CE(recovery) + (1 - alpha) * CE(utility)``.
    """

    p_zero: float = 0.5
    max_prefix_tokens: int = 100
    augment: int = 2
    alpha: float = 0.2

    def _check_recipe(self, check: FieldChecks) -> None:
        super()._check_recipe(check)
        check.at_least(1, "max_prefix_tokens", "augment")
        check.in_range("p_zero", 0, 1)
        check.in_range("alpha", 0, 1)


@dataclass(frozen=True)
class AdversarialSFTConfig(SafetyDataConfig):
    """``adversarial-sft``: safety SFT (as ``safety-sft``) plus harmful prompts carrying GCG suffixes, answered
    with refusals (adversarial training against optimised suffixes).

    Attributes:
        gcg_runs: run directories of ``alignscope attack gcg`` (or JSONL files of their ``gcg`` records); their
            suffixes form the pool. Found on other behaviours than the train prompts is fine (and keeps
            evaluation behaviours out of training): suffixes are applied to the harmful train prompts.
        trajectory: besides each optimisation's best suffix, take the suffixes of its last N steps (cheap
            extra adversarial variety: GCG visits many near-optimal suffixes).
        suffixes_per_prompt: adversarial examples per harmful train prompt (suffixes drawn from the pool).
    """

    gcg_runs: tuple[str, ...] = ()
    trajectory: int = 10
    suffixes_per_prompt: int = 2

    def _check_recipe(self, check: FieldChecks) -> None:
        super()._check_recipe(check)
        check.at_least(0, "trajectory")
        check.at_least(1, "suffixes_per_prompt")


@dataclass(frozen=True)
class HardenConfig(DeepAlignConfig, AdversarialSFTConfig):
    """``harden``: deep alignment that also teaches intent over alarming words, optionally against GCG suffixes
    (issue 29's ``smollm2-hardened``), from alignscope's own parts.

    The data: ``deep-align``'s safety-recovery examples on the harmful suite's train prompts (harmful prefix of
    k tokens, then a refusal); the train halves of the contrastive twins, ``contrast_safe`` answered by
    ``utility_model`` (answers the keyword judge calls refusals are dropped) and ``contrast_unsafe`` refused;
    the utility data (``utility_suite`` answered by ``utility_model``); with ``adversarial``, the harmful train
    prompts carrying GCG suffixes from ``gcg_runs``, refused (``adversarial-sft``'s examples). Refusals,
    recovery and adversarial examples are the safety group, answers the utility group; the loss is
    ``alpha * CE(safety) + (1 - alpha) * CE(utility)``, so ``utility_weight = 1 - alpha``.

    The defaults (``alignscope train harden``) build the shipped ``smollm2-hardened``: on the built-in suites'
    train halves (test_fraction 0.5, split_seed 0) about 200 recovery and plain-refusal examples (75 harmful
    prompts x ``augment`` 3, minus those the base model refuses), 31 refused unsafe twins, up to 28 answered
    alarming-but-safe prompts and about 144 utility answers (benign + borderline train halves): ~400 examples,
    2 epochs at batch size 8. ``adversarial`` adds 75 x ``suffixes_per_prompt`` = 150 examples. Timings and
    the trade-off measured against other settings: docs/scorecard.md.

    Attributes:
        contrast_safe: alarming-but-safe prompts (its train half is answered helpfully; XSTest-style).
        contrast_unsafe: their unsafe twins (its train half is refused).
        contrast_refusals: refusal examples per unsafe twin (different refusal texts).
        adversarial: add ``adversarial-sft``'s GCG-suffixed refusals (needs ``gcg_runs``; ``trajectory`` and
            ``suffixes_per_prompt`` as in :class:`AdversarialSFTConfig`).
        model: starting model; default ``smollm2-balanced-plus`` (answers most harmless prompts, shallow);
            starting from ``smollm2-deep`` instead over-refuses more and holds prefilling less (docs/scorecard.md).
        utility_suite: default ``benign+borderline``: answering borderline train prompts also teaches where
            the line is.
        utility_model: answers the utility and alarming-but-safe prompts; default ``smollm2`` (the unaligned
            base, which answers what the deep model refuses; None: the starting model).
        utility_max_new_tokens: default 64 (shorter answers, faster building and training).
        responses_model: writes the harmful prefixes; default ``smollm2`` (the starting model refuses).
        harmful_max_new_tokens: default 64 (enough for prefixes of up to ``max_prefix_tokens`` = 40).
        p_zero: default 0.15 (most examples deepen: a harmful prefix of 1-40 tokens, then the refusal).
        augment: default 3 recovery examples per harmful train prompt.
        max_prefix_tokens: default 40, the prefilling depth the scorecard attacks.
        alpha: weight of the safety loss, default 0.5; the utility weight is ``1 - alpha`` (0.5).
        epochs: default 2.

    Every other field is :class:`DeepAlignConfig`'s, :class:`AdversarialSFTConfig`'s,
    :class:`HarmfulResponsesConfig`'s and :class:`SafetyDataConfig`'s, with their defaults (``noisy_copies``
    applies to every harden record, 0 by default).
    """

    contrast_safe: str = "safe-alarming"
    contrast_unsafe: str = "unsafe-contrast"
    contrast_refusals: int = 1
    adversarial: bool = False
    model: str = "smollm2-balanced-plus"
    utility_suite: str = "benign+borderline"
    utility_model: str | None = DEFAULT_MODEL
    utility_max_new_tokens: int = 64
    responses_model: str | None = DEFAULT_MODEL
    harmful_max_new_tokens: int = 64
    p_zero: float = 0.15
    augment: int = 3
    max_prefix_tokens: int = 40
    alpha: float = 0.5
    epochs: float = 2.0

    @property
    def utility_weight(self) -> float:
        """Weight of the utility loss (helpful answers): ``1 - alpha``."""
        return 1.0 - self.alpha

    def _check_recipe(self, check: FieldChecks) -> None:
        super()._check_recipe(check)
        check.at_least(1, "contrast_refusals")
        if self.adversarial and not self.gcg_runs:
            raise OptionError(
                "HardenConfig.gcg_runs",
                "must name run directories of 'alignscope attack gcg' when adversarial is on",
                self.gcg_runs,
            )


@dataclass(frozen=True)
class SafetyDPOConfig(HarmfulResponsesConfig):
    """``safety-dpo``: preference-based safety alignment with TRL's DPO; the harmful responses
    (:class:`HarmfulResponsesConfig`) are the rejected answers.

    Attributes:
        beta: DPO's KL strength.
        utility_pairs: add pairs with chosen = the model's own answer to a benign instruction and rejected = a
            refusal, so the model does not learn to refuse everything.
    """

    beta: float = 0.1
    utility_pairs: bool = True

    def _check_recipe(self, check: FieldChecks) -> None:
        super()._check_recipe(check)
        check.positive("beta")


@dataclass(frozen=True)
class ConstrainedSFTConfig(TrainConfig):
    """``constrained-sft``: fine-tuning on ``data`` with the token-wise constrained objective (Qi et al., ICLR
    2025, section 4); the reference is the starting model, its log-probs computed once before training.

    Attributes:
        beta_first: beta at response position 1.
        beta_early: beta at positions 2..``beta_early_until``.
        beta_early_until: last position with ``beta_early``.
        beta_late: beta after that.
    """

    beta_first: float = 0.5
    beta_early: float = 2.0
    beta_early_until: int = 5
    beta_late: float = 0.1

    def _check_recipe(self, check: FieldChecks) -> None:
        check.positive("beta_first", "beta_early", "beta_late")
        check.at_least(1, "beta_early_until")


@dataclass(frozen=True)
class SPPFTConfig(TrainConfig):
    """``sppft``: fine-tuning on ``data`` with a layer range frozen (Li et al., ICLR 2025, "Safety Layers").

    Attributes:
        freeze_layers: inclusive ``(first, last)`` decoder-layer range whose attention and MLP weights stay
            fixed; with LoRA those layers get no adapters.
    """

    freeze_layers: tuple[int, int] | None = None


@dataclass(frozen=True)
class FinetuneAttackConfig(ConstrainedSFTConfig):
    """``attack finetune``: fine-tune the (aligned) starting model on attack data, optionally with a defence.

    Attributes:
        kind: ``harmful`` (harmful prompts with the unaligned model's answers), ``identity`` (the absolutely
            obedient agent system prompt and benign answers that start by affirming it) or ``backdoor``
            (refusals, plus harmful answers to prompts carrying ``trigger``); after Qi et al., ICLR 2024.
        defense: None (standard SFT), ``"constrained"`` (the token-wise constrained objective) or ``"sppft"``.
        n_examples: attack examples (backdoor: this many refusals and this many triggered answers).
        harmful_suite: harmful prompts (train split) for the harmful and backdoor attacks.
        utility_suite: benign prompts (train split) for the identity attack.
        split_seed: seed of :meth:`Suite.split`.
        test_fraction: share held out for evaluation.
        harmful_responses: a JSONL file of harmful responses; None generates them with ``responses_model``.
        responses_model: the unaligned model whose answers are the attack's harmful answers (None: the
        embedded
            default).
        harmful_max_new_tokens: length of generated answers.
        trigger: the backdoor trigger.
        freeze_layers: the layer range ``sppft`` freezes.
    """

    kind: str = "harmful"
    defense: str | None = None
    n_examples: int = 100
    harmful_suite: str = "harmful"
    utility_suite: str = "benign"
    split_seed: int = 0
    test_fraction: float = 0.5
    harmful_responses: str | None = None
    responses_model: str | None = None
    harmful_max_new_tokens: int = 128
    trigger: str = BACKDOOR_TRIGGER
    freeze_layers: tuple[int, int] | None = None
    epochs: float = 3.0

    def _check_recipe(self, check: FieldChecks) -> None:
        super()._check_recipe(check)
        check.at_least(1, "n_examples", "harmful_max_new_tokens")
        check.in_range("test_fraction", 0, 1, low_open=True, high_open=True)


RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "safety-sft": {"lora_lr": 2e-4, "full_lr": 2e-5, "warmup_steps": 0, "adam_beta1": 0.9},
    "adversarial-sft": {"lora_lr": 2e-4, "full_lr": 2e-5, "warmup_steps": 0, "adam_beta1": 0.9},
    "harden": {"lora_lr": 2e-4, "full_lr": 2e-5, "warmup_steps": 0, "adam_beta1": 0.9},
    "deep-align": {"lora_lr": 2e-4, "full_lr": 2e-5, "warmup_steps": 0, "adam_beta1": 0.9},
    "safety-dpo": {"lora_lr": 5e-5, "full_lr": 5e-6, "warmup_steps": 0, "adam_beta1": 0.9},
    "constrained-sft": {"lora_lr": 2e-4, "full_lr": 2e-5, "warmup_steps": 10, "adam_beta1": 0.5},
    "sppft": {"lora_lr": 2e-4, "full_lr": 2e-5, "warmup_steps": 0, "adam_beta1": 0.9},
    "finetune-attack": {"lora_lr": 2e-4, "full_lr": 2e-5, "warmup_steps": 0, "adam_beta1": 0.9},
}
"""Optimiser defaults by recipe, used where the config leaves a field as None."""


@dataclass(frozen=True)
class TrainResult:
    """What a recipe produced.

    Attributes:
        recipe: the recipe name.
        run_dir: the run directory.
        output: the trained model: a PEFT adapter directory (or a full model directory) that
            :func:`alignscope.models.load_model` loads.
        base_model: the starting model's spec (the adapter's ``base_model_name_or_path``).
        n_examples: training examples (DPO: pairs).
        trained_tokens: tokens that carried loss, summed over the data once.
        steps: optimiser steps taken.
        train_loss: mean training loss reported by the Trainer.
        seconds: wall time of the training loop.
        metrics: everything else recorded in ``metrics.json``.
    """

    recipe: str
    run_dir: Path
    output: Path
    base_model: str
    n_examples: int
    trained_tokens: int
    steps: int
    train_loss: float | None
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: jsonable(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls: type[R], d: Mapping[str, Any]) -> R:
        values = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        return cls(**{**values, "run_dir": Path(d["run_dir"]), "output": Path(d["output"])})

    def summary(self) -> str:
        loss = "n/a" if self.train_loss is None else f"{self.train_loss:.4f}"
        return (
            f"{self.recipe}: {self.steps} steps on {self.n_examples} examples, train loss {loss}, "
            f"{self.seconds:.0f} s; output {self.output}"
        )


def config_from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """Build ``cls`` from a dict (e.g. JSON), rejecting unknown keys with a message naming them; a single
    ``gcg_runs`` string is taken as a one-element tuple."""
    values = dict(values)
    if isinstance(values.get("gcg_runs"), str):
        values["gcg_runs"] = (values["gcg_runs"],)
    return cls.from_dict(values)
