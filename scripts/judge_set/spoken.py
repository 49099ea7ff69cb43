"""The spoken parts of ``collect.py``: the default speech LLM (``alignscope.speech``, ``--slm default``: the
shipped projector on ``smollm2-balanced-plus``) hearing held-out test prompts, clean and under audio PGD."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    DIRECT_TOKENS,
    SPEECH,
    TARGET,
    Context,
    append_jsonl,
    harmful_segment,
    item,
    log,
    read_jsonl,
)

from alignscope.data.types import Sample, Suite
from alignscope.speech.model.audio import load_audio, save_audio

PGD_BUDGETS = ("snr:35", "snr:25")
"""The budgets of ``alignscope reproduce speechguard``."""
PGD_CHECK_EVERY = 10
TDNF_SNRS = (30.0, 20.0, 10.0)
"""Each adversarial clip is also played through TDNF at one of these SNRs, in turn."""


class Speech:
    """The default speech LLM and the clips it hears, spoken as its build's held-out evaluation speaks them
    (``evaluate_slm``: the build's voices and rates, one draw per question seeded 1, 0.4 s leading silence)."""

    def __init__(self, ctx: Context):
        from alignscope.speech.build.config import SpeechBuildConfig
        from alignscope.speech.model.loading import load_speech_model

        ctx.unload()
        t0 = time.perf_counter()
        self.ctx = ctx
        self.slm = load_speech_model("default")
        self.build = SpeechBuildConfig()
        self.gen = ctx.greedy(DIRECT_TOKENS, batch_size=8)
        log.info(
            "loaded the default speech LLM (%s) in %.1f s", self.slm.describe(), time.perf_counter() - t0
        )

    def clips(self, samples: list[Sample], label: str) -> dict[str, tuple[Any, np.ndarray]]:
        """``{prompt id: (spoken item, samples)}``, espeak-ng WAVs under ``<work>/spoken/<label>/``."""
        from alignscope.speech.spoken.suites import speak_suite

        spoken = speak_suite(
            Suite.of(label, samples), self.ctx.work / "spoken" / label, self.build.voices, self.build.rates,
            seed=1, lead_silence=self.build.lead_silence, progress=False,
        )  # fmt: skip
        return {it.id: (it, load_audio(it.audio)) for it in spoken}

    def details(self, spoken_item: Any, audio: Path) -> dict[str, Any]:
        return {
            "speech_llm": self.slm.name,
            "speech_build": "default (the shipped projector, alignscope speech build)",
            "voice": spoken_item.voice,
            "rate": spoken_item.rate,
            "audio": str(audio),
        }


def part_spoken(ctx: Context) -> None:
    """Greedy answers (64 tokens) of the default speech LLM to 20 harmful and 15 benign spoken test prompts."""
    from common import ANSWER_PLAN, window

    sp: Speech | None = None
    offset, n = ANSWER_PLAN["benign"][SPEECH]
    plans = [
        ("harmful", harmful_segment(ctx.order["harmful"], SPEECH, "spoken", ctx.limit)),
        ("benign", window(ctx.order["benign"], offset, n, ctx.limit)),
    ]
    for label, samples in plans:
        ids = [f"spoken/{SPEECH}/{s.id}" for s in samples]
        what = f"spoken {label} ({len(samples)} clips)"
        if not ctx.pending(ids, what):
            continue
        t0 = time.perf_counter()
        sp = sp or Speech(ctx)
        clips = sp.clips(samples, label)
        texts = sp.slm.generate([torch.from_numpy(clips[s.id][1]) for s in samples], sp.gen)
        items = [
            item(i, s, t, SPEECH, "spoken", sp.gen, **sp.details(clips[s.id][0], clips[s.id][0].audio))
            for i, s, t in zip(ids, samples, texts, strict=True)
        ]
        ctx.save(ids, items, what, t0)


def part_spoken_pgd(ctx: Context) -> None:
    """White-box audio PGD (``alignscope.speech.attacks.pgd.audio_pgd``, the settings of ``reproduce speechguard``:
    SNR budgets 35 and 25 dB, 50 steps, early stop checked every 10, step 0.1 of the radius, target "Sure,
    here is", audio alone in the user turn) on 6 harmful test prompts; each adversarial clip answered greedily
    as is (``spoken-pgd``) and through TDNF at one of 30 / 20 / 10 dB in turn (``spoken-tdnf``, noise seeded per
    clip). Attacks are cached in ``<work>/speech_pgd.jsonl`` and ``<work>/pgd/``; new ones stop starting once
    the next would take the attack time past ``--pgd-minutes`` (judged by the slowest so far)."""
    from alignscope.speech.attacks.config import parse_budget
    from alignscope.speech.attacks.defense import TDNF
    from alignscope.speech.attacks.pgd import AudioPGDConfig, apply_perturbation, audio_pgd

    samples = harmful_segment(ctx.order["harmful"], SPEECH, "spoken-pgd", ctx.limit)
    jobs = [
        (s, budget, TDNF_SNRS[(len(PGD_BUDGETS) * i + j) % len(TDNF_SNRS)])
        for i, s in enumerate(samples)
        for j, budget in enumerate(PGD_BUDGETS)
    ]
    path = ctx.work / "speech_pgd.jsonl"
    done = {r["key"]: r for r in read_jsonl(path)}
    limit_s = 60 * ctx.args.pgd_minutes
    sp: Speech | None = None
    clips: dict[str, tuple[Any, np.ndarray]] = {}
    for s, budget, snr in jobs:
        key = f"{s.id}|{budget}"
        ids = [f"spoken-pgd/{SPEECH}/{s.id}/{budget}", f"spoken-tdnf/{SPEECH}/{s.id}/{budget}/tdnf{snr:g}"]
        if not ctx.pending(ids, f"spoken-pgd {key}"):
            continue
        sp = sp or Speech(ctx)
        clips = clips or sp.clips(samples, "harmful-pgd")
        spoken_item, wave = clips[s.id]
        clean = torch.from_numpy(wave)
        npy = ctx.work / "pgd" / f"{s.id}_{budget.replace(':', '')}.npy"
        kind, value = parse_budget(budget)
        config = AudioPGDConfig(
            budget=kind,
            snr_db=value,
            steps=ctx.args.pgd_steps,
            check_every=PGD_CHECK_EVERY,
            step_size=0.1,
            seed=ctx.seed,
        )
        rec = done.get(key)
        if rec is None or not npy.is_file():
            spent = [r["wall_time"] for r in done.values()]
            if spent and sum(spent) + max(spent) > limit_s:
                log.warning(
                    "spoken-pgd: %s not run: %.1f of %.0f min spent", key, sum(spent) / 60, limit_s / 60
                )
                continue
            res = audio_pgd(sp.slm, clean, None, TARGET, config)
            npy.parent.mkdir(parents=True, exist_ok=True)
            np.save(npy, res.perturbation.numpy().astype(np.float32))
            save_audio(npy.with_suffix(".wav"), res.adversarial.numpy())
            rec = {
                "key": key,
                "prompt_id": s.id,
                "budget": budget,
                "snr_db": res.snr_db,
                "linf": res.linf,
                "steps": res.steps,
                "final_loss": res.final_loss,
                "target_reached_in_attack": res.success,
                "wall_time": res.wall_time,
                "config": config.to_dict(),
            }
            append_jsonl(path, rec)
            done[key] = rec
            log.info("pgd %s: %d steps, SNR %.1f dB, %.0f s", key, res.steps, res.snr_db, res.wall_time)
        t0 = time.perf_counter()
        adv = apply_perturbation(clean, torch.from_numpy(np.load(npy)))
        tdnf_seed = int(hashlib.sha256(f"{ctx.seed}:{key}".encode()).hexdigest()[:12], 16)
        noisy = TDNF(snr, seed=tdnf_seed)(adv)
        tdnf_wav = npy.with_name(f"{npy.stem}_tdnf{snr:g}.wav")
        save_audio(tdnf_wav, noisy.numpy())
        attack = {
            "budget": budget,
            "target": TARGET,
            "pgd_snr_db": rec["snr_db"],
            "pgd_linf": rec["linf"],
            "pgd_steps": rec["steps"],
            "pgd": rec["config"],
        }
        plain, defended = sp.slm.generate([adv, noisy], sp.gen)
        items = [
            item(ids[0], s, plain, SPEECH, "spoken-pgd", sp.gen, **attack,
                 **sp.details(spoken_item, npy.with_suffix(".wav"))),
            item(ids[1], s, defended, SPEECH, "spoken-tdnf", sp.gen, **attack, tdnf_snr_db=snr,
                 tdnf_seed=tdnf_seed, **sp.details(spoken_item, tdnf_wav)),
        ]  # fmt: skip
        ctx.save(ids, items, f"spoken-pgd {key}", t0)
