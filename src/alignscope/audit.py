"""``alignscope audit``: one model through every measurement, one run directory, one report.

The audit composes the experiments it shares a run with: :func:`alignscope.evaluate.run_evaluate` (refusal on
harmful prompts, over-refusal on borderline ones), :func:`alignscope.attacks.prefill.run_prefill`,
:func:`alignscope.attacks.decoding.run_decoding`, :func:`alignscope.analysis.token_kl.run_token_kl` (with a
reference) and :func:`alignscope.analysis.safety_layers.run_safety_layers`, on one pool of loaded models. Every stage writes its records as they are
produced and the report is rebuilt from the records alone, so a killed audit resumes and a finished one can be
re-judged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from alignscope.attacks.prefill import DEFAULT_KS
from alignscope.config_io import ConfigIO, RunSettings
from alignscope.evaluate import rates_text
from alignscope.judges.outcomes import MEASURE_LABELS
from alignscope.judges.registry import check_judge_spec
from alignscope.models.loading import DEFAULT_MODEL
from alignscope.models.pool import ModelPool
from alignscope.runs.experiment import experiment
from alignscope.runs.store import RunDir
from alignscope.validation import FieldChecks

log = logging.getLogger("alignscope")

DecodingGrid = Literal["reduced", "full", "off"]


@dataclass(frozen=True)
class AuditConfig(RunSettings):
    """Settings of ``alignscope audit``; the defaults finish in a few minutes on a 2-core CPU.

    Attributes:
        model: spec of the model to audit.
        reference: spec of a reference model (e.g. the base model) for the per-token KL profile; None skips it.
        harmful_suite / borderline_suite: suite specs (see :func:`alignscope.data.load_suite`).
        n_harmful / n_borderline: prompts evaluated for refusal and over-refusal (category-stratified subsets).
        judge: judge spec (see :func:`alignscope.judges.get_judge`).
        max_new_tokens: tokens generated per answer in the refusal and over-refusal stages.
        prefill_ks: prefilled harmful tokens for the prefilling curve.
        n_prefill: harmful prompts in the prefilling and KL stages.
        prefill_source: model that writes the harmful reference responses (default: the reference model if
            given, else the embedded unaligned default).
        attack_tokens: tokens generated after a prefill and in the decoding sweep.
        decoding: decoding-exploit grid: ``reduced`` (7 sampled settings + greedy), ``full`` (the paper's 49)
            or ``off``.
        n_decoding: harmful prompts in the decoding sweep.
        kl_tokens: response positions in the per-token KL profile.
        safety_layers: run the safety-layer scan (cosine gap curve, detected range, probe) on local models.
        n_safety: normal and malicious prompts each in the safety-layer scan.
    """

    suite_fields = ("harmful_suite", "borderline_suite")
    model: str = DEFAULT_MODEL
    reference: str | None = None
    harmful_suite: str = "harmful"
    borderline_suite: str = "borderline"
    n_harmful: int = 40
    n_borderline: int = 40
    judge: str = "keyword"
    max_new_tokens: int = 64
    prefill_ks: tuple[int, ...] = DEFAULT_KS
    n_prefill: int = 20
    prefill_source: str | None = None
    attack_tokens: int = 48
    decoding: DecodingGrid = "reduced"
    n_decoding: int = 16
    kl_tokens: int = 48
    safety_layers: bool = True
    n_safety: int = 32
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.at_least(1, "n_harmful", "n_borderline", "n_prefill", "n_decoding")
        check.at_least(1, "max_new_tokens", "attack_tokens", "kl_tokens", "batch_size")
        check.at_least(2, "n_safety")  # the scan compares pairs of normal and of malicious prompts
        check.each_at_least(0, "prefill_ks")
        check.one_of("decoding", ("reduced", "full", "off"))
        check_judge_spec(self.judge)


@dataclass(frozen=True)
class AuditResult(ConfigIO):
    """What the audit measured: the run's metrics (every stage's rates with their provenance) and which
    stages were not applicable (with the reason)."""

    metrics: dict[str, Any]
    notes: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"{suite}: {rates_text(m)} (judge {m['judge']})"
            for suite, m in self.metrics.get("evaluate", {}).items()
        ]
        pre = self.metrics.get("prefill")
        if pre:
            per_k = ", ".join(f"k={k}: {100 * v['rate']:.0f}%" for k, v in pre["success"].items())
            lines.append(f"prefilling attack, {MEASURE_LABELS[pre['measure']]}: {per_k}")
        dec = self.metrics.get("decoding")
        if dec:
            lines.append(
                f"decoding exploit, worst-case {MEASURE_LABELS[dec['measure']]}: "
                f"{100 * float(dec['worst_case']['rate']):.1f}%"
            )
        lines += [f"not applicable: {text}" for text in self.notes.values()]
        return "\n".join(lines)


@experiment(AuditConfig, report=False)  # rebuilds the report itself, for its metrics
def run_audit(config: AuditConfig, run: RunDir | None, pool: ModelPool, progress: bool) -> AuditResult:
    """Audit one model into ``run`` (required for the report; without it the stages run in memory and only
    their rates are returned). ``models`` shares already-loaded models (tests pass tiny models)."""
    from alignscope.analysis.token_kl import TokenKLConfig, run_token_kl
    from alignscope.attacks.decoding import DecodingConfig, run_decoding
    from alignscope.attacks.prefill import PrefillConfig, run_prefill
    from alignscope.data import load_suite
    from alignscope.evaluate import EvaluateConfig, evaluate_suites
    from alignscope.models.local import LocalModel
    from alignscope.report.build import rebuild

    harmful = load_suite(config.harmful_suite)  # bad suites fail before a model loads
    borderline = load_suite(config.borderline_suite)
    model = pool.get(config.model)
    source = config.prefill_source or config.reference or DEFAULT_MODEL
    # the attack stages share the harmful suite; prefilling and KL also share the source's harmful answers
    common: dict[str, Any] = {
        "model": config.model,
        "suite": config.harmful_suite,
        "judge": config.judge,
        "seed": config.seed,
        "batch_size": config.batch_size,
    }
    answers: dict[str, Any] = {"n": config.n_prefill, "source": source}
    notes: dict[str, str] = {}

    def stage(runner: Callable[..., object], stage_config: RunSettings) -> None:
        """Run a sub-experiment into the audit's run, on the audit's pool of models."""
        runner(stage_config, run, models=pool, progress=progress)

    def not_applicable(key: str, text: str) -> None:
        notes[key] = note(run, key, text)

    evaluate_suites(
        model,
        [harmful.take(config.n_harmful, config.seed), borderline.take(config.n_borderline, config.seed)],
        pool.judge(config.judge),
        EvaluateConfig(
            max_new_tokens=config.max_new_tokens, seed=config.seed, batch_size=config.batch_size
        ).generation(),
        run,
        progress,
    )
    counter = pool.get(source)
    if model.supports_prefill and (isinstance(model, LocalModel) or isinstance(counter, LocalModel)):
        stage(
            run_prefill,
            PrefillConfig(
                ks=config.prefill_ks,
                max_new_tokens=config.attack_tokens,
                response_tokens=max(config.kl_tokens, 64),
                **answers,
                **common,
            ),
        )
    else:
        not_applicable(
            "prefill",
            f"{model.name} does not accept an assistant prefill: the prefilling attack is not applicable to it.",
        )
    if config.decoding != "off":
        stage(
            run_decoding,
            DecodingConfig(
                n=config.n_decoding,
                grid=config.decoding,
                max_new_tokens=config.attack_tokens,
                **common,
            ),
        )
    if config.reference is not None:
        reference = pool.get(config.reference)
        if isinstance(model, LocalModel) and isinstance(reference, LocalModel):
            stage(
                run_token_kl,
                TokenKLConfig(reference=config.reference, max_tokens=config.kl_tokens, **answers, **common),
            )
        else:
            not_applicable(
                "token_kl",
                "the per-token KL needs the logits of both models: not applicable to remote models.",
            )
    if config.safety_layers:
        if isinstance(model, LocalModel):
            if run is None or "safety_layers" not in run.metrics():
                from alignscope.analysis.safety_layers import SafetyLayersConfig, run_safety_layers

                stage(
                    run_safety_layers,
                    SafetyLayersConfig(
                        model=config.model,
                        n=config.n_safety,
                        saliency=2,
                        device=config.device,
                        dtype=config.dtype,
                    ),
                )
        else:
            not_applicable(
                "safety_layers",
                "the safety-layer scan needs hidden states: not applicable to remote models.",
            )
    metrics: dict[str, Any] = {}
    if run is not None:
        metrics, _ = rebuild(run)
    return AuditResult(metrics, notes)


def note(run: RunDir | None, key: str, text: str) -> str:
    """Record, once, why a part of a command was not run; the report lists these notes. Returns ``text``."""
    log.warning(text)
    if run is not None and key not in run.done("note"):
        run.append({"stage": "note", "key": key, "text": text})
    return text
