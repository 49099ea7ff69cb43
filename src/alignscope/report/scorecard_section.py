"""The scorecard's report: the worst family and the over-refusal cost first, then models x families (table and
chart), the leaderboard for several models, and each family's parts.

Built from the ``scorecard`` records alone (each family's score with the guard counted), so a killed run's
finished families still show; the per-sample records behind them are in each model's sub-run
(``models/<model>/report.html``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignscope.report.html import Figure, Section, Table
from alignscope.runs.store import RunDir

_NOTE = (
    "Attack success is named by what the judge can tell: the non-refusal rate for the keyword judge (complied, "
    "whatever it says: an upper bound on harm), the harmful rate only from a judge that judges harm. Each "
    "family's value is its worst part (the worst prefilled k, the worst case of the decoding sweep, the worst "
    "suite); GCG's is its with-suffix rate, audio's the worst attack against the deployed defence. Over-refusal "
    "is the refusal rate of the worst benign or alarming-but-safe suite. Built-in suites are scored on their "
    "held-out side. 95% Wilson intervals in brackets."
)


def _guard_note(guards: Sequence[str]) -> str:
    if not guards:
        return "No guard: every number is the model alone."
    return (
        f"Guard counted as part of the model: {', '.join(guards)}. A prompt a blocking input guard flags counts "
        "as refused in every family (attack success drops, over-refusal rises); an answer a blocking output guard "
        "flags becomes a refusal. Spoken questions pass input guards unread (they read text). Each part is also "
        "shown without the guard."
    )


def scorecard_section(run: RunDir, metrics: dict[str, Any]) -> tuple[list[Section], list[str]]:
    records = run.records("scorecard")
    if not records:
        return [], []
    from alignscope.scorecard.config import FAMILIES
    from alignscope.scorecard.result import (
        FAMILY_TITLES,
        MEASURE_NAMES,
        FamilyScore,
        ScorecardResult,
        all_families,
        fmt_rate,
    )

    cfg = run.config()
    models = list(cfg.get("models") or dict.fromkeys(r["model"] for r in records))
    by_model: dict[str, dict[str, FamilyScore]] = {m: {} for m in models}
    for r in records:
        by_model.setdefault(r["model"], {})[r["family"]] = FamilyScore.from_dict(r["score"])
    selected = set(cfg.get("families") or FAMILIES)
    scores = {m: all_families({f: s for f, s in fam.items() if f in selected}) for m, fam in by_model.items()}
    for fam in scores.values():  # selected but not finished (a killed run): say so, never 0
        for f in selected:
            if fam[f].status == "not_selected":
                fam[f] = FamilyScore(f, "skipped", reason="not finished (resume the run)")
    guards = tuple(cfg.get("guard") or ())
    judge = str(cfg.get("judge", "keyword"))
    result = ScorecardResult(scores, judge, guards, {"profile": cfg.get("profile")})
    metrics["scorecard"] = result.to_dict()
    prov = {"models": ", ".join(models), "judge": judge, "guard": ", ".join(guards) or "none",
            "profile": cfg.get("profile"), "decoding": f"greedy, {cfg.get('max_new_tokens')} new tokens "
            f"(attacks: {cfg.get('attack_tokens')})"}  # fmt: skip

    summary: list[str] = []
    head_rows = []
    for m in models:
        worst = result.worst_family(m)
        over = result.over_refusal(m)
        helped = over.details.get("benign_answered")
        f1 = over.details.get("agreement_f1")
        head_rows.append(
            [
                m,
                f"{FAMILY_TITLES[worst.family]} ({worst.worst})" if worst else "none ran",
                f"{worst.measure_name} {fmt_rate(worst.rate)}" if worst else "",
                f"{over.worst}: {fmt_rate(over.rate)}" if over.value is not None else over.cell(),
                fmt_rate(helped) if helped else "",
                f"{f1:.2f}" if isinstance(f1, float) else "",
            ]
        )
        if worst:
            summary.append(
                f"{m}: worst family {FAMILY_TITLES[worst.family]} ({worst.worst}), {worst.measure_name} "
                f"{fmt_rate(worst.rate)} (judge {judge}); over-refusal "
                + (f"{fmt_rate(over.rate)} on {over.worst}." if over.value is not None else f"{over.cell()}.")
            )
    headline = Section(
        "Scorecard: worst family and over-refusal cost",
        intro=_NOTE,
        provenance=prov,
        tables=[
            Table(
                [
                    "model",
                    "worst attack family (part)",
                    "its success [95% CI]",
                    "over-refusal (worst suite)",
                    "benign answered",
                    "agreement with base (token F1)",
                ],
                head_rows,
            )
        ],
        notes=[_guard_note(guards)],
    )

    grid = Section("Models x families", provenance=prov)
    grid.tables.append(
        Table(
            ["model", *[FAMILY_TITLES[f] for f in FAMILIES]],
            [[m, *[scores[m][f].cell() for f in FAMILIES]] for m in models],
            f"attack families: {_attack_measure(scores)} [95% CI] (judge {judge}); over-refusal: refusal rate",
        )
    )
    png = _family_chart(run.plots_dir / "scorecard_families", result, models)
    if png is not None:
        grid.figures.append(
            Figure(png, f"Family value per model (attack success; over-refusal: refusal rate), judge {judge}")
        )
    sections = [headline, grid]

    if len(models) > 1:
        rows = [
            [r["rank"], r["model"],
             f"{FAMILY_TITLES[r['worst_family']]}: {fmt_rate(r['worst_rate'])}" if r["worst_family"] else "none ran",
             fmt_rate(r["over_refusal_rate"]) if r["over_refusal"] is not None else "not measured"]
            for r in result.leaderboard()
        ]  # fmt: skip
        sections.append(
            Section(
                "Leaderboard",
                intro="Safest first: ranked by the worst attack family's success, then by over-refusal.",
                provenance=prov,
                tables=[Table(["rank", "model", "worst family", "over-refusal"], rows)],
            )
        )

    detail = Section("Family details", provenance=prov)
    for f in FAMILIES:
        rows = []
        for m in models:
            s = scores[m][f]
            if s.status != "done":
                rows.append([m, s.cell(), "", "", ""])
                continue
            for part, rate in s.parts.items():
                plain = s.unguarded.get(part)
                rows.append([m, part, MEASURE_NAMES.get(str(rate.get("measure")), s.measure_name),
                             fmt_rate(rate) + (" (family value)" if part == s.worst else ""),
                             fmt_rate(plain) if plain else ""])  # fmt: skip
            extra = "; ".join(f"{k}: {_txt(v)}" for k, v in s.details.items())
            if extra:
                rows.append([m, "settings", "", extra, ""])
        detail.tables.append(
            Table(["model", "part", "measure", "rate [95% CI]", "without the guard"], rows, FAMILY_TITLES[f])
        )
    detail.notes.append(
        "Per-sample records and each experiment's own report: "
        + ", ".join(f"{m}: {_sub_report(run, m)}" for m in models)
    )
    sections.append(detail)
    return sections, summary


def _attack_measure(scores: dict[str, Any]) -> str:
    measures = {
        s.measure for fam in scores.values() for f, s in fam.items() if f != "over_refusal" and s.measure
    }
    if measures == {"harmful"}:
        return "harmful rate"
    return "non-refusal rate" if measures <= {"non_refusal"} else "harmful or non-refusal rate (see details)"


def _txt(v: Any) -> str:
    if isinstance(v, dict) and "n" in v:
        from alignscope.scorecard.result import fmt_rate

        return fmt_rate(v)
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)


def _sub_report(run: RunDir, model: str) -> str:
    from alignscope.scorecard.run import model_slug

    return str(Path("models") / model_slug(model) / "report.html")


def _family_chart(path: Path, result: Any, models: Sequence[str]) -> Path | None:
    """Grouped bars: families on the x axis, one bar per model, Wilson intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alignscope.report.plots import save_figure
    from alignscope.scorecard.config import FAMILIES
    from alignscope.scorecard.result import FAMILY_TITLES

    fams = [f for f in FAMILIES if any(result.scores[m][f].value is not None for m in models)]
    if not fams:
        return None
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(fams) + 2), 3.9), dpi=110)
    for i, m in enumerate(models):
        vals, lo, hi = [], [], []
        for f in fams:
            s = result.scores[m][f]
            v = 100 * s.value if s.value is not None else float("nan")
            vals.append(v)
            lo.append(max(0.0, v - 100 * float(s.rate["ci_low"])) if s.value is not None else 0.0)
            hi.append(max(0.0, 100 * float(s.rate["ci_high"]) - v) if s.value is not None else 0.0)
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(fams))]
        ax.bar(xs, vals, width, yerr=[lo, hi], capsize=2, label=m)
    ax.set_xticks(range(len(fams)))
    ax.set_xticklabels([FAMILY_TITLES[f] for f in fams], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("rate (%)")
    ax.set_title(f"Scorecard ({result.judge} judge)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return save_figure(fig, path)
