"""The safety-layers section of a report, read from ``metrics["safety_layers"]`` (written by
:func:`alignscope.analysis.safety_layers.analyze_safety_layers`)."""

from __future__ import annotations

from typing import Any

from alignscope.report.html import Figure, Section, Table
from alignscope.runs.store import RunDir


def safety_layers_section(run: RunDir, metrics: dict[str, Any]) -> tuple[list[Section], list[str]]:
    sl = metrics.get("safety_layers")
    if not sl:
        return [], []
    scan = sl["scan"]
    gap = scan["gap_deg"]
    sec = Section(
        "Safety layers",
        intro=(
            "Cosine similarity of last-prompt-token hidden states for normal-normal (N-N), normal-malicious (N-M) "
            "and malicious-malicious pairs at every decoder layer, and the angle gap angle(N-M) - angle(N-N) "
            "(Li et al. 2024). The gap opens in the layers that separate malicious from normal prompts; the "
            "initial safety-layer range is read off the curve by a documented rule (thresholds below)."
        ),
        provenance={
            "model": sl["model"],
            "template": sl["template"],
            "normal": sl["suites"]["normal"],
            "malicious": sl["suites"]["malicious"],
            "pairs per type": scan["config"].get("draws"),
            "seed": scan["config"].get("seed"),
            "rule": ", ".join(f"{k}={v}" for k, v in sl["rule"].items()),
        },
    )
    rows = [
        ["detected range", sl["range_text"]],
        ["max gap (deg)", f"{max(g for g in gap if g is not None):.2f}"],
    ]
    if "control" in sl:
        c = sl["control"]
        rows.append([f"control ({c['model']}) range", c["range_text"]])
        cmp_ = c.get("comparison", {})
        if "mean_gap_deg" in cmp_:
            rows.append(
                [
                    f"mean gap over {cmp_['over']} {cmp_['layers']}",
                    f"model {cmp_['mean_gap_deg']:.2f} deg vs control {cmp_['control_mean_gap_deg']:.2f} deg",
                ]
            )
    sec.tables.append(Table(["measure", "value"], rows))
    for rel in sl.get("plots", []):
        path = run.path / rel
        if path.suffix == ".png" and path.exists():
            sec.figures.append(Figure(path, path.stem.replace("_", " ")))
    loc = sl.get("localization")
    if loc and "table" in loc:
        sec.tables.append(
            Table(
                ["range", "phase", "R_o (over-rejection) [95% CI]"],
                [
                    [
                        f"[{r['start']}, {r['end']}]" if r["start"] >= 0 else "unscaled",
                        r["phase"],
                        f"{100 * r['rate']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] (n={r['total']})",
                    ]
                    for r in loc["table"]
                ],
                f"over-rejection localisation, alpha={loc['alpha']} ({loc['objective']}); chosen range "
                f"{loc['chosen']}",
            )
        )
    elif loc and "skipped" in loc:
        sec.notes.append(f"Over-rejection localisation skipped: {loc['skipped']}.")
    probe = sl.get("probe")
    if probe:
        best = sorted(probe["per_layer"], key=lambda s: -s["auroc"])[:5]
        sec.tables.append(
            Table(
                ["layer", "AUROC", "TPR", "FPR", "false refusals on borderline"],
                [
                    [
                        s["layer"],
                        f"{s['auroc']:.3f}",
                        f"{s['tpr']:.2f}",
                        f"{s['fpr']:.2f}",
                        f"{s['false_refusals']}/{s['n_borderline']}" if s.get("n_borderline") else "n/a",
                    ]
                    for s in best
                ],
                f"linear probe ({_fit_text(probe)}), best layers on the validation split; guard uses layer "
                f"{probe.get('chosen_layer')}",
            )
        )
        if "held_out" in probe:
            sec.tables.append(_guard_rates_table(probe))
    summary = [f"Safety layers ({sl['model']}): {sl['range_text']}."]
    if probe and "held_out" in probe:
        fp = probe["held_out"]["false_positive_rate"]
        summary.append(
            f"Probe guard (layer {probe.get('chosen_layer')}): held-out false positives "
            f"{_pct(fp['safe'])} of alarming-but-safe, {_pct(fp['benign'])} of benign prompts."
        )
    return [sec], summary


ROLE_TEXT = {
    "benign": "benign",
    "safe": "alarming-but-safe (XSTest-style)",
    "harmful": "harmful",
    "unsafe": "unsafe twins",
}


def _fit_text(probe: dict[str, Any]) -> str:
    if probe.get("fit") == "contrast":
        return "harmful + unsafe twins vs benign + alarming-but-safe"
    return "harmful vs benign"


def _pct(r: dict[str, Any]) -> str:
    if not r.get("n"):
        return "n/a (n=0)"
    return f"{100 * r['rate']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] (n={r['n']})"


def _guard_rates_table(probe: dict[str, Any]) -> Table:
    """The guard at its threshold: flagged shares per role on validation and on the held-out test halves."""
    data = probe.get("data", {})
    rows = []
    for kind, measure in (
        ("false_positive_rate", "false-positive rate"),
        ("true_positive_rate", "true-positive rate"),
    ):
        for role, held in probe["held_out"][kind].items():
            if role == "all":
                continue
            suite = data.get(role, {}).get("suite", role)
            val = probe["validation"][kind].get(role, {})
            rows.append([f"{ROLE_TEXT.get(role, role)} ({suite})", measure, _pct(val), _pct(held)])
    ho = probe["held_out"]
    auc = ", ".join(
        f"{name} {ho[key]:.3f}"
        for key, name in (("auroc", "AUROC"), ("auroc_unsafe_vs_safe", "AUROC unsafe vs safe twins"))
        if ho.get(key) is not None
    )
    split = probe.get("split", {})
    return Table(
        ["prompts", "measure", "validation [95% CI]", "held-out test half [95% CI]"],
        rows,
        f"probe guard on layer {probe.get('chosen_layer')} at threshold {probe['threshold']:.3g} (log-odds), "
        f"chosen on the validation split for a target false-positive rate of {probe['target_fpr']:.0%} on each "
        f"safe role; test halves: test_fraction={split.get('test_fraction')}, "
        f"split_seed={split.get('split_seed')}, never used to fit or choose; held-out {auc}",
    )
