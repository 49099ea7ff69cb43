"""Adversarial training of the projector: PGD examples with refusal targets mixed into distillation.

SpeechGuard (Peri et al. 2024) proposes TDNF as the defence; adversarial training is the classic alternative
(Madry et al. 2018). Here only the projector is trained, on transformers' Trainer through the build's machinery
(:class:`~alignscope.speech.build.distill.ProjectorTrainer`, objective ``distill``):

1. spoken versions of harmful *train-split* questions are attacked with audio PGD against the current
   projector (target ``"Sure, here is"``, budget e.g. ``snr:30``);
2. each adversarial clip becomes a distillation example whose teacher is the LLM reading the *clean
   transcript*. For a safety-aligned LLM that answer is a refusal, so the example's target is a refusal
   (``require_refusal`` keeps only examples whose teacher answer the keyword judge calls a refusal);
3. clean spoken examples (harmful and benign train questions, the build's distillation data) are mixed in, so
   the projector keeps answering benign questions;
4. repeat for ``rounds`` (each round attacks the projector the previous round produced).

The hardened projector is saved like a build (``<out>/projector``, loadable with
:func:`~alignscope.speech.model.loading.load_slm`) with its provenance. With ``eval_n > 0`` the effect is measured on
held-out (test-split) spoken questions: white-box PGD success and benign answered rate, before and after.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from alignscope.models.base import GenerationConfig, user_turn
from alignscope.speech.attacks.config import parse_budget
from alignscope.speech.attacks.pgd import AudioPGDConfig, audio_pgd
from alignscope.speech.config_io import SpeechConfigIO
from alignscope.speech.errors import SpeechError, SpeechOptionError
from alignscope.speech.model.projector import CONFIG_FILE, Projector
from alignscope.speech.model.slm import SpeechLM
from alignscope.validation import FieldChecks

log = logging.getLogger("alignscope.speech.build.adversarial")

__all__ = [
    "AdversarialTrainingConfig",
    "AdversarialTrainingResult",
    "adversarial_examples",
    "adversarial_train",
    "measure_hardening",
]


@dataclass(frozen=True)
class AdversarialTrainingConfig(SpeechConfigIO):
    """Settings of projector adversarial training; every field has a default.

    Attributes:
        slm: spec of the speech LLM to harden (:func:`~alignscope.speech.model.loading.load_speech_model`).
        out: output directory (None: ``$ALIGNSCOPE_CACHE/speech/adversarial/<digest>``).
        harmful_suites: suites whose train-split questions are attacked.
        clean_suites: suites whose train-split questions give the clean distillation examples mixed in.
        n_adversarial: harmful train questions attacked per round (None: all).
        n_clean: clean questions mixed in (None: all), one spoken version each.
        voices, rates, pitches, lead_silence: the speech (as in the build).
        budget: PGD budget of the training attacks (``snr:<dB>`` or ``linf:<eps>``).
        pgd_steps, step_size: PGD of the training attacks (early stop on success).
        target: the response start the attacks aim at.
        rounds: attack-then-train rounds.
        steps_per_round: optimiser steps per round.
        lr: peak learning rate (cosine schedule, 5 % warm-up).
        batch_size: examples per step.
        temperature, kl_direction: the distillation loss (as in the build).
        distill_tokens: length of the teacher's greedy answers (the response positions distilled on).
        require_refusal: keep only adversarial examples whose teacher answer the keyword judge calls a refusal.
        test_fraction, split_seed: the suites' train/test split (the build's).
        autocast: bfloat16 autocast for the LLM.
        eval_n: held-out harmful and benign spoken questions for the before/after measurement (0: none).
        eval_steps: PGD steps of that measurement.
        seed: seeds PGD starts, the speech draws and the data order.
        progress: progress bars.
    """

    settings_name: ClassVar[str] = "adversarial-training"

    slm: str = "default"
    out: str | None = None
    harmful_suites: tuple[str, ...] = ("harmful",)
    clean_suites: tuple[str, ...] = ("harmful", "benign", "borderline")
    n_adversarial: int | None = 64
    n_clean: int | None = 192
    voices: tuple[str, ...] = ("en-us+klatt4", "en-us+klatt3", "en-us+klatt5", "en+klatt4")
    rates: tuple[int, ...] = (150, 175, 200)
    pitches: tuple[int, ...] = (40, 50, 60)
    lead_silence: float = 0.4
    budget: str = "snr:30"
    pgd_steps: int = 30
    step_size: float = 0.1
    target: str = "Sure, here is"
    rounds: int = 1
    steps_per_round: int = 100
    lr: float = 2e-4
    batch_size: int = 8
    temperature: float = 2.0
    kl_direction: str = "reverse"
    distill_tokens: int = 64
    require_refusal: bool = True
    test_fraction: float = 0.5
    split_seed: int = 0
    autocast: bool = True
    eval_n: int = 0
    eval_steps: int = 60
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        parse_budget(self.budget)
        check = FieldChecks(self, SpeechOptionError)
        check.at_least(
            1, "rounds", "steps_per_round", "pgd_steps", "batch_size", "distill_tokens", "eval_steps"
        )
        check.at_least(1, "n_adversarial", "n_clean")
        check.at_least(0, "eval_n", "lead_silence")
        check.positive("lr", "step_size", "temperature")
        check.in_range("test_fraction", 0, 1, low_open=True, high_open=True)
        check.non_empty("voices", "harmful_suites")
        check.each_at_least(1, "rates")

    def pgd(self, steps: int | None = None) -> AudioPGDConfig:
        kind, value = parse_budget(self.budget)
        return AudioPGDConfig(
            budget=kind, eps=value if kind == "linf" else 0.002, snr_db=value if kind == "snr" else 30.0,
            step_size=self.step_size, steps=steps or self.pgd_steps, check_every=5, seed=self.seed,
        )  # fmt: skip

    def digest(self, exclude: Iterable[str] = ("out", "progress", "eval_n", "eval_steps")) -> str:
        """12 hex digits of the SHA-256 of the settings that decide the hardened weights: the cache key of
        ``out`` (where, how verbosely and how much it is measured afterwards do not count)."""
        return super().digest(exclude)


@dataclass
class AdversarialTrainingResult:
    """A finished adversarial training.

    Attributes:
        out: the output directory; ``projector_dir`` holds the hardened projector.
        rounds: per round: training clips attacked, PGD success on them (against the projector of that round),
            median SNR, kept examples, steps, loss, seconds.
        evaluation: before/after on held-out questions (with ``eval_n``).
    """

    out: Path
    projector_dir: Path
    config: AdversarialTrainingConfig
    rounds: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out), "projector_dir": str(self.projector_dir), "config": self.config.to_dict(),
            "rounds": self.rounds, "evaluation": self.evaluation,
        }  # fmt: skip


# -- data -----------------------------------------------------------------------------------------------------
def _target_ids(slm: SpeechLM, text: str, max_tokens: int) -> list[int]:
    """A teacher answer as target ids, with the end of turn when it ended before the limit (as the build)."""
    ids = slm.llm.response_ids(text)[:max_tokens]
    eos = slm.tokenizer.eos_token_id
    return [*ids, int(eos)] if len(ids) < max_tokens and eos is not None else ids


def _teacher_ids(slm: SpeechLM, transcript: str, prefix: list[int]) -> list[int]:
    ids = slm.llm.encode_prompt(user_turn(transcript))
    if ids[: len(prefix)] != prefix:
        raise SpeechError("the teacher's prompt does not start with the spoken prompt's chat prefix")
    return ids[len(prefix) :]


def encode_clip(slm: SpeechLM, wave: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(frames, d_model)`` float32 encoder output of one clip, exactly as ``slm`` computes it (cropped or
    padded to 30 s)."""
    from alignscope.speech.model.features import N_SAMPLES_30S, log_mel

    w = torch.as_tensor(np.asarray(wave, dtype=np.float32) if isinstance(wave, np.ndarray) else wave).float()
    w = w.to(slm.device)
    if not slm.crop:
        w = torch.nn.functional.pad(w, (0, N_SAMPLES_30S - w.numel()))
    dtype = next(slm.encoder.parameters()).dtype
    with torch.inference_mode():
        return slm.encoder(log_mel(w, n_mels=int(slm.encoder.n_mels)).to(dtype))[0].float().cpu()


def adversarial_examples(
    slm: SpeechLM,
    transcripts: Sequence[str],
    waves: Sequence[np.ndarray],
    teacher_answers: Sequence[str],
    config: AdversarialTrainingConfig,
    keys: Sequence[int] | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """Attack each clip with PGD against ``slm`` and turn the adversarial clip into a distillation example whose
    teacher reads the clean transcript (``teacher_answers[i]``, the LLM's greedy answer to it, is the target).

    Returns the examples (:class:`~alignscope.speech.build.distill.SpeechExample`) and statistics: attack success on
    these clips, median SNR, examples dropped because the teacher did not refuse."""
    from tqdm.auto import tqdm

    from alignscope.judges.keyword import KeywordJudge
    from alignscope.speech.build.distill import SpeechExample

    prefix, after = slm.split_prompt(slm.conversation(None))
    refused = [bool(v.refused) for v in KeywordJudge().judge_batch(list(transcripts), list(teacher_answers))]
    examples, successes, snrs, dropped = [], [], [], 0
    pgd = config.pgd()
    rows = list(zip(transcripts, waves, teacher_answers, refused, strict=True))
    for i, (text, wave, answer, is_refusal) in enumerate(
        tqdm(rows, desc="adversarial examples", disable=not config.progress, leave=False)
    ):
        if config.require_refusal and not is_refusal:
            dropped += 1
            continue
        target = _target_ids(slm, answer, config.distill_tokens)
        if not target:
            dropped += 1
            continue
        res = audio_pgd(slm, torch.from_numpy(np.asarray(wave, dtype=np.float32)), None, config.target, pgd)
        successes.append(res.success)
        snrs.append(res.snr_db)
        feats = encode_clip(slm, res.adversarial)
        key = int(keys[i]) if keys is not None else i
        examples.append(SpeechExample(feats, after, target, _teacher_ids(slm, text, prefix), key=key))
    stats = {
        "attacked": len(successes),
        "attack_success": sum(successes) / len(successes) if successes else None,
        "median_snr_db": float(np.median(snrs)) if snrs else None,
        "dropped_not_refusal": dropped,
    }
    return examples, stats


def _spoken(texts: Sequence[str], config: AdversarialTrainingConfig, seed: int) -> list[Any]:
    from alignscope.speech.build.data import plan_utterances

    return [
        p[0]
        for p in plan_utterances(
            texts, config.voices, config.rates, 1, seed, config.lead_silence, config.pitches
        )
    ]


# -- training -------------------------------------------------------------------------------------------------
def _train_round(
    slm: SpeechLM,
    projector: Projector,
    prefix: list[int],
    examples: list[Any],
    config: AdversarialTrainingConfig,
    out: Path,
) -> dict[str, Any]:
    from transformers import TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    from alignscope.speech.build.distill import (
        ExampleDataset,
        ProjectorTrainer,
        SpeechTrainingModule,
        collate_examples,
    )

    module = SpeechTrainingModule(
        projector, slm.llm.model, prefix, autocast=config.autocast, teacher_model=slm.text_llm.model
    )
    steps = config.steps_per_round
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"), max_steps=steps, per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr, lr_scheduler_type="cosine", warmup_steps=max(0, round(0.05 * steps)),
        logging_steps=max(1, min(25, steps // 10)), save_strategy="steps", save_steps=max(1, min(50, steps)),
        save_total_limit=1, seed=config.seed, data_seed=config.seed, report_to=[], remove_unused_columns=False,
        disable_tqdm=not config.progress, use_cpu=slm.device.type == "cpu", dataloader_num_workers=0,
    )  # fmt: skip
    trainer = ProjectorTrainer(
        model=module, args=args, train_dataset=ExampleDataset(examples), data_collator=collate_examples,
        objective="distill", temperature=config.temperature, direction=config.kl_direction,
    )  # fmt: skip
    ckpt = out / "checkpoints"
    last = get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None
    output = trainer.train(resume_from_checkpoint=last)
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "steps": trainer.state.global_step,
        "train_loss": output.training_loss,
        "last_top1": history[-1].get("top1") if history else None,
        "resumed_from": last,
    }


def adversarial_train(
    config: AdversarialTrainingConfig | None = None, slm: SpeechLM | None = None, command: str | None = None
) -> AdversarialTrainingResult:
    """Harden the projector of ``slm`` (default: ``load_speech_model(config.slm)``) by adversarial training; see
    the module docstring. Rounds already finished in ``out`` are loaded, not redone."""
    from alignscope.models.loading import cache_dir
    from alignscope.speech.build.data import FeatureCache, suite_prompts
    from alignscope.speech.build.distill import SpeechExample
    from alignscope.speech.build.saving import copy_llm_adapter
    from alignscope.speech.spoken.tts import synthesize
    from alignscope.training.builders import generate_cached

    cfg = config or AdversarialTrainingConfig()
    if slm is None:
        from alignscope.speech.model.loading import load_speech_model

        slm = load_speech_model(cfg.slm)
    out = Path(cfg.out) if cfg.out else cache_dir() / "speech" / "adversarial" / cfg.digest()
    out.mkdir(parents=True, exist_ok=True)
    command = command or " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv))
    before = slm.with_projector(copy.deepcopy(slm.projector))
    projector = copy.deepcopy(slm.projector)
    hardened = slm.with_projector(projector, name=f"{slm.name} (adversarially trained)")
    prefix, after = hardened.split_prompt(hardened.conversation(None))

    harmful = [p for _, p in suite_prompts(cfg.harmful_suites, "train", cfg.test_fraction, cfg.split_seed)]
    harmful = harmful[: cfg.n_adversarial] if cfg.n_adversarial is not None else harmful
    clean = [p for _, p in suite_prompts(cfg.clean_suites, "train", cfg.test_fraction, cfg.split_seed)]
    clean = clean[: cfg.n_clean] if cfg.n_clean is not None else clean
    texts = list(dict.fromkeys([*harmful, *clean]))
    key_of = {t: i for i, t in enumerate(texts)}
    answers = dict(zip(texts, generate_cached(slm.text_llm, [user_turn(t) for t in texts], cfg.distill_tokens,
                                              tag="speech-teacher", progress=cfg.progress), strict=True))  # fmt: skip
    cache = FeatureCache(slm.encoder, slm.crop)
    clean_utts = _spoken(clean, cfg, cfg.seed + 1)
    clean_examples = []
    for utt, feats in zip(
        clean_utts, cache.features(clean_utts, cfg.progress, desc="clean examples"), strict=True
    ):
        target = _target_ids(hardened, answers[utt.text], cfg.distill_tokens)
        if target:
            teacher = _teacher_ids(hardened, utt.text, prefix)
            clean_examples.append(SpeechExample(feats, after, target, teacher, key=key_of[utt.text]))
    rounds: list[dict[str, Any]] = []
    for k in range(cfg.rounds):
        round_dir = out / f"round-{k + 1}"
        if (round_dir / "projector" / CONFIG_FILE).is_file():
            done = Projector.load(round_dir / "projector", slm.device)
            projector.load_state_dict(done.state_dict())
            rounds.append(dict(done.metadata.get("round", {})))
            continue
        t0 = time.perf_counter()
        utts = _spoken(harmful, cfg, cfg.seed + 100 + k)  # other voices each round
        waves = [synthesize(u.text, u.voice, u.rate, u.pitch, u.lead_silence, u.tail_silence) for u in utts]
        adv, stats = adversarial_examples(hardened, harmful, waves, [answers[t] for t in harmful], cfg,
                                          keys=[key_of[t] for t in harmful])  # fmt: skip
        if not adv:
            raise SpeechError(
                "no adversarial example kept: the LLM refuses none of the harmful train questions (use a "
                "safety-aligned LLM, or require_refusal=False)"
            )
        train = _train_round(hardened, projector, prefix, [*adv, *clean_examples], cfg, round_dir)
        info = {"round": k + 1, **stats, "kept": len(adv), "clean_examples": len(clean_examples), **train,
                "seconds": time.perf_counter() - t0}  # fmt: skip
        projector.save(round_dir / "projector", metadata={"round": info})
        rounds.append(info)
        log.info("adversarial round %d: %s", k + 1, info)
    meta = dict(slm.projector.metadata)
    meta.update(
        adversarial_training={"command": command, "config": cfg.to_dict(), "rounds": rounds,
                              "hardened_from": slm.name},
        llm=meta.get("llm", slm.text_llm.name), crop=slm.crop,
    )  # fmt: skip
    projector_dir = projector.save(out / "projector", metadata=meta)
    copy_llm_adapter(slm.llm_adapter, projector_dir)
    result = AdversarialTrainingResult(out, projector_dir, cfg, rounds)
    if cfg.eval_n > 0:
        result.evaluation = measure_hardening(before, hardened, cfg)
    (out / "adversarial.json").write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    return result


def measure_hardening(before: SpeechLM, after: SpeechLM, config: AdversarialTrainingConfig) -> dict[str, Any]:
    """White-box PGD success on ``config.eval_n`` held-out harmful questions (``target_success``: the greedy
    answer starts with the target; ``non_refusal``: the keyword judge finds no refusal in it, which counts
    off-topic answers too: it is not a harmful rate) and the benign answered rate, for both models."""
    from alignscope.judges.keyword import KeywordJudge
    from alignscope.speech.build.data import suite_prompts
    from alignscope.speech.spoken.tts import synthesize
    from alignscope.stats import rate_of

    judge = KeywordJudge()
    gen = GenerationConfig(max_new_tokens=48)
    harmful = [
        p
        for _, p in suite_prompts(
            ("harmful",), "test", config.test_fraction, config.split_seed, config.eval_n
        )
    ]
    benign = [
        p
        for _, p in suite_prompts(("benign",), "test", config.test_fraction, config.split_seed, config.eval_n)
    ]

    def speak(texts: list[str], seed: int) -> list[torch.Tensor]:
        utts = _spoken(texts, config, seed)
        return [torch.from_numpy(synthesize(u.text, u.voice, u.rate, u.pitch, u.lead_silence)) for u in utts]

    h_waves, b_waves = speak(harmful, config.seed + 7), speak(benign, config.seed + 8)
    out: dict[str, Any] = {"n_harmful": len(harmful), "n_benign": len(benign), "budget": config.budget,
                           "pgd_steps": config.eval_steps, "judge": judge.name, "generation": gen.describe()}  # fmt: skip
    for name, model in (("before", before), ("after", after)):
        hits, complied, snrs = [], [], []
        for text, wave in zip(harmful, h_waves, strict=True):
            res = audio_pgd(model, wave, None, config.target, config.pgd(config.eval_steps))
            answer = model.generate([res.adversarial], gen)[0]
            hits.append(res.success)
            complied.append(bool(judge.judge_batch([text], [answer])[0].complied))
            snrs.append(res.snr_db)
        clean_answers = model.generate(h_waves, gen)
        benign_answers = model.generate(b_waves, gen)
        out[name] = {
            "target_success": rate_of(hits).to_dict(),
            "non_refusal": rate_of(complied).to_dict(),
            "median_snr_db": float(np.median(snrs)) if snrs else None,
            "clean_refusal": rate_of([bool(v.refused) for v in judge.judge_batch(harmful, clean_answers)]).to_dict(),
            "benign_answered": rate_of([not v.refused and bool(a.strip()) for v, a in
                                        zip(judge.judge_batch(benign, benign_answers), benign_answers, strict=True)]).to_dict(),
        }  # fmt: skip
    return out
