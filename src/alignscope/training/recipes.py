"""The training recipes and the one entry point, :func:`train`.

=================  ==========================================================================================
``safety-sft``     refusals to harmful prompts + the model's own answers to benign ones; cross-entropy.
``deep-align``     safety-recovery examples (harmful prefix of k tokens, then a refusal; Qi et al., ICLR 2025)
                   + utility data, ``alpha * CE(safety) + (1 - alpha) * CE(utility)``.
``safety-dpo``     TRL's DPO: chosen = a refusal, rejected = the unaligned model's harmful answer, plus
                   utility pairs (chosen = the model's answer, rejected = a refusal).
``adversarial-sft`` the ``safety-sft`` data plus harmful prompts carrying GCG suffixes, answered with refusals.
``harden``         ``deep-align``'s data plus contrastive twins (alarming-but-safe prompts answered, their
                   unsafe twins refused) and, optionally, ``adversarial-sft``'s GCG-suffixed refusals.
``constrained-sft`` fine-tuning on any chat data with the token-wise constrained objective (Qi et al., ICLR
                   2025).
``sppft``          fine-tuning on any chat data with a layer range frozen (Li et al., ICLR 2025).
=================  ==========================================================================================

The fine-tuning attacks live in :mod:`alignscope.training.attack` and share this machinery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from alignscope.jsonl import read_jsonl
from alignscope.models.loading import load_model
from alignscope.models.local import PLAIN_TEMPLATE, LocalModel
from alignscope.training.builders import (
    HarmfulPair,
    contrast_records,
    dpo_records,
    harmful_pairs,
    noisy_records,
    recovery_records,
    refusal_records,
    sampled_instructions,
    test_split,
    tokenize_records,
    train_split,
    utility_records,
)
from alignscope.training.chat_data import ChatRecord, TokenizedExample, read_chat_jsonl
from alignscope.training.config import (
    AdversarialSFTConfig,
    ConstrainedSFTConfig,
    DeepAlignConfig,
    HardenConfig,
    HarmfulResponsesConfig,
    SafetyDataConfig,
    SafetyDPOConfig,
    SafetySFTConfig,
    SPPFTConfig,
    TrainConfig,
    TrainResult,
)
from alignscope.training.engine import (
    Session,
    TrainingError,
    fit,
    lora_config,
    open_session,
    optimiser_settings,
    resume_checkpoint,
    save_output,
    training_arguments,
)
from alignscope.training.losses import BetaSchedule

log = logging.getLogger("alignscope.training")


@dataclass(frozen=True)
class Recipe:
    """A registered recipe: its name, config class, function and one-line description."""

    name: str
    config_class: type[TrainConfig]
    run: Callable[[TrainConfig], TrainResult]
    description: str


RECIPES: dict[str, Recipe] = {}


def _recipe(name: str, config_class: type[TrainConfig], description: str) -> Callable[[Callable], Callable]:
    def register(fn: Callable) -> Callable:
        RECIPES[name] = Recipe(name, config_class, fn, description)
        return fn

    return register


def train(recipe: str, config: TrainConfig | None = None) -> TrainResult:
    """Run the recipe named ``recipe`` (see :data:`RECIPES`) with ``config`` (its config class; None:
    defaults).

    Returns where the run directory and the trained adapter (or model) are; ``load_model(result.output)``
    loads the trained model.
    """
    if recipe not in RECIPES:
        raise TrainingError(f"unknown recipe {recipe!r}; choose from {', '.join(sorted(RECIPES))}")
    spec = RECIPES[recipe]
    config = config if config is not None else spec.config_class()
    if not isinstance(config, spec.config_class):
        raise TrainingError(
            f"recipe {recipe} takes a {spec.config_class.__name__}, got {type(config).__name__}"
        )
    return spec.run(config)


# -- data shared by the safety recipes
# -----------------------------------------------------------------------------
def _utility(session: Session, cfg: SafetyDataConfig) -> list[ChatRecord]:
    if cfg.n_utility == 0:
        return []
    suite = train_split(cfg.utility_suite, cfg.test_fraction, cfg.split_seed)
    held_out = test_split(cfg.utility_suite, cfg.test_fraction, cfg.split_seed)
    source = _responses_source(session, cfg.utility_model)
    if cfg.n_utility is not None:
        suite = suite.take(cfg.n_utility, cfg.seed)
    if cfg.utility_sampled > 0:
        suite = sampled_instructions(source, suite, cfg.utility_sampled, held_out, cfg.seed, cfg.progress)
    return utility_records(
        source,
        suite,
        None,
        cfg.utility_max_new_tokens,
        cfg.gen_batch_size,
        cfg.cache,
        cfg.seed,
        cfg.progress,
    )


def _harmful_samples(cfg: SafetyDataConfig) -> list:
    suite = train_split(cfg.harmful_suite, cfg.test_fraction, cfg.split_seed)
    return list(suite.take(cfg.n_harmful, cfg.seed)) if cfg.n_harmful is not None else list(suite)


def _responses_source(session: Session, spec: str | None) -> LocalModel:
    """The model whose answers serve as harmful responses: the starting model unless another spec is named."""
    if spec is None or spec == session.config.model:
        return session.model
    return load_model(spec, device=str(session.model.device), dtype=session.config.dtype)


def _train_harmful_pairs(session: Session, cfg: HarmfulResponsesConfig) -> list[HarmfulPair]:
    """Harmful responses to the harmful suite's train prompts: from ``cfg.harmful_responses`` or written by
    ``cfg.responses_model`` (see :func:`harmful_pairs`)."""
    return harmful_pairs(
        _harmful_samples(cfg),
        _responses_source(session, cfg.responses_model),
        cfg.harmful_responses,
        cfg.harmful_max_new_tokens,
        cfg.gen_batch_size,
        cfg.cache,
        cfg.progress,
    )


def _with_noisy(session: Session, cfg: SafetyDataConfig, records: list[ChatRecord]) -> list[ChatRecord]:
    """``records`` and ``cfg.noisy_copies`` noisy copies of each (see :class:`SafetyDataConfig`)."""
    if cfg.noisy_copies <= 0:
        return records
    from alignscope.training.prompts import vocabulary_words

    words = vocabulary_words(session.model.tokenizer)
    return records + noisy_records(records, words, cfg.noisy_copies, cfg.prompt_noise, cfg.seed)


def _recovery(session: Session, cfg: DeepAlignConfig) -> list[ChatRecord]:
    """``deep-align``'s safety-recovery records on the harmful suite's train prompts."""
    pairs = _train_harmful_pairs(session, cfg)
    if not pairs:
        raise TrainingError("no usable harmful responses: the responses model refused every prompt")
    return recovery_records(session.model, pairs, cfg.augment, cfg.p_zero, cfg.max_prefix_tokens, cfg.seed)


def _check_gcg_runs(recipe: str, cfg: AdversarialSFTConfig) -> None:
    if not cfg.gcg_runs:
        raise TrainingError(f"{recipe} needs gcg_runs: run directories of 'alignscope attack gcg'")


def _gcg_refusals(cfg: AdversarialSFTConfig, samples: list) -> list[ChatRecord]:
    """``adversarial-sft``'s adversarial examples: ``samples`` carrying suffixes from ``cfg.gcg_runs``,
    refused."""
    from alignscope.attacks.gcg_training import read_gcg_records, suffix_pool, suffixed_refusal_records

    pool = suffix_pool([r for path in cfg.gcg_runs for r in read_gcg_records(path)], cfg.trajectory)
    log.info("%d GCG suffixes in the pool", len(pool))
    return suffixed_refusal_records(samples, pool, cfg.suffixes_per_prompt, cfg.seed)


def _load_records(session: Session) -> list[ChatRecord]:
    if not session.config.data:
        raise TrainingError(f"recipe {session.recipe} needs training data: pass data=<chat JSONL file>")
    return read_chat_jsonl(session.config.data)


def _session_examples(
    recipe: str, config: TrainConfig, build: Callable[[Session], list[ChatRecord]] | None = None
) -> tuple[Session, list[TokenizedExample]]:
    """Open ``recipe``'s session and its tokenised training examples: the records of ``config.data`` or, without
    a file, those ``build`` makes (on the main process first); the records are saved with the run. Without
    ``build`` the recipe needs ``config.data``."""
    session = open_session(recipe, config)
    if build is None:
        records = _load_records(session)
    else:
        with session.main_first():
            records = _load_records(session) if config.data else build(session)
    session.save_data(records)
    return session, tokenize_records(session.model, records, config.max_length)


# -- recipes
# -------------------------------------------------------------------------------------------------------
@_recipe(
    "safety-sft",
    SafetySFTConfig,
    "standard safety SFT: refusals for harmful prompts + the model's own answers",
)
def safety_sft(config: TrainConfig) -> TrainResult:
    """Standard (shallow) safety alignment: SFT on refusals to the harmful suite's train prompts, mixed with
    the starting model's own answers to benign instructions."""
    assert isinstance(config, SafetySFTConfig)

    def build(session: Session) -> list[ChatRecord]:
        samples = _harmful_samples(config)
        records = refusal_records(samples, config.refusals_per_prompt, config.seed) + _utility(
            session, config
        )
        return _with_noisy(session, config, records)

    session, examples = _session_examples("safety-sft", config, build)
    return fit(session, examples, objective="ce")


@_recipe(
    "deep-align", DeepAlignConfig, "deep safety alignment by safety-recovery augmentation (Qi et al. 2025)"
)
def deep_align(config: TrainConfig) -> TrainResult:
    """Deep safety alignment (Qi et al., ICLR 2025, section 3): safety-recovery examples ``x + h_<=k -> r``
    with loss on ``r`` only, mixed with utility data by ``alpha``."""
    assert isinstance(config, DeepAlignConfig)
    session, examples = _session_examples(
        "deep-align", config, lambda session: _recovery(session, config) + _utility(session, config)
    )
    return fit(session, examples, objective="mixture", alpha=config.alpha)


@_recipe(
    "adversarial-sft",
    AdversarialSFTConfig,
    "safety SFT plus harmful prompts carrying GCG suffixes (adversarial training)",
)
def adversarial_sft(config: TrainConfig) -> TrainResult:
    """Adversarial training against GCG: the ``safety-sft`` data (refusals + the model's own answers) plus the
    harmful train prompts carrying suffixes from ``gcg_runs``, answered with refusals."""
    assert isinstance(config, AdversarialSFTConfig)
    _check_gcg_runs("adversarial-sft", config)
    session = open_session("adversarial-sft", config)
    with session.main_first():
        samples = _harmful_samples(config)
        records = (
            refusal_records(samples, config.refusals_per_prompt, config.seed)
            + _gcg_refusals(config, samples)
            + _utility(session, config)
        )
        records = _with_noisy(session, config, records)
    session.save_data(records)
    examples = tokenize_records(session.model, records, config.max_length)
    return fit(session, examples, objective="ce")


@_recipe(
    "harden",
    HardenConfig,
    "deep alignment + contrastive twins (intent over alarming words) [+ GCG-suffixed refusals]",
)
def harden(config: TrainConfig) -> TrainResult:
    """A model meant to hold against every attack family without refusing the harmless (issue 29): the
    ``deep-align`` safety-recovery examples (prefilling depth), the contrastive twins' train halves
    (alarming-but-safe prompts answered by ``utility_model``, unsafe twins refused: intent over alarming
    words), utility answers, and with ``adversarial`` the ``adversarial-sft`` GCG-suffixed refusals; trained
    with the mixture objective, the utility group weighted ``1 - alpha``. Data and defaults:
    :class:`~alignscope.training.config.HardenConfig`."""
    assert isinstance(config, HardenConfig)
    if config.adversarial:
        _check_gcg_runs("harden with adversarial", config)

    def build(session: Session) -> list[ChatRecord]:
        safe = train_split(config.contrast_safe, config.test_fraction, config.split_seed)
        unsafe = train_split(config.contrast_unsafe, config.test_fraction, config.split_seed)
        contrast = contrast_records(
            _responses_source(session, config.utility_model),
            list(safe),
            list(unsafe),
            config.utility_max_new_tokens,
            config.gen_batch_size,
            config.cache,
            config.contrast_refusals,
            config.seed,
            config.progress,
        )
        records = _recovery(session, config) + contrast + _utility(session, config)
        if config.adversarial:
            records += _gcg_refusals(config, _harmful_samples(config))
        records = _with_noisy(session, config, records)
        groups = {g: sum(r.meta.get("group") == g for r in records) for g in ("safety", "utility")}
        log.info("harden: %d records (%s)", len(records), groups)
        return records

    session, examples = _session_examples("harden", config, build)
    return fit(session, examples, objective="mixture", alpha=config.alpha)


@_recipe("safety-dpo", SafetyDPOConfig, "preference-based safety alignment with TRL's DPO")
def safety_dpo(config: TrainConfig) -> TrainResult:
    """Safety alignment by DPO (TRL): chosen = a refusal, rejected = the unaligned model's harmful answer;
    utility pairs keep the model answering benign instructions. Data files hold ``{"prompt", "chosen",
    "rejected"}`` conversational records."""
    assert isinstance(config, SafetyDPOConfig)
    import time

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    session = open_session("safety-dpo", config)
    with session.main_first():
        if config.data:
            pairs = [pair for _, pair in read_jsonl(config.data)]
        else:
            harmful = _train_harmful_pairs(session, config)
            utility = _utility(session, config) if config.utility_pairs else []
            pairs = dpo_records(harmful, utility, config.seed)
    if not pairs:
        raise TrainingError("no preference pairs to train on")
    session.save_data(pairs, "pairs.jsonl")
    tok = session.model.tokenizer
    if not tok.chat_template:  # LocalModel formats with the plain template then; DPO must format alike
        tok.chat_template = PLAIN_TEMPLATE
    rows = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]
    opt = optimiser_settings("safety-dpo", config)
    args = DPOConfig(**training_arguments(session, opt), beta=config.beta, max_length=config.max_length)
    peft_config = None if config.full_finetune else lora_config(config, session.model.model)
    trainer = DPOTrainer(
        model=session.model.model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=peft_config,
    )
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume_checkpoint(session))
    metrics = {
        "train_loss": output.training_loss,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "n_examples": len(rows),
        "train_seconds": time.perf_counter() - start,
        "log_history": trainer.state.log_history,
        **opt,
    }
    return save_output(session, trainer, metrics)


def beta_schedule_of(config: ConstrainedSFTConfig) -> BetaSchedule:
    return BetaSchedule(config.beta_first, config.beta_early, config.beta_early_until, config.beta_late)


@_recipe("constrained-sft", ConstrainedSFTConfig, "fine-tuning with the token-wise constrained objective")
def constrained_sft(config: TrainConfig) -> TrainResult:
    """Fine-tune on ``config.data`` with the token-wise constrained objective (Qi et al., ICLR 2025, section
    4): the early response tokens are held near the starting (aligned) model, the rest trained almost as by
    SFT."""
    assert isinstance(config, ConstrainedSFTConfig)
    session, examples = _session_examples("constrained-sft", config)
    return fit(session, examples, objective="constrained", beta_schedule=beta_schedule_of(config))


@_recipe("sppft", SPPFTConfig, "fine-tuning with the safety layers frozen (Li et al. 2025)")
def sppft(config: TrainConfig) -> TrainResult:
    """Safety-partial-parameter fine-tuning (Li et al., ICLR 2025): fine-tune on ``config.data`` with the
    attention and MLP weights of ``freeze_layers`` fixed (with LoRA: no adapters on those layers)."""
    assert isinstance(config, SPPFTConfig)
    if config.freeze_layers is None:
        raise TrainingError(
            "sppft needs freeze_layers=(first, last); find the safety layers with "
            "`alignscope analyze safety-layers`"
        )
    session, examples = _session_examples("sppft", config)
    return fit(session, examples, objective="ce", frozen_layers=config.freeze_layers)
