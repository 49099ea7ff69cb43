"""Build (train) the projector of a speech LLM: ``alignscope speech build``.

Three stages, all on transformers' Trainer (:class:`~alignscope.speech.build.distill.ProjectorTrainer`), the
projector the only trained weights (unless ``llm_lora_rank`` adds LoRA layers on the LLM to distillation):

1. **CTC** (cheap, no LLM forward pass): each audio embedding is scored against the LLM's input embedding
   table (:class:`~alignscope.speech.build.distill.TokenCTCModule`), so the projector learns to put the words it
   hears near the embeddings of their tokens: the content reaches the LLM before the LLM-based stages start.
2. **ASR-style** (off by default, ``asr_steps=0``): the LLM hears a clip (and a short instruction, "Repeat
   exactly what was said.") and is trained to output its transcript (cross-entropy on the transcript tokens).
   It is off because it did not help after the CTC stage (docs/speech.md, "Building the projector"). The CTC
   stage and the ASR stage train on the same clips: thousands of distinct texts, all alignscope's own
   (:func:`~alignscope.speech.build.data.corpus_texts`, plus copies with words swapped for other vocabulary
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
:func:`~alignscope.speech.model.loading.load_slm` rebuilds the :class:`~alignscope.speech.model.slm.SpeechLM`
(build times are in docs/speech.md)::

    result = build_slm(SpeechBuildConfig())
    slm = load_slm(result.projector_dir)
    evaluate_slm(slm).summary()
"""

from __future__ import annotations

import copy
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from alignscope.models.base import user_turn
from alignscope.models.loading import load_model
from alignscope.models.local import LocalModel
from alignscope.speech.build.config import (
    LLM_ADAPTER_DIR,
    PROJECTOR_DIR,
    BuildResult,
    SpeechBuildConfig,
    default_build_dir,
)
from alignscope.speech.build.data import (
    FeatureCache,
    corpus_texts,
    plan_utterances,
    sampled_prompts,
    suite_prompts,
)
from alignscope.speech.build.distill import (
    ExampleDataset,
    ProjectorTrainer,
    SpeechExample,
    SpeechTrainingModule,
    TokenCTCModule,
    collate_examples,
    target_starts,
)
from alignscope.speech.build.saving import build_result, finished_build, save_build
from alignscope.speech.errors import SpeechError
from alignscope.speech.model.loading import adapted_llm, load_encoder
from alignscope.speech.model.projector import CONFIG_FILE, Projector, ProjectorConfig
from alignscope.speech.model.slm import SpeechLM

log = logging.getLogger("alignscope.speech.build")


__all__ = ["BuildResult", "SpeechBuildConfig", "build_slm", "lora_student", "validation_agreement"]


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
    record = finished_build(out, cfg)
    if record is not None and (not cfg.evaluate or "evaluation" in record.get("metrics", {})):
        log.info("speech build found finished in %s", out)
        return build_result(out, cfg, record, cached=True)
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
    encoder = encoder if encoder is not None else load_encoder(cfg.encoder, llm.device)
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
        from alignscope.speech.evaluation.held_out import evaluate_slm

        t0 = time.perf_counter()
        # the held-out clips are spoken as the training clips are (rates, leading silence)
        ev = evaluate_slm(b.slm(projector), voices=cfg.eval_voices or cfg.voices, rates=cfg.rates,
                          test_fraction=cfg.test_fraction, split_seed=cfg.split_seed,
                          lead_silence=cfg.lead_silence, progress=cfg.progress)  # fmt: skip
        b.metrics["evaluation"] = ev.to_dict(samples=False)
        b.times["evaluate"] = time.perf_counter() - t0
    return save_build(b.out, cfg, projector, b.command, b.cache.fingerprint, b.metrics, b.times, b.adapter)


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
