"""One call that runs the whole safety-layer analysis and writes it into a run directory.

Li et al., "Safety Layers in Aligned Large Language Models" (ICLR 2025, arXiv 2408.17003), end to end: the
cosine scan and gap curve, the automatically detected initial range (or "no range found"), an optional control
model scanned on the same prompts and pairs, the over-rejection localisation, and, beyond the paper, the probe
guard and the transparency view. ``alignscope analyze safety-layers`` and the ``audit`` report call
:func:`analyze_safety_layers`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from alignscope.analysis.overrejection import DEFAULT_ALPHA, localize_safety_layers, plot_overrejection
from alignscope.analysis.probe import ProbeConfig, fit_probes
from alignscope.analysis.safety_layers import (
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
from alignscope.analysis.saliency import plot_saliency, refusal_saliency
from alignscope.judges import Judge, KeywordJudge
from alignscope.models import LocalModel, load_model
from alignscope.runs import RunDir

log = logging.getLogger("alignscope.analysis")

SCAN_STAGE = "safety-scan"
PROBE_STAGE = "probe"
SALIENCY_STAGE = "saliency"
NO_RANGE = "no safety-layer range found"


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
    saliency: int | Sequence[str] = 3,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
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
        saliency: how many prompts to show in the transparency view (the first harmful ones, then the first
            borderline one), or the prompts themselves; 0 skips it.

    Returns:
        a JSON-able summary: model, template, suites, the gap curves, the range (or ``"no safety-layer range
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
    return summary


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
