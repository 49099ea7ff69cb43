"""The audio attacks as experiments: ``alignscope attack audio-pgd`` and ``alignscope attack audio-transfer``.

Each is a config (the speech LLM specs and a nested :class:`~alignscope.speech.attacks.config.SpokenAttackConfig`)
and a ``run_x(config, run=None) -> SpokenAttackResult`` that loads the models it names and runs the spoken attack
evaluation (:func:`~alignscope.speech.attacks.evaluation.run_spoken_attacks`) into a run directory::

    result = run_audio_pgd(AudioPGDAttackConfig(attack=SpokenAttackConfig(n=4, budgets=("snr:30",))))
    print(result.summary())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from alignscope.judges.outcomes import MEASURE_LABELS
from alignscope.runs.store import RunDir
from alignscope.speech.attacks.config import SpokenAttackConfig
from alignscope.speech.config_io import SpeechConfigIO
from alignscope.speech.errors import SpeechOptionError
from alignscope.speech.model.slm import SpeechLM

__all__ = [
    "AudioPGDAttackConfig",
    "AudioTransferConfig",
    "SpokenAttackResult",
    "run_audio_pgd",
    "run_audio_transfer",
]

DEFAULT_SURROGATE = 'build:llm="smollm2-balanced",seed=1,distill_ctc_weight=0'
"""The surrogate of ``reproduce speechguard`` as a speech LLM spec: the shipped seed-1 build on
``smollm2-balanced`` without the CTC term in distillation."""


@dataclass(frozen=True)
class SpokenAttackResult(SpeechConfigIO):
    """What a spoken attack run measured (the ``speech_attacks`` metrics of its run directory).

    Attributes:
        conditions: one row per condition (kind, budget, attack defence, evaluation defence): success with its
            ``measure``, refusal and target-hit rates with Wilson intervals, median SNR, steps and seconds.
        headline: labels of the conditions in the SpeechGuard table.
        helpfulness: benign questions answered, token F1 and top-1 agreement per evaluation defence.
        judge: the judges of the answers.
        preference_judge: the pairwise judges (empty when none was used).
        decoding: the decoding settings of the judged answers.
        pgd: the PGD settings of the crafted perturbations (None when nothing was crafted).
        models: the attacked speech LLMs.
        surrogates: the speech LLMs transfer perturbations were crafted on.
        n_harmful: harmful clips.
        n_benign: benign clips.
    """

    settings_name: ClassVar[str] = "spoken-attack result"

    conditions: list[dict[str, Any]] = field(default_factory=list)
    headline: list[str] = field(default_factory=list)
    helpfulness: list[dict[str, Any]] = field(default_factory=list)
    judge: list[str] = field(default_factory=list)
    preference_judge: list[str] = field(default_factory=list)
    decoding: list[str] = field(default_factory=list)
    pgd: dict[str, Any] | None = None
    models: list[str] = field(default_factory=list)
    surrogates: list[str] = field(default_factory=list)
    n_harmful: int = 0
    n_benign: int = 0

    def summary(self) -> str:
        """The headline conditions with their success rates, then helpfulness per defence."""
        measure = (
            self.conditions[0]["success"].get("measure", "non_refusal") if self.conditions else "non_refusal"
        )
        lines = [
            f"spoken attacks on {', '.join(self.models) or 'n/a'}: {self.n_harmful} harmful, {self.n_benign} benign "
            f"clips; {MEASURE_LABELS[measure]} (judge {', '.join(self.judge) or 'n/a'}):"
        ]
        head = set(self.headline)
        for r in self.conditions:
            if r["label"] in head:
                s = r["success"]
                lines.append(f"  {r['label']}: {100 * s['rate']:.0f}% ({s['k']}/{s['n']})")
        for h in self.helpfulness:
            a = h["answered"]
            lines.append(
                f"  benign answered, {h['eval_defense']}: {100 * a['rate']:.0f}% ({a['k']}/{a['n']})"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class AudioPGDAttackConfig(SpeechConfigIO):
    """Settings of ``alignscope attack audio-pgd``: white-box audio PGD on spoken harmful questions, optionally
    through TDNF and by an adaptive attacker.

    Attributes:
        slm: spec of the attacked speech LLM: ``default`` (the embedded build), ``build:KEY=VALUE,...``, a
            projector or build directory, or ``random[:LLM]`` (untrained projector, smoke tests only).
        attack: the clips, budgets, PGD, defences and judges.
        device: cuda, mps or cpu (None: the best available).
    """

    settings_name: ClassVar[str] = "audio-pgd"

    slm: str = "default"
    attack: SpokenAttackConfig = field(default_factory=SpokenAttackConfig)
    device: str | None = None

    def record(self) -> dict[str, Any]:
        """The run directory's recorded config (its ``attack`` is what the report section reads)."""
        return _record(self.slm, None, self.attack)


@dataclass(frozen=True)
class AudioTransferConfig(SpeechConfigIO):
    """Settings of ``alignscope attack audio-transfer``: PGD crafted on a surrogate speech LLM, the adversarial
    clips played to the target (and through each TDNF defence).

    Attributes:
        slm: spec of the target speech LLM (the forms of :attr:`AudioPGDAttackConfig.slm`).
        surrogate: spec of the speech LLM the perturbations are crafted on (default: the surrogate of
            ``reproduce speechguard``).
        attack: the clips, budgets, PGD, defences and judges; ``transfer`` must be on (the default here, with
            the white-box and adaptive attacks off).
        device: cuda, mps or cpu (None: the best available).
    """

    settings_name: ClassVar[str] = "audio-transfer"

    slm: str = "default"
    surrogate: str = DEFAULT_SURROGATE
    attack: SpokenAttackConfig = field(
        default_factory=lambda: SpokenAttackConfig(white_box=False, transfer=True, adaptive=0)
    )
    device: str | None = None

    def __post_init__(self) -> None:
        if not self.attack.transfer:
            raise SpeechOptionError(
                "AudioTransferConfig.attack.transfer", "must be true", self.attack.transfer
            )

    def record(self) -> dict[str, Any]:
        """The run directory's recorded config (its ``attack`` is what the report section reads)."""
        return _record(self.slm, self.surrogate, self.attack)


def _record(slm: str, surrogate: str | None, attack: SpokenAttackConfig) -> dict[str, Any]:
    return {"model": slm, "surrogate": surrogate, "judge": attack.judge, "seed": attack.seed,
            "attack": attack.to_dict()}  # fmt: skip


def _spoken_attacks(
    command: str,
    record: dict[str, Any],
    attack: SpokenAttackConfig,
    target: SpeechLM,
    surrogate: SpeechLM | None,
    run: RunDir | None,
    judge: Any,
    progress: bool,
) -> SpokenAttackResult:
    from alignscope.models.pool import load_judge_for
    from alignscope.speech.attacks.evaluation import run_spoken_attacks

    run = run if run is not None else RunDir.create(command, record)
    judge = judge if judge is not None else load_judge_for(attack.judge, target.llm)
    cfg = attack if progress else attack.replace(progress=False)
    return SpokenAttackResult.from_dict(run_spoken_attacks(run, cfg, target, surrogate, judge=judge))


def run_audio_pgd(
    config: AudioPGDAttackConfig | None = None,
    run: RunDir | None = None,
    *,
    slm: SpeechLM | None = None,
    judge: Any = None,
    progress: bool = True,
) -> SpokenAttackResult:
    """Run (or resume) white-box audio PGD into ``run`` (None: a new ``runs/attack-audio-pgd-<time>``).

    ``slm`` replaces the speech LLM ``config.slm`` names and ``judge`` the judge ``config.attack.judge`` names
    (tests pass tiny models)."""
    from alignscope.speech.model import loading

    config = config or AudioPGDAttackConfig()
    target = slm if slm is not None else loading.load_speech_model(config.slm, device=config.device)
    return _spoken_attacks(
        "attack audio-pgd", config.record(), config.attack, target, None, run, judge, progress
    )


def run_audio_transfer(
    config: AudioTransferConfig | None = None,
    run: RunDir | None = None,
    *,
    slm: SpeechLM | None = None,
    surrogate: SpeechLM | None = None,
    judge: Any = None,
    progress: bool = True,
) -> SpokenAttackResult:
    """Run (or resume) the black-box transfer attack into ``run`` (None: a new
    ``runs/attack-audio-transfer-<time>``); ``slm`` / ``surrogate`` replace the models the config names."""
    from alignscope.speech.model import loading

    config = config or AudioTransferConfig()
    target = slm if slm is not None else loading.load_speech_model(config.slm, device=config.device)
    crafter = (
        surrogate
        if surrogate is not None
        else loading.load_speech_model(config.surrogate, device=config.device)
    )
    return _spoken_attacks(
        "attack audio-transfer", config.record(), config.attack, target, crafter, run, judge, progress
    )
