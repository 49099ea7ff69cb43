"""Settings of ``alignscope scorecard``: the models, the families, the guard, and per-family sizes set by a profile.

A size left as None takes its value from the profile (:data:`PROFILES`); a size given explicitly wins. The
``quick`` profile is sized for one model on 2 CPU cores in about 20 minutes (small subsets, a few GCG steps on
few behaviours, no fine-tuning); ``full`` uses the whole held-out splits, the paper's decoding grid, a larger
GCG budget and the fine-tuning family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from alignscope.config_io import RunSettings
from alignscope.judges.registry import check_judge_spec
from alignscope.models.loading import DEFAULT_MODEL
from alignscope.validation import FieldChecks, OptionError

FAMILIES: tuple[str, ...] = ("direct", "prefill", "decoding", "gcg", "finetune", "audio", "over_refusal")
"""Every family, in report order. All but ``over_refusal`` are attacks (their value is attack success)."""

ATTACK_FAMILIES: tuple[str, ...] = FAMILIES[:-1]

Profile = Literal["quick", "full"]

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "n_direct": 30,
        "n_safe": 24,
        "n_prefill": 12,
        "n_decoding": 8,
        "decoding_grid": "reduced",
        "n_gcg": 2,
        "gcg_steps": 10,
        "gcg_search_width": 64,
        "finetune": False,
        "finetune_examples": 32,
        "finetune_steps": 20,
        "n_finetune_eval": 20,
        "n_audio": 3,
        "audio_steps": 20,
        "audio_draws": 2,
    },
    "full": {
        "n_direct": None,
        "n_safe": None,
        "n_prefill": 50,
        "n_decoding": 30,
        "decoding_grid": "full",
        "n_gcg": 10,
        "gcg_steps": 250,
        "gcg_search_width": 512,
        "finetune": True,
        "finetune_examples": 100,
        "finetune_steps": 100,
        "n_finetune_eval": None,
        "n_audio": 16,
        "audio_steps": 100,
        "audio_draws": 4,
    },
}
"""Per-family sizes of each profile (None: every prompt of the held-out split)."""

_SIZED = tuple(PROFILES["quick"])


@dataclass(frozen=True)
class ScorecardConfig(RunSettings):
    """Settings of ``alignscope scorecard``.

    Attributes:
        models: specs of the models scored (``--model``, repeatable); each gets its own sub-run.
        families: families to run (default all): direct, prefill, decoding, gcg, finetune, audio,
            over_refusal; the others are shown as not selected, never as 0.
        profile: ``quick`` (one model in about 20 min on 2 CPU cores; no fine-tuning) or ``full``; sets every
            size below that is left unset.
        judge: judge spec; the keyword judge gives non-refusal rates, a harm judge harmful rates.
        guard: server guard specs counted as part of the model under test (``--guard``, repeatable):
            ``probe=PATH``, ``request-complied=PATH``, ``judge=SPEC``, ``keyword=WORD|WORD``. A prompt an input
            guard blocks counts as refused in every family; an answer an output guard blocks becomes a refusal.
        speech: ``MODEL=SLM_SPEC`` pairs naming a model's speech build (``--speech``, repeatable); the embedded
            speech build's LLM gets ``default`` without one. Models without one skip the audio family.
        base: the model whose benign answers helpfulness is compared with (token F1); None skips it.
        source: the unaligned model writing the harmful answers prefilled and fine-tuned on (None: the
            embedded default).
        harmful_suite: harmful prompts of the direct, prefill, decoding, GCG and fine-tuning families.
        contrast_suite: unsafe twins of the alarming-but-safe prompts, in the direct family (None: left out).
        extra_suites: more harmful suites for the direct family, e.g. public ones (``--suite advbench:PATH``).
        benign_suite: benign prompts: over-refusal, and helpfulness (answered; agreement with ``base``).
        safe_suites: alarming-but-safe prompts whose refusal is over-refusal.
        test_fraction / split_seed: built-in suites are scored on their held-out side (:meth:`Suite.split`),
            the side no recipe trains on; other suites are used whole.
        n_direct: prompts per direct-family suite (None: profile).
        n_safe: prompts per over-refusal suite (None: profile).
        n_prefill: prompts attacked by prefilling (None: profile).
        prefill_ks: prefilled harmful tokens; the family's value is the worst k.
        n_decoding: prompts in the decoding sweep (None: profile).
        decoding_grid: ``reduced`` or ``full`` (the paper's 49 settings) (None: profile).
        n_gcg: held-out behaviours each given a fresh GCG optimisation (None: profile).
        gcg_steps / gcg_search_width: the GCG budget per behaviour, steps x candidates (None: profile).
        finetune: run the fine-tuning family when it is selected (None: profile; off in ``quick``).
        finetune_kind: ``harmful``, ``identity`` or ``backdoor``.
        finetune_defense: the provider's defence during the attacker's fine-tuning: None, ``constrained`` or
            ``sppft``.
        finetune_freeze_layers: the layers ``sppft`` freezes (first,last).
        finetune_examples / finetune_steps: attack examples and optimiser steps (None: profile).
        n_finetune_eval: held-out harmful prompts asked after fine-tuning (None: profile).
        audio_manifest: a spoken-suite manifest to attack instead of speaking ``harmful_suite`` with espeak-ng.
        n_audio: spoken harmful clips (None: profile).
        audio_budget: the PGD budget (``snr:30`` or ``linf:0.002``).
        audio_steps: PGD steps (None: profile).
        audio_tdnf: the TDNF SNR (dB) in front of the speech model; None: no TDNF (white-box PGD is then the
            family's value).
        audio_draws: noise draws per step of the adaptive attacker through TDNF (None: profile).
        max_new_tokens: tokens per answer (direct, over-refusal, GCG, fine-tuning, audio).
        attack_tokens: tokens generated after a prefill and in the decoding sweep.
        seed: seeds subsets, sampling and the attacks.
    """

    suite_fields = ("harmful_suite", "contrast_suite", "extra_suites", "benign_suite", "safe_suites")
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    families: tuple[str, ...] = FAMILIES
    profile: Profile = "quick"
    judge: str = "keyword"
    guard: tuple[str, ...] = ()
    speech: tuple[str, ...] = ()
    base: str | None = DEFAULT_MODEL
    source: str | None = None
    harmful_suite: str = "harmful"
    contrast_suite: str | None = "unsafe-contrast"
    extra_suites: tuple[str, ...] = ()
    benign_suite: str = "benign"
    safe_suites: tuple[str, ...] = ("borderline", "safe-alarming")
    test_fraction: float = 0.5
    split_seed: int = 0
    n_direct: int | None = None
    n_safe: int | None = None
    n_prefill: int | None = None
    prefill_ks: tuple[int, ...] = (5, 10, 20, 40)
    n_decoding: int | None = None
    decoding_grid: Literal["reduced", "full"] | None = None
    n_gcg: int | None = None
    gcg_steps: int | None = None
    gcg_search_width: int | None = None
    finetune: bool | None = None
    finetune_kind: str = "harmful"
    finetune_defense: str | None = None
    finetune_freeze_layers: tuple[int, ...] | None = None
    finetune_examples: int | None = None
    finetune_steps: int | None = None
    n_finetune_eval: int | None = None
    audio_manifest: str | None = None
    n_audio: int | None = None
    audio_budget: str = "snr:30"
    audio_steps: int | None = None
    audio_tdnf: float | None = 20.0
    audio_draws: int | None = None
    max_new_tokens: int = 64
    attack_tokens: int = 48

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.non_empty("models", "families", "prefill_ks")
        check.one_of("profile", tuple(PROFILES))
        check.each_at_least(1, "prefill_ks")
        check.in_range("test_fraction", 0, 1, low_open=True, high_open=True)
        check.at_least(1, "n_direct", "n_safe", "n_prefill", "n_decoding", "n_gcg", "gcg_steps")
        check.at_least(1, "gcg_search_width", "finetune_examples", "finetune_steps", "n_finetune_eval")
        check.at_least(1, "n_audio", "audio_steps", "audio_draws", "max_new_tokens", "attack_tokens")
        check.at_least(1, "batch_size")
        if self.decoding_grid is not None:
            check.one_of("decoding_grid", ("reduced", "full"))
        check.one_of("finetune_kind", ("harmful", "identity", "backdoor"))
        check.one_of("finetune_defense", (None, "constrained", "sppft"))
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise OptionError(
                "ScorecardConfig.families", f"must be among {', '.join(FAMILIES)}", ",".join(unknown)
            )
        if len(set(self.models)) != len(self.models):
            raise OptionError("ScorecardConfig.models", "must not repeat a model", list(self.models))
        if self.finetune_defense == "sppft" and (
            self.finetune_freeze_layers is None or len(self.finetune_freeze_layers) != 2
        ):
            raise OptionError(
                "ScorecardConfig.finetune_freeze_layers",
                "must be FIRST,LAST for the sppft defence",
                self.finetune_freeze_layers,
            )
        for spec in self.speech:
            if "=" not in spec:
                raise OptionError("ScorecardConfig.speech", "must be MODEL=SLM_SPEC", spec)
        from alignscope.server.guards import parse_guard_spec

        for spec in self.guard:
            try:
                parse_guard_spec(spec)
            except ValueError as e:
                raise OptionError("ScorecardConfig.guard", f"must be a guard spec ({e})", spec) from None
        check_judge_spec(self.judge)
        from alignscope.speech.attacks.config import parse_budget

        try:
            parse_budget(self.audio_budget)
        except ValueError as e:
            raise OptionError("ScorecardConfig.audio_budget", str(e), self.audio_budget) from None

    def size(self, name: str) -> Any:
        """A profile-set setting: the field when given, else the profile's value."""
        if name not in _SIZED:
            raise KeyError(name)
        value = getattr(self, name)
        return PROFILES[self.profile][name] if value is None else value

    def sizes(self) -> dict[str, Any]:
        """Every profile-set setting as it applies to this run."""
        return {name: self.size(name) for name in _SIZED}

    def speech_spec(self, model: str) -> str | None:
        """The speech build of ``model``: its ``speech`` entry, ``default`` for the embedded speech build's
        LLM, else None."""
        for spec in self.speech:
            name, _, slm = spec.partition("=")
            if name.strip() == model:
                return slm.strip()
        from alignscope.speech.build.config import DEFAULT_SPEECH_LLM

        return "default" if model == DEFAULT_SPEECH_LLM else None
