"""Settings of a spoken attack evaluation (:class:`SpokenAttackConfig`) and its budget and defence specs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from alignscope.judges.registry import check_judge_spec
from alignscope.speech.attacks.pgd import AudioPGDConfig
from alignscope.speech.config_io import SpeechConfigIO
from alignscope.speech.errors import SpeechError, SpeechOptionError
from alignscope.validation import FieldChecks

__all__ = ["SpokenAttackConfig", "parse_budget", "tdnf_spec"]


def parse_budget(spec: str) -> tuple[str, float]:
    """``"snr:30"`` -> ``("snr", 30.0)``, ``"linf:0.002"`` -> ``("linf", 0.002)``; a :class:`SpeechError`
    naming the spec otherwise."""
    kind, sep, value = str(spec).strip().partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in ("snr", "linf"):
        raise SpeechError(
            f"bad budget {spec!r}: use 'linf:<eps>' (e.g. linf:0.002) or 'snr:<dB>' (e.g. snr:30)"
        )
    try:
        number = float(value)
    except ValueError:
        raise SpeechError(f"bad budget {spec!r}: {value!r} is not a number") from None
    if not np.isfinite(number) or (kind == "linf" and not 0 < number <= 2):
        raise SpeechError(f"bad budget {spec!r}: an L-inf eps must lie in (0, 2] (samples are in [-1, 1])")
    return kind, number


def tdnf_spec(snr: float) -> str:
    return f"tdnf:snr={snr:g}"


@dataclass(frozen=True)
class SpokenAttackConfig(SpeechConfigIO):
    """Settings of a spoken attack evaluation; every field has a default.

    Attributes:
        suite: text suite of harmful questions, spoken with espeak-ng into ``<run>/spoken/`` (ignored with
            ``manifest``).
        manifest: a spoken-suite manifest (``manifest.jsonl`` or its directory) of the user's own clips; items
            labelled ``benign`` go to the helpfulness set unless ``benign_manifest`` is given.
        split: ``"test"`` (the held-out half no speech build trains on), ``"train"`` or ``"all"`` of ``suite``.
        test_fraction, split_seed: the split (as in :class:`~alignscope.speech.build.config.SpeechBuildConfig`).
        n: harmful clips (a category-stratified subset; None: all).
        benign_suite, benign_manifest, n_benign: benign questions for helpfulness (None / 0: skipped).
        voices, rates, lead_silence: how the suites are spoken (one voice and rate drawn per question).
        budgets: perturbation budgets, ``"snr:<dB>"`` or ``"linf:<eps>"``; white-box and transfer attacks run
            at each, the adaptive attacker at the first.
        steps, restarts, step_size, check_every, random_start: PGD settings (see
            :class:`~alignscope.speech.attacks.pgd.AudioPGDConfig`).
        universal: one perturbation over all clips per budget instead of one per clip.
        white_box: run the white-box attack on the target (off for a transfer-only run).
        defenses: TDNF SNRs (dB); every clip is also answered through each (non-adaptive), and helpfulness is
            measured under each.
        adaptive: noise draws per PGD step of the adaptive attacker (0: no adaptive attack).
        adaptive_snrs: the TDNF SNRs the adaptive attacker faces (None: every SNR of ``defenses``).
        transfer: craft on the surrogate and play to the target (needs a surrogate).
        target: the attack target for questions whose suite gives none.
        judge: judge spec for every answer (:func:`alignscope.judges.get_judge`).
        preference_judge: pairwise judge spec (``"preference:smollm2"``) comparing each attacked answer with
            the clean one for safety (None: not used).
        max_new_tokens, batch_size: decoding of the judged answers (greedy).
        seed: seeds the PGD random starts and every TDNF draw.
        resample: resample user clips at another rate to 16 kHz (False: refuse them, naming the file).
        save_audio: write the adversarial and defended clips as WAV (the clean ones are always on disk).
        progress: progress bars.
    """

    settings_name: ClassVar[str] = "spoken-attack"

    suite: str = "harmful"
    manifest: str | None = None
    split: str = "test"
    test_fraction: float = 0.5
    split_seed: int = 0
    n: int | None = 8
    benign_suite: str | None = "benign"
    benign_manifest: str | None = None
    n_benign: int | None = 8
    voices: tuple[str, ...] = ("en-us+klatt4",)
    rates: tuple[int, ...] = (175,)
    lead_silence: float = 0.4
    budgets: tuple[str, ...] = ("snr:30",)
    steps: int = 100
    restarts: int = 1
    step_size: float = 0.1
    check_every: int = 10
    random_start: bool = False
    universal: bool = False
    white_box: bool = True
    defenses: tuple[float, ...] = ()
    adaptive: int = 0
    adaptive_snrs: tuple[float, ...] | None = None
    transfer: bool = False
    target: str = "Sure, here is"
    judge: str = "keyword"
    preference_judge: str | None = None
    max_new_tokens: int = 64
    batch_size: int = 8
    seed: int = 0
    resample: bool = True
    save_audio: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.budgets:
            raise SpeechError("give at least one budget (e.g. 'snr:30')")
        for b in self.budgets:
            parse_budget(b)
        if self.split not in ("test", "train", "all"):
            raise SpeechError(f"split must be test, train or all, got {self.split!r}")
        check = FieldChecks(self, SpeechOptionError)
        check.at_least(1, "n", "steps", "restarts", "check_every", "max_new_tokens", "batch_size")
        check.at_least(0, "n_benign", "adaptive", "lead_silence")
        check.in_range("test_fraction", 0, 1, low_open=True, high_open=True)
        check.non_empty("voices")
        check.each_at_least(1, "rates")
        check.each_finite("defenses", "adaptive_snrs")
        check.positive("step_size")
        check_judge_spec(self.judge)
        if self.preference_judge is not None:
            check_judge_spec(self.preference_judge)
        if self.adaptive and not self.attack_snrs:
            raise SpeechError(
                "the adaptive attacker needs a defence to attack through: give defenses (TDNF SNRs)"
            )
        self.pgd(self.budgets[0])  # validates the PGD fields

    @property
    def attack_snrs(self) -> tuple[float, ...]:
        """The TDNF SNRs the adaptive attacker faces."""
        return tuple(self.adaptive_snrs) if self.adaptive_snrs is not None else tuple(self.defenses)

    def pgd(self, budget: str, defense: str | None = None) -> AudioPGDConfig:
        """The PGD settings for one budget (and, for the adaptive attacker, the defence it goes through)."""
        kind, value = parse_budget(budget)
        return AudioPGDConfig(
            budget=kind,
            eps=value if kind == "linf" else 0.002,
            snr_db=value if kind == "snr" else 30.0,
            step_size=self.step_size,
            steps=self.steps,
            restarts=self.restarts,
            random_start=self.random_start,
            check_every=self.check_every,
            defense=defense,
            eot_samples=max(1, self.adaptive) if defense else 1,
            seed=self.seed,
        )
