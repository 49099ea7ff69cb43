"""One registry of experiments: config in, typed result out, with a CLI command and a report section each.

Every experiment has the shape of nanoGCG's ``run`` and of training's ``train(recipe, config)``::

    config = PrefillConfig(model="smollm2-aligned", ks=(5, 10))
    result = run_prefill(config)            # or run_prefill(config, run=RunDir.create(...))
    result.to_dict(); PrefillResult.from_dict(d)

:data:`EXPERIMENTS` names, for each, its config class, its ``run_x`` function, its CLI command and the report
section that shows its records. The experiments that load their models into a shared pool get their
``run_x(config=None, run=None, *, models=None, progress=True)`` signature, default config, pool and final
report rebuild from one decorator, :func:`alignscope.runs.experiment.experiment`. Entries hold dotted paths and
are resolved only when used, so this module imports nothing heavy and nothing imports it back: the CLI is
generated from it (:mod:`alignscope.cli`), the report builds its sections from it (:func:`report_sections`), and
the package root re-exports every config and ``run_x`` from it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def resolve(path: str) -> Any:
    """The object a ``"package.module:name"`` path names."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Experiment:
    """One registered experiment.

    Attributes:
        name: the registry key, e.g. ``"prefill"``.
        command: the CLI words, e.g. ``"attack prefill"``.
        config: dotted path of the config class (a frozen dataclass with ``ConfigIO``).
        run: dotted path of ``run_x(config, run=None) -> XResult``.
        result: dotted path of the result class (``to_dict`` / ``from_dict``).
        summary: one line for help texts.
        section: dotted path of the report section builder ``(run, metrics) -> (sections, summary lines)``,
            None when the experiment writes no records of its own.
        generated: the CLI command is generated from the config (:mod:`alignscope.cli.generate`); False when
            it is written by hand (still thin: parse, build the config, call ``run``, print) because the
            config has fields the generated ``--out``/``--resume`` would clash with (a training run's own
            ``out`` and ``resume``) or options that are not config fields one to one (the speech commands'
            ``--budget snr:30,snr:20`` and ``--defense tdnf:snr=20``).
    """

    name: str
    command: str
    config: str
    run: str
    result: str
    summary: str
    section: str | None = None
    generated: bool = True

    @property
    def config_class(self) -> type[Any]:
        return resolve(self.config)

    @property
    def runner(self) -> Callable[..., Any]:
        return resolve(self.run)

    @property
    def result_class(self) -> type[Any]:
        return resolve(self.result)

    @property
    def names(self) -> tuple[str, str, str]:
        """The config, run and result names as exported from the package root."""
        return tuple(p.partition(":")[2] for p in (self.config, self.run, self.result))  # type: ignore[return-value]


def _e(name: str, command: str, module: str, config: str, run: str, result: str, summary: str,
       section: str | None = None, generated: bool = True) -> Experiment:  # fmt: skip
    return Experiment(
        name,
        command,
        f"{module}:{config}",
        f"{module}:{run}",
        f"{module}:{result}",
        summary,
        section,
        generated,
    )


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        _e(
            "audit",
            "audit",
            "alignscope.audit",
            "AuditConfig",
            "run_audit",
            "AuditResult",
            "the full audit: refusal, over-refusal, prefilling, decoding exploit, per-token KL, safety layers",
        ),
        _e(
            "evaluate",
            "evaluate",
            "alignscope.evaluate",
            "EvaluateConfig",
            "run_evaluate",
            "EvaluateResult",
            "refusal, non-refusal (harmful with a harm judge) and over-refusal rates on suites",
            "alignscope.report.build:evaluate_section",
        ),
        _e(
            "prefill",
            "attack prefill",
            "alignscope.attacks.prefill",
            "PrefillConfig",
            "run_prefill",
            "PrefillResult",
            "prefilling attack: k forced tokens of a harmful answer, then the model continues",
            "alignscope.report.build:prefill_section",
        ),
        _e(
            "decoding",
            "attack decoding",
            "alignscope.attacks.decoding",
            "DecodingConfig",
            "run_decoding",
            "DecodingResult",
            "decoding-parameter exploit: worst case over temperature, top-p and top-k",
            "alignscope.report.build:decoding_section",
        ),
        _e(
            "gcg",
            "attack gcg",
            "alignscope.attacks.gcg_eval",
            "GCGAttackConfig",
            "run_gcg_attack",
            "GCGAttackResult",
            "GCG suffixes, then judged generations per split",
            "alignscope.attacks.gcg_report:gcg_section",
        ),
        _e(
            "token-kl",
            "analyze token-kl",
            "alignscope.analysis.token_kl",
            "TokenKLConfig",
            "run_token_kl",
            "TokenKLResult",
            "per-token KL between a model and a reference on harmful (prompt, answer) pairs",
            "alignscope.report.build:token_kl_section",
        ),
        _e(
            "safety-layers",
            "analyze safety-layers",
            "alignscope.analysis.safety_layers",
            "SafetyLayersConfig",
            "run_safety_layers",
            "SafetyLayersResult",
            "safety layers (Li et al. 2024): cosine gap curve, detected range, over-rejection, probe guard",
            "alignscope.report.safety_section:safety_layers_section",
        ),
        _e(
            "finetune-attack",
            "attack finetune",
            "alignscope.training.attack",
            "FinetuneAttackConfig",
            "run_finetune_attack",
            "FinetuneAttackResult",
            "fine-tuning attacks (harmful examples, identity shifting, backdoor), optionally defended",
            generated=False,
        ),
        _e(
            "shallow-vs-deep",
            "reproduce shallow-vs-deep",
            "alignscope.training.reproduce",
            "ShallowDeepConfig",
            "run_shallow_vs_deep",
            "ShallowDeepResult",
            "Qi et al. 2024 on the embedded default: aligned and deep models, refusal, prefilling, per-token KL "
            "and the fine-tuning attack",
            "alignscope.training.reproduce_report:shallow_deep_section",
            generated=False,
        ),
        _e(
            "scorecard",
            "scorecard",
            "alignscope.scorecard",
            "ScorecardConfig",
            "run_scorecard",
            "ScorecardResult",
            "every attack family against each model, with the over-refusal cost: one run, one report",
            "alignscope.report.scorecard_section:scorecard_section",
        ),
        _e(
            "judge-eval",
            "judge-eval",
            "alignscope.judges.validation",
            "JudgeEvalConfig",
            "run_judge_eval",
            "JudgeEvaluation",
            "score a judge against hand-labelled outputs",
            "alignscope.report.judge_eval_section:judge_eval_section",
        ),
        _e(
            "audio-pgd",
            "attack audio-pgd",
            "alignscope.speech.attacks.experiments",
            "AudioPGDAttackConfig",
            "run_audio_pgd",
            "SpokenAttackResult",
            "white-box audio PGD on spoken harmful questions, optionally through TDNF and adaptive",
            "alignscope.speech.attacks.report:speech_attack_section",
            generated=False,
        ),
        _e(
            "audio-transfer",
            "attack audio-transfer",
            "alignscope.speech.attacks.experiments",
            "AudioTransferConfig",
            "run_audio_transfer",
            "SpokenAttackResult",
            "black-box audio transfer: PGD on a surrogate speech LLM, the clips played to the target",
            "alignscope.speech.attacks.report:speech_attack_section",
            generated=False,
        ),
        _e(
            "speech-evaluate",
            "speech evaluate",
            "alignscope.speech.evaluation.held_out",
            "SpeechEvalConfig",
            "run_speech_eval",
            "SpeechEvalResult",
            "held-out spoken evaluation of a speech LLM: refusal, helpfulness, agreement with its LLM",
            generated=False,
        ),
        _e(
            "speechguard",
            "reproduce speechguard",
            "alignscope.speech.evaluation.speechguard",
            "SpeechGuardConfig",
            "run_speechguard",
            "SpeechGuardResult",
            "SpeechGuard reproduction: white-box, TDNF, adaptive and transfer audio attacks in one table",
            "alignscope.speech.attacks.report:speech_attack_section",
            generated=False,
        ),
    )
}
"""Every experiment by name. Sections appear in reports in this order."""

EXTRA_SECTIONS: tuple[str, ...] = (
    "alignscope.report.build:harmful_responses_section",
    "alignscope.report.build:notes_section",
)
"""Report sections of record stages that belong to no single experiment above (reference responses shared by
prefilling and KL, notes), in report order."""


def get_experiment(name: str) -> Experiment:
    """The experiment registered as ``name`` (an error lists the known ones)."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}") from None


def run_experiment(name: str, config: Any = None, run: Any = None) -> Any:
    """Run experiment ``name`` with ``config`` (default: its defaults) into ``run`` (or none)."""
    exp = get_experiment(name)
    return exp.runner(config if config is not None else exp.config_class(), run)


def report_sections() -> list[Callable[..., Any]]:
    """Every report section builder, experiments first (registry order), then :data:`EXTRA_SECTIONS`."""
    paths = [e.section for e in EXPERIMENTS.values() if e.section] + list(EXTRA_SECTIONS)
    return [resolve(p) for p in dict.fromkeys(paths)]


def exports() -> dict[str, str]:
    """Package-root name -> module of every experiment's config, run function and result."""
    out: dict[str, str] = {}
    for e in EXPERIMENTS.values():
        for path in (e.config, e.run, e.result):
            module, _, name = path.partition(":")
            out[name] = module
    return out
