"""The safety-layer experiment: scan, detect, compare, localise, probe and view, into one run directory.

Li et al., "Safety Layers in Aligned Large Language Models" (ICLR 2025, arXiv 2408.17003), end to end: the
cosine scan and gap curve (:mod:`alignscope.analysis.layer_scan`), the automatically detected initial range (or
"no range found"), an optional control model scanned on the same prompts and pairs, the over-rejection
localisation (:mod:`alignscope.analysis.overrejection`), and, beyond the paper, the probe guard
(:mod:`alignscope.analysis.probe`) and the transparency view (:mod:`alignscope.analysis.saliency`).

:func:`run_safety_layers` is the experiment (``alignscope analyze safety-layers``): a
:class:`SafetyLayersConfig` in, a :class:`SafetyLayersResult` out. :func:`analyze_safety_layers` is the same
analysis on already-loaded models and explicit prompt lists (the audit and tests call it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from alignscope.analysis.layer_scan import (
    RangeRule,
    SafetyLayerScan,
    SafetyLayerScanConfig,
    SafetyRange,
    detect_safety_range,
    plot_safety_layer_scan,
    prompt_hidden_states,
    scan_from_hidden,
    with_template,
)
from alignscope.analysis.overrejection import DEFAULT_ALPHA, localize_safety_layers, plot_overrejection
from alignscope.analysis.probe import ProbeConfig, fit_probes
from alignscope.analysis.probe_contrast import fit_contrast_probes, guard_splits, split_states
from alignscope.analysis.saliency import plot_saliency, refusal_saliency
from alignscope.config_io import ConfigIO, RunSettings
from alignscope.judges.base import Judge
from alignscope.judges.keyword import KeywordJudge
from alignscope.judges.registry import check_judge_spec
from alignscope.models.base import ModelError
from alignscope.models.loading import DEFAULT_MODEL, load_model
from alignscope.models.local import LocalModel
from alignscope.models.pool import ModelPool
from alignscope.runs.experiment import experiment
from alignscope.runs.store import RunDir
from alignscope.validation import FieldChecks, OptionError

log = logging.getLogger("alignscope.analysis")

SCAN_STAGE = "safety-scan"
PROBE_STAGE = "probe"
SALIENCY_STAGE = "saliency"
NO_RANGE = "no safety-layer range found"


@dataclass(frozen=True)
class SafetyLayersConfig(RunSettings):
    """Settings of the safety-layer experiment (``alignscope analyze safety-layers``).

    Attributes:
        model: spec of the (aligned) model to scan; it must be local (the scan reads hidden states).
        control: spec of a model with no safety training, scanned on the same prompts and pairs (the paper's
            control); None skips it.
        normal: normal (benign) prompts suite.
        malicious: malicious (harmful) prompts suite.
        overrejection: over-rejection suite (borderline-safe prompts), used whole.
        n: normal and malicious prompts each (category-stratified; the paper: 100 + 100); None takes all.
        draws: random pairs per pair type (the paper: 500).
        seed: seed of the prompt subsets and the pair draws.
        template: chat (the model's template) or plain.
        batch_size: prompts per forward pass.
        system_prompt: system message for every prompt (None: the template's default, if any).
        rule: thresholds of the range rule.
        localize: pin the range down by over-rejection (slow).
        initial_range: START-END (inclusive): start the localisation here instead of the detected range.
        alpha: over-rejection weight scale.
        judge: judge spec of the over-rejection generations.
        max_new_tokens: tokens generated per over-rejection answer.
        radius: layers each end of the range moves in the localisation.
        probe: fit the per-layer probes and save the probe guard (``probe_guard.json``).
        guard_contrast: the probe guard's default fit: harmful and benign prompts plus contrastive twins
            (``guard_safe`` as negatives, ``guard_unsafe`` as positives), each suite used whole and split into a
            train half (fit, with a validation part carved from it) and a held-out test half
            (:mod:`alignscope.analysis.probe_contrast`). False: the earlier fit on the scan's harmful vs benign
            prompts, with no held-out rates.
        guard_fpr: target false-positive rate of the guard's threshold on the validation split (with
            ``guard_contrast``: on each of the benign and alarming-but-safe validation prompts).
        guard_safe: alarming-but-safe prompts (XSTest-style), the negatives' contrastive half.
        guard_unsafe: their unsafe twins, the positives' contrastive half.
        guard_test_fraction: share of each suite held out as the test half (the training recipes' split).
        guard_split_seed: seed of that split (:meth:`Suite.split`).
        saliency: prompts shown in the transparency view (0 skips it).
    """

    suite_fields = ("normal", "malicious", "overrejection", "guard_safe", "guard_unsafe")
    model: str = DEFAULT_MODEL
    control: str | None = None
    normal: str = "benign"
    malicious: str = "harmful"
    overrejection: str = "borderline"
    n: int | None = 100
    draws: int = 500
    template: Literal["chat", "plain"] = "chat"
    system_prompt: str | None = None
    rule: RangeRule = field(default_factory=RangeRule)
    localize: bool = False
    initial_range: tuple[int, int] | None = None
    alpha: float = DEFAULT_ALPHA
    judge: str = "keyword"
    max_new_tokens: int = 16
    radius: int = 3
    probe: bool = True
    guard_contrast: bool = True
    guard_fpr: float = 0.05
    guard_safe: str = "safe-alarming"
    guard_unsafe: str = "unsafe-contrast"
    guard_test_fraction: float = 0.5
    guard_split_seed: int = 0
    saliency: int = 3

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.in_range("guard_fpr", 0, 1, high_open=True)
        check.in_range("guard_test_fraction", 0, 1, low_open=True, high_open=True)
        check.at_least(2, "n")  # the scan compares pairs of normal and of malicious prompts
        check.at_least(1, "draws", "batch_size", "max_new_tokens")
        check.at_least(0, "radius", "saliency")
        check.positive("alpha")
        check.one_of("template", ("chat", "plain"))
        if self.initial_range is not None:
            check.each_at_least(0, "initial_range")
            if len(self.initial_range) != 2 or self.initial_range[0] > self.initial_range[1]:
                raise OptionError(
                    "SafetyLayersConfig.initial_range",
                    "expects START-END with START <= END",
                    self.initial_range,
                )
        check_judge_spec(self.judge)

    def probe_config(self) -> ProbeConfig:
        return ProbeConfig(target_fpr=self.guard_fpr, template=self.template, batch_size=self.batch_size)

    def scan_config(self) -> SafetyLayerScanConfig:
        return SafetyLayerScanConfig(
            draws=self.draws,
            seed=self.seed,
            template=self.template,
            batch_size=self.batch_size,
            system_prompt=self.system_prompt,
        )


PASSED_THROUGH: tuple[str, ...] = (
    "localize",
    "initial_range",
    "normal",
    "malicious",
    "overrejection",
    "rule",
    "alpha",
    "max_new_tokens",
    "radius",
    "probe",
    "guard_contrast",
    "guard_safe",
    "guard_unsafe",
    "guard_test_fraction",
    "guard_split_seed",
    "saliency",
)
"""The :class:`SafetyLayersConfig` fields that :func:`run_safety_layers` hands to :func:`analyze_safety_layers`
unchanged, as the parameter of the same name; the others are loaded or assembled first (models, judge, scan
and probe configs)."""


@dataclass(frozen=True)
class SafetyLayersResult(ConfigIO):
    """What the safety-layer experiment found (``metrics["safety_layers"]`` of its run).

    Attributes:
        method: the method and paper.
        model, template: the scanned model and the chat template that formatted the prompts.
        suites: the normal, malicious and over-rejection suites (names, or ``custom[n]`` for prompt lists).
        n_normal, n_malicious: prompts scanned of each kind.
        scan: the scan's per-layer curves (:meth:`SafetyLayerScan.to_dict`).
        rule: the range rule's thresholds.
        range: the detected range (``start``, ``end``, ``steepest``, ``rise_deg``, ``baseline_deg``) or None.
        range_text: the range as ``[start, end]``, or ``"no safety-layer range found"``.
        plots: plot paths, relative to the run directory.
        control: the control model's scan, range and comparison (None without a control).
        localization: the over-rejection table and chosen range, or why it was skipped (None: not asked).
        probe: per-layer probe scores, the chosen layer and the guard file (None: not fitted).
        saliency: the transparency views (None: none drawn).
    """

    method: str
    model: str
    template: str
    suites: dict[str, str]
    n_normal: int
    n_malicious: int
    scan: dict[str, Any]
    rule: dict[str, Any]
    range: dict[str, Any] | None
    range_text: str
    plots: list[str] = field(default_factory=list)
    control: dict[str, Any] | None = None
    localization: dict[str, Any] | None = None
    probe: dict[str, Any] | None = None
    saliency: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary, as stored under ``metrics["safety_layers"]`` (absent parts left out)."""
        optional = ("control", "localization", "probe", "saliency")
        return {
            f: getattr(self, f)
            for f in self.__dataclass_fields__
            if f not in optional or getattr(self, f) is not None
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SafetyLayersResult:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @property
    def safety_range(self) -> tuple[int, int] | None:
        """The detected range as an inclusive ``(start, end)``, or None."""
        return (int(self.range["start"]), int(self.range["end"])) if self.range else None

    def summary(self) -> str:
        gaps = [g for g in self.scan.get("gap_deg", []) if g is not None]
        parts = [f"safety layers of {self.model}: {self.range_text}"]
        if gaps:
            parts.append(f"max gap {max(gaps):.2f} deg over {len(gaps)} layers")
        if self.control is not None:
            parts.append(f"control {self.control['model']}: {self.control['range_text']}")
        if self.localization is not None and "chosen" in self.localization:
            parts.append(f"localised to {self.localization['chosen']}")
        if self.probe is not None:
            text = f"probe guard on layer {self.probe['chosen_layer']}"
            held = self.probe.get("held_out")
            if held:
                fp = held["false_positive_rate"]
                text += (
                    f" (held-out false positives: alarming-but-safe {fp['safe']['rate']:.1%} of "
                    f"{fp['safe']['n']}, benign {fp['benign']['rate']:.1%} of {fp['benign']['n']})"
                )
            parts.append(text)
        return "; ".join(parts)


@experiment(SafetyLayersConfig)
def run_safety_layers(
    config: SafetyLayersConfig, run: RunDir | None, pool: ModelPool, progress: bool
) -> SafetyLayersResult:
    """The safety-layer experiment: load the model (and the control) and the judge, scan, detect, localise,
    fit the probe guard and draw the views into ``run`` (resumable), then rebuild its report."""

    def local(spec: str) -> LocalModel:
        m = pool.get(spec)
        if not isinstance(m, LocalModel):
            raise ModelError(f"{m.name} is not a local model: the safety-layer scan needs its hidden states")
        return m

    return analyze_safety_layers(
        local(config.model),
        control=local(config.control) if config.control is not None else None,
        out=run,
        n_prompts=config.n,
        config=config.scan_config(),
        judge=pool.judge(config.judge) if config.localize else None,
        probe_config=config.probe_config(),
        progress=progress,
        **{name: getattr(config, name) for name in PASSED_THROUGH},
    )


def _prompts(source: str | Sequence[str], n: int | None, seed: int) -> tuple[list[str], str]:
    """Prompts and a name for the report: a suite spec (``load_suite``) or an explicit list."""
    if isinstance(source, str):
        from alignscope.data import load_suite

        suite = load_suite(source).take(n, seed=seed)
        return suite.prompts, suite.name
    items = list(source)
    return (items[:n] if n is not None else items), f"custom[{len(items)}]"


def _model(spec: str | LocalModel, template: str, device: str | None) -> LocalModel:
    if isinstance(spec, LocalModel):
        return with_template(spec, template)
    return load_model(spec, device=device, template=template)


def analyze_safety_layers(
    model: str | LocalModel,
    *,
    control: str | LocalModel | None = None,
    localize: bool = False,
    initial_range: tuple[int, int] | None = None,
    out: RunDir | None = None,
    normal: str | Sequence[str] = "benign",
    malicious: str | Sequence[str] = "harmful",
    overrejection: str | Sequence[str] = "borderline",
    n_prompts: int | None = 100,
    config: SafetyLayerScanConfig | None = None,
    rule: RangeRule | None = None,
    alpha: float = DEFAULT_ALPHA,
    judge: Judge | None = None,
    max_new_tokens: int = 16,
    radius: int = 3,
    probe: bool = True,
    probe_config: ProbeConfig | None = None,
    guard_contrast: bool = True,
    guard_safe: str | Sequence[str] = "safe-alarming",
    guard_unsafe: str | Sequence[str] = "unsafe-contrast",
    guard_test_fraction: float = 0.5,
    guard_split_seed: int = 0,
    saliency: int | Sequence[str] = 3,
    device: str | None = None,
    progress: bool = False,
) -> SafetyLayersResult:
    """Scan, detect, (optionally) compare with a control and localise, fit the probe guard, draw the views.

    Args:
        model: a model spec (``load_model``) or a loaded :class:`LocalModel`.
        control: a model with no safety training (e.g. the base model) scanned on the same prompts and pairs.
        localize: run the over-rejection localisation (the slow part: one short greedy generation over the
            over-rejection set per candidate range); skipped, with the reason recorded, when no range is
            found.
        initial_range: start the localisation from this inclusive ``(start, end)`` instead of the detected
            range (e.g. a range read off a plot, or the paper's range for a known model).
        out: run directory for records (stages ``safety-scan``, ``over-rejection``, ``probe``, ``saliency``),
            ``metrics.json`` (under the key ``"safety_layers"``, other keys kept), plots and
            ``probe_guard.json``. Re-running into it resumes the localisation.
        normal, malicious, overrejection: suite specs for :func:`alignscope.data.load_suite` or prompt lists.
        n_prompts: prompts taken from each of ``normal`` and ``malicious`` (category-stratified; the
            paper used 100 + 100); the over-rejection suite is used whole. None takes all.
        config: scan settings (draws r, seed, template, batch size).
        rule: thresholds of :func:`detect_safety_range`.
        alpha, judge, max_new_tokens, radius: over-rejection settings (see :func:`localize_safety_layers`).
        probe: fit the per-layer probes and save the guard (harmful = ``malicious``, benign = ``normal``,
            false refusals on ``overrejection``).
        probe_config: the probe fit's settings (target false-positive rate, validation share, seed).
        guard_contrast: the default fit (:func:`alignscope.analysis.probe_contrast.fit_contrast_probes`):
            ``malicious`` and ``guard_unsafe`` as positives, ``normal`` and ``guard_safe`` as negatives, each
            used whole and split by ``guard_test_fraction`` / ``guard_split_seed``; the threshold is set on a
            validation part of the train halves and the held-out rates are read on the test halves. False:
            the earlier fit on the scan's ``malicious`` vs ``normal`` prompts (validation rates only).
        guard_safe, guard_unsafe: the contrastive suites (specs or prompt lists).
        guard_test_fraction, guard_split_seed: the held-out split of every suite of the contrastive fit.
        saliency: how many prompts to show in the transparency view (the first harmful ones, then the first
            borderline one), or the prompts themselves; 0 skips it.

    Returns:
        the result (``to_dict()`` is the JSON summary stored in ``metrics.json``): model, template, suites, the gap curves, the range (or ``"no safety-layer range
        found"``), the control comparison, the R_o table, the per-layer probe scores and the saliency views,
        each with the settings that produced it; plot paths are relative to ``out``.
    """
    config = config or SafetyLayerScanConfig()
    rule = rule or RangeRule()
    probe_config = probe_config or ProbeConfig(template=config.template, batch_size=config.batch_size)
    lm = _model(model, config.template, device)
    normal_p, normal_name = _prompts(normal, n_prompts, config.seed)
    malicious_p, malicious_name = _prompts(malicious, n_prompts, config.seed)
    over_p, over_name = _prompts(overrejection, None, config.seed)

    def states(m: LocalModel, prompts: list[str]) -> Any:
        return prompt_hidden_states(m, prompts, config.template, config.batch_size, config.system_prompt)

    normal_h, malicious_h = states(lm, normal_p), states(lm, malicious_p)
    scan = scan_from_hidden(normal_h, malicious_h, config, model_name=lm.name, template=lm.template_name)
    found = detect_safety_range(scan.gap, **asdict(rule))
    summary: dict[str, Any] = {
        "method": "Li et al. 2024 (arXiv 2408.17003): last-token cosine scan, angle gap, over-rejection",
        "model": lm.name,
        "template": lm.template_name,
        "suites": {"normal": normal_name, "malicious": malicious_name, "overrejection": over_name},
        "n_normal": len(normal_p),
        "n_malicious": len(malicious_p),
        "scan": scan.to_dict(),
        "rule": asdict(rule),
        "range": found.to_dict() if found else None,
        "range_text": str(found) if found else NO_RANGE,
        "plots": [],
    }
    _record_scan(out, "model", scan)
    control_scan = control_range = None
    if control is not None:
        cm = _model(control, config.template, device)
        control_scan = scan_from_hidden(
            states(cm, normal_p),
            states(cm, malicious_p),
            config,
            model_name=cm.name,
            template=cm.template_name,
        )
        control_range = detect_safety_range(control_scan.gap, **asdict(rule))
        _record_scan(out, "control", control_scan)
        summary["control"] = {
            "model": cm.name,
            "scan": control_scan.to_dict(),
            "range": control_range.to_dict() if control_range else None,
            "range_text": str(control_range) if control_range else NO_RANGE,
            "comparison": _compare(scan, control_scan, found),
        }
    if out is not None:
        for suffix in ("png", "svg"):
            p = plot_safety_layer_scan(
                scan, out.plots_dir / f"safety_layers.{suffix}", found, control_scan, control_range
            )
            summary["plots"].append(str(p.relative_to(out.path)))

    if localize:
        start_range = initial_range if initial_range is not None else (found.as_tuple() if found else None)
        if start_range is None:
            summary["localization"] = {"skipped": f"{NO_RANGE}: nothing to localise (pass initial_range)"}
        elif not over_p:
            summary["localization"] = {"skipped": "no over-rejection prompts"}
        else:
            result = localize_safety_layers(
                lm,
                over_p,
                (int(start_range[0]), int(start_range[1])),
                alpha,
                judge=judge or KeywordJudge(),
                max_new_tokens=max_new_tokens,
                batch_size=config.batch_size,
                radius=radius,
                out=out,
                system_prompt=config.system_prompt,
                progress=progress,
            )
            summary["localization"] = {
                **result.to_dict(),
                "suite": over_name,
                "initial_from": "detected range" if initial_range is None else "initial_range argument",
            }
            if out is not None:
                p = plot_overrejection(result, out.plots_dir / "overrejection.png")
                summary["plots"].append(str(p.relative_to(out.path)))

    if probe:
        border_h = states(lm, over_p) if over_p else None
        guard_layers = list(range(found.start, found.end + 1)) if found else None
        if guard_contrast:
            splits = guard_splits(
                {"harmful": malicious, "benign": normal, "safe": guard_safe, "unsafe": guard_unsafe},
                test_fraction=guard_test_fraction,
                split_seed=guard_split_seed,
                validation_fraction=probe_config.validation_fraction,
                seed=probe_config.seed,
            )
            fit = fit_contrast_probes(
                split_states(lm, splits, config.template, config.batch_size, config.system_prompt),
                splits,
                border_h,
                guard_layers=guard_layers,
                config=probe_config,
                model=lm,
                split_settings={"test_fraction": guard_test_fraction, "split_seed": guard_split_seed},
            )
        else:
            fit = fit_probes(
                malicious_h, normal_h, border_h, guard_layers=guard_layers, config=probe_config, model=lm
            )
        summary["probe"] = {**fit.to_dict(), "guard_layers": "safety range" if found else "all layers"}
        if out is not None:
            path = fit.guard.save(out.path / "probe_guard.json")
            summary["probe"]["guard_file"] = str(path.relative_to(out.path))
            done = out.done(PROBE_STAGE)
            for s in fit.scores:
                if f"layer={s.layer}" not in done:
                    out.append({"stage": PROBE_STAGE, "key": f"layer={s.layer}", **s.to_dict()})

    chosen = _saliency_prompts(saliency, malicious_p, over_p)
    if chosen:
        views = [
            refusal_saliency(lm, p, template=config.template, system_prompt=config.system_prompt)
            for p in chosen
        ]
        summary["saliency"] = [{**v.to_dict(), "attention_from_last_token": None} for v in views]
        if out is not None:
            done = out.done(SALIENCY_STAGE)
            for i, v in enumerate(views):
                if f"prompt={i}" not in done:
                    out.append({"stage": SALIENCY_STAGE, "key": f"prompt={i}", **v.to_dict()})
            p = plot_saliency(views, out.plots_dir / "saliency.png")
            summary["plots"].append(str(p.relative_to(out.path)))

    if out is not None:
        metrics = out.metrics()
        metrics["safety_layers"] = summary
        out.write_metrics(metrics)
    return SafetyLayersResult.from_dict(summary)


def _saliency_prompts(saliency: int | Sequence[str], harmful: list[str], borderline: list[str]) -> list[str]:
    if not isinstance(saliency, int):
        return list(saliency)
    if saliency <= 0:
        return []
    n_harm = min(len(harmful), max(1, saliency - 1) if borderline else saliency)
    return harmful[:n_harm] + borderline[: saliency - n_harm]


def _compare(model: SafetyLayerScan, control: SafetyLayerScan, found: SafetyRange | None) -> dict[str, Any]:
    """Mean gap (degrees) of the model and the control over the detected layers (all layers when none)."""
    if model.n_layers != control.n_layers:
        return {
            "note": f"layer counts differ ({model.n_layers} vs {control.n_layers}); no per-layer comparison"
        }
    layers = list(range(found.start, found.end + 1)) if found else list(range(model.n_layers))
    m = float(np.mean(model.gap[layers]))
    c = float(np.mean(control.gap[layers]))
    return {
        "layers": [layers[0], layers[-1]],
        "over": "detected range" if found else "all layers",
        "mean_gap_deg": m,
        "control_mean_gap_deg": c,
        "difference_deg": m - c,
    }


def _record_scan(out: RunDir | None, role: str, scan: SafetyLayerScan) -> None:
    if out is None:
        return
    done = out.done(SCAN_STAGE)
    for layer in range(scan.n_layers):
        key = f"{role}:layer={layer}"
        if key in done:
            continue
        rec: dict[str, Any] = {"stage": SCAN_STAGE, "key": key, "model": scan.model, "layer": layer}
        for kind in scan.mean:
            rec[f"mean_cos_{kind}"] = _f(scan.mean[kind][layer])
            rec[f"std_cos_{kind}"] = _f(scan.std[kind][layer])
            rec[f"angle_deg_{kind}"] = _f(scan.angle[kind][layer])
        rec["gap_deg"] = _f(scan.gap[layer])
        out.append(rec)


def _f(x: Any) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None
