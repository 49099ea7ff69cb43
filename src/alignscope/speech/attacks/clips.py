"""The clips a spoken attack evaluation attacks: its harmful and benign suites spoken into the run directory, or
the user's own clips from a manifest, checked for length and silence."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from alignscope.runs.store import RunDir
from alignscope.speech.attacks.config import SpokenAttackConfig
from alignscope.speech.errors import SpeechError
from alignscope.speech.model.audio import load_audio
from alignscope.speech.model.features import HOP_LENGTH, N_SAMPLES_30S
from alignscope.speech.spoken.suites import SpokenItem, SpokenSuite, load_spoken_suite, speak_suite

__all__ = ["SpokenClip", "spoken_clips"]


@dataclass(frozen=True)
class SpokenClip:
    """A spoken question ready to attack: its manifest item, its samples and the target to elicit."""

    item: SpokenItem
    wave: np.ndarray
    target: str
    label: str

    @property
    def id(self) -> str:
        return self.item.id


def _load_wave(item: SpokenItem, resample: bool) -> np.ndarray:
    wave = load_audio(item.audio, resample=resample)
    if wave.size > N_SAMPLES_30S:
        raise SpeechError(
            f"{item.audio} (id {item.id!r}) is {wave.size / 16000:.1f} s long; Whisper takes 30 s at most"
        )
    if wave.size < 2 * HOP_LENGTH:
        raise SpeechError(f"{item.audio} (id {item.id!r}) is too short ({wave.size} samples)")
    if not np.any(wave):
        raise SpeechError(
            f"{item.audio} (id {item.id!r}) is silent: no SNR budget or TDNF level exists for it"
        )
    return wave


def _speak(run: RunDir, suite: str, label: str, n: int | None, config: SpokenAttackConfig) -> SpokenSuite:
    from alignscope.data import load_suite

    text = load_suite(suite)
    if config.split != "all":
        train, test = text.split(config.test_fraction, config.split_seed)
        text = test if config.split == "test" else train
    text = text.take(n, config.seed)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{label}-{suite}")[:60]
    return speak_suite(
        text, run.path / "spoken" / slug, config.voices, config.rates, seed=config.seed,
        lead_silence=config.lead_silence, progress=config.progress,
    )  # fmt: skip


def spoken_clips(run: RunDir, config: SpokenAttackConfig) -> tuple[list[SpokenClip], list[SpokenClip]]:
    """(harmful, benign) clips of the evaluation: the suites spoken into ``<run>/spoken/`` (cached there, so a
    resumed run reuses them) or read from the manifests."""
    harmful: list[SpokenItem]
    benign: list[SpokenItem] = []
    if config.manifest:
        items = list(load_spoken_suite(config.manifest))
        harmful = [it for it in items if it.label in (None, "harmful")]
        benign = [it for it in items if it.label == "benign"]
        if not harmful:
            raise SpeechError(f"{config.manifest}: no clip is labelled harmful (or unlabelled) to attack")
        harmful = harmful[: config.n] if config.n is not None else harmful
    else:
        harmful = list(_speak(run, config.suite, "harmful", config.n, config))
    if config.benign_manifest:
        benign = list(load_spoken_suite(config.benign_manifest))
    elif config.benign_suite and not config.manifest and config.n_benign != 0:
        benign = list(_speak(run, config.benign_suite, "benign", config.n_benign, config))
    if config.n_benign is not None:
        benign = benign[: config.n_benign]
    ids = [it.id for it in harmful] + [it.id for it in benign]
    dup = [i for i, c in Counter(ids).items() if c > 1]
    if dup:
        raise SpeechError(f"clip ids must be unique across the harmful and benign sets; repeated: {dup[:5]}")

    def make(it: SpokenItem, label: str) -> SpokenClip:
        return SpokenClip(it, _load_wave(it, config.resample), it.target or config.target, label)

    return [make(it, "harmful") for it in harmful], [make(it, "benign") for it in benign]
