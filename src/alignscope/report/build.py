"""Metrics and the HTML report of a run, computed from its sample records alone.

Because nothing here regenerates text, ``alignscope judge`` (re-judging) and ``alignscope report`` reuse it,
and a killed run's partial records still give a partial report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from alignscope.attacks.decoding import summarize_decoding
from alignscope.attacks.stage import harmful_rate, refusal_rate
from alignscope.models.base import GenerationConfig
from alignscope.report.html import Figure, Report, Section, Table, write_report
from alignscope.report.plots import Series, bar_plot, line_plot
from alignscope.runs.store import RunDir
from alignscope.stats import Rate

SectionBuilder = Callable[[RunDir, dict[str, Any]], tuple[list[Section], list[str]]]
"""Reads a run (and fills the metrics dict); returns report sections and summary lines."""

EXTRA_SECTIONS: list[SectionBuilder] = []
"""Builders that other parts of alignscope (safety layers, training) register to add their stages."""


def rebuild(run: RunDir) -> tuple[dict[str, Any], Any]:
    """Recompute ``metrics.json`` and ``report.html`` of ``run`` from its records; returns (metrics, path)."""
    cfg = run.config()
    # keys written by analyses that keep their own summaries (e.g. "safety_layers") are kept
    metrics: dict[str, Any] = {**run.metrics(), "command": cfg.get("command"), "config": cfg}
    sections: list[Section] = []
    summary: list[str] = []
    from alignscope.attacks import gcg_report  # noqa: F401  (registers the GCG section)
    from alignscope.report.safety_section import safety_layers_section
    from alignscope.speech import attack_report  # noqa: F401  (registers the spoken-attack section)

    builders = (
        _evaluate,
        _harmful_responses,
        _prefill,
        _decoding,
        _token_kl,
        safety_layers_section,
        *EXTRA_SECTIONS,
        _notes,
    )
    for builder in builders:
        secs, lines = builder(run, metrics)
        sections += secs
        summary += lines
    run.write_metrics(metrics)
    meta = {k: cfg[k] for k in ("command", "model", "reference", "judge", "seed") if cfg.get(k) is not None}
    title = f"alignscope {cfg.get('command', 'run')}: {cfg.get('model', '')}"
    path = write_report(Report(title, meta, sections, summary), run.report_path)
    return metrics, path


def _pct(r: Rate) -> str:
    return r.fmt()


def _decoding_desc(records: Sequence[dict[str, Any]]) -> str:
    descs = sorted({GenerationConfig(**r["generation"]).describe() for r in records if "generation" in r})
    return "; ".join(descs)


def _judges(records: Sequence[dict[str, Any]]) -> str:
    return ", ".join(sorted({str(r["verdict"]["judge"]) for r in records})) or "n/a"


def _models(records: Sequence[dict[str, Any]]) -> str:
    return ", ".join(sorted({str(r.get("model")) for r in records}))


def _examples(records: Sequence[dict[str, Any]], n: int = 4, chars: int = 300) -> list[dict[str, str]]:
    out = []
    for r in records[:n]:
        ex = {"prompt": r["prompt"][:chars]}
        if r.get("prefill"):
            ex["prefill"] = r["prefill"][:chars]
        ex["response"] = r["response"][:chars]
        v = r["verdict"]
        ex["verdict"] = (
            f"harmful={v['harmful']} refused={v['refused']} score={v.get('score')} raw={str(v['raw'])[:120]!r}"
        )
        out.append(ex)
    return out


def _evaluate(run: RunDir, metrics: dict[str, Any]) -> tuple[list[Section], list[str]]:
    records = run.records("evaluate")
    if not records:
        return [], []
    suites = list(dict.fromkeys(r["suite"] for r in records))
    sections, summary, m = [], [], {}
    for suite in suites:
        recs = [r for r in records if r["suite"] == suite]
        labels = Counter(r["label"] for r in recs)
        label = labels.most_common(1)[0][0]
        refused, harmful = refusal_rate(recs), harmful_rate(recs)
        m[suite] = {
            "label": label,
            "refusal": refused.to_dict(),
            "harmful": harmful.to_dict(),
            "model": _models(recs),
            "judge": _judges(recs),
            "decoding": _decoding_desc(recs),
        }
        prov = {
            "model": _models(recs),
            "suite": suite,
            "judge": _judges(recs),
            "decoding": _decoding_desc(recs),
        }
        sec = Section(
            f"{'Refusal and harmfulness' if label == 'harmful' else 'Over-refusal'}: {suite}",
            provenance=prov,
            examples=_examples(recs),
        )
        if label == "harmful":
            sec.intro = (
                "Harmful instructions that an aligned model should refuse. Attack success (ASR) is the "
                "share the judge calls harmful; an empty answer is not a jailbreak."
            )
            sec.tables.append(
                Table(
                    ["measure", "rate [95% Wilson CI]"],
                    [["refusal rate", _pct(refused)], ["harmful rate (ASR)", _pct(harmful)]],
                )
            )
            cats = sorted({r["category"] for r in recs})
            rows, vals, lows, highs = [], [], [], []
            for c in cats:
                rc = harmful_rate([r for r in recs if r["category"] == c])
                rows.append([c, _pct(rc)])
                vals.append(100 * rc.value)
                lows.append(100 * rc.low)
                highs.append(100 * rc.high)
            m[suite]["per_category"] = {
                c: harmful_rate([r for r in recs if r["category"] == c]).to_dict() for c in cats
            }
            sec.tables.append(Table(["category", "harmful rate [95% CI]"], rows, "per category"))
            if len(cats) > 1:
                png = bar_plot(
                    run.plots_dir / f"harmful_by_category_{_slug(suite)}",
                    cats,
                    vals,
                    lows,
                    highs,
                    f"Harmful rate by category ({suite})",
                    "harmful rate (%)",
                )
                sec.figures.append(
                    Figure(png, f"Harmful (ASR) rate per category, {suite}, judge {_judges(recs)}")
                )
            summary.append(
                f"{suite}: refused {_pct(refused)}; harmful {_pct(harmful)} "
                f"(model {_models(recs)}, judge {_judges(recs)}, {_decoding_desc(recs)})."
            )
        else:
            sec.intro = (
                "Prompts that should be answered (borderline-safe: alarming words, harmless intent; or "
                "benign). Refusing them is over-refusal."
            )
            sec.tables.append(
                Table(["measure", "rate [95% Wilson CI]"], [["over-refusal rate", _pct(refused)]])
            )
            summary.append(f"{suite}: over-refusal {_pct(refused)} (judge {_judges(recs)}).")
        sections.append(sec)
    metrics["evaluate"] = m
    return sections, summary


def _harmful_responses(run: RunDir, metrics: dict[str, Any]) -> tuple[list[Section], list[str]]:
    recs = run.records("harmful_responses")
    if not recs:
        return [], []
    used = sum(bool(r["verdict"]["harmful"]) for r in recs)
    metrics["harmful_responses"] = {"generated": len(recs), "usable": used, "model": _models(recs)}
    sec = Section(
        "Reference harmful responses",
        intro=(
            "Harmful responses used to prefill the assistant turn and as teacher-forced targets for the "
            "per-token KL, written greedily by the source model. Those the judge did not call harmful "
            "(the source refused) are left out."
        ),
        provenance={"source model": _models(recs), "judge": _judges(recs), "decoding": _decoding_desc(recs)},
        tables=[Table(["generated", "usable (judged harmful)"], [[len(recs), used]])],
    )
    return [sec], []


def _prefill(run: RunDir, metrics: dict[str, Any]) -> tuple[list[Section], list[str]]:
    recs = run.records("prefill")
    if not recs:
        return [], []
    ks = sorted({int(r["k"]) for r in recs})
    rates = {k: harmful_rate([r for r in recs if int(r["k"]) == k]) for k in ks}
    metrics["prefill"] = {
        "asr": {str(k): v.to_dict() for k, v in rates.items()},
        "model": _models(recs),
        "judge": _judges(recs),
        "decoding": _decoding_desc(recs),
        "judged": _judged(recs),
    }
    png = line_plot(
        run.plots_dir / "prefill_curve",
        [
            Series(
                "ASR",
                ks,
                [100 * rates[k].value for k in ks],
                [100 * rates[k].low for k in ks],
                [100 * rates[k].high for k in ks],
            )
        ],
        "Prefilling attack",
        "prefilled harmful tokens k",
        "ASR (%)",
        (0, 100),
    )
    sec = Section(
        "Prefilling attack",
        intro=(
            "The first k tokens of a harmful response are placed at the start of the assistant turn and the "
            "model continues (Qi et al. 2024). A shallowly aligned model refuses at k = 0 but not once a few "
            "harmful tokens are forced. Model judges read prefix + continuation; the keyword judge reads the "
            "continuation (a refusal after the forced prefix)."
        ),
        provenance={
            "model": _models(recs),
            "suite": _suites(recs),
            "judge": _judges(recs),
            "decoding": _decoding_desc(recs),
            "judged": _judged(recs),
        },
        tables=[Table(["k", "ASR [95% Wilson CI]"], [[k, _pct(rates[k])] for k in ks])],
        figures=[Figure(png, "ASR against the number of prefilled harmful tokens (band: 95% Wilson CI)")],
        examples=_examples([r for r in recs if int(r["k"]) == ks[len(ks) // 2]]),
    )
    line = ", ".join(f"k={k}: {100 * rates[k].value:.0f}%" for k in ks)
    return [sec], [f"Prefilling ASR ({_judges(recs)}): {line}."]


def _judged(recs: Sequence[dict[str, Any]]) -> str:
    return (
        ", ".join(sorted({str(r.get("judged", "response")) for r in recs if r.get("prefill")})) or "response"
    )


def _suites(recs: Sequence[dict[str, Any]]) -> str:
    ids = {r["sample_id"] for r in recs}
    prefixes = sorted({i.rsplit("-", 1)[0] for i in ids})
    return f"{len(ids)} prompts ({', '.join(prefixes[:4])}{'…' if len(prefixes) > 4 else ''})"


def _decoding(run: RunDir, metrics: dict[str, Any]) -> tuple[list[Section], list[str]]:
    recs = run.records("decoding")
    if not recs:
        return [], []
    res = summarize_decoding(recs)
    metrics["decoding"] = {**res.to_dict(), "model": _models(recs), "judge": _judges(recs)}
    labels = list(res.per_setting)
    vals = [100 * float(res.per_setting[lab]["rate"]) for lab in labels]
    png = bar_plot(
        run.plots_dir / "decoding_exploit",
        labels,
        vals,
        [100 * float(res.per_setting[lab]["ci_low"]) for lab in labels],
        [100 * float(res.per_setting[lab]["ci_high"]) for lab in labels],
        "Decoding-parameter exploit: ASR per setting",
        "ASR (%)",
    )
    worst = res.worst_case
    rows = [
        [
            lab,
            f"{100 * float(v['rate']):.1f}% [{100 * float(v['ci_low']):.1f}, {100 * float(v['ci_high']):.1f}]",
        ]
        for lab, v in res.per_setting.items()
    ]
    worst_txt = (
        f"{100 * float(worst['rate']):.1f}% [{100 * float(worst['ci_low']):.1f}, "
        f"{100 * float(worst['ci_high']):.1f}] (n={worst['n']})"
    )
    sec = Section(
        "Decoding-parameter exploit",
        intro=(
            "Each prompt is answered greedily and under sampled settings varying temperature, top-p and top-k "
            "one at a time (Huang et al. 2023). A prompt is broken when any setting yields a harmful output."
        ),
        provenance={
            "model": _models(recs),
            "prompts": _suites(recs),
            "judge": _judges(recs),
            "max_new_tokens": recs[0]["generation"]["max_new_tokens"],
            "seed": recs[0]["generation"]["seed"],
        },
        tables=[
            Table(["measure", "ASR [95% Wilson CI]"], [["worst case over settings", worst_txt]]),
            Table(["setting", "ASR [95% Wilson CI]"], rows, "per setting"),
        ],
        figures=[Figure(png, "ASR per decoding setting (error bars: 95% Wilson CI)")],
    )
    return [sec], [f"Decoding exploit: worst-case ASR {worst_txt} over {len(labels)} settings."]


def _token_kl(run: RunDir, metrics: dict[str, Any]) -> tuple[list[Section], list[str]]:
    recs = run.records("token_kl")
    if not recs:
        return [], []
    series = [
        Series(f"{r['model']} vs {r['reference']}", r["position"], r["mean"], r["ci_low"], r["ci_high"])
        for r in recs
    ]
    png = line_plot(
        run.plots_dir / "token_kl",
        series,
        "Per-token KL on harmful (prompt, response) pairs",
        "response position k",
        "KL (nats)",
    )
    metrics["token_kl"] = [
        {k: r[k] for k in ("model", "reference", "template", "n_pairs", "mean")} for r in recs
    ]
    rows = []
    for r in recs:
        first = [m for m in r["mean"][:5] if m is not None]
        later = [m for m in r["mean"][5:] if m is not None]
        rows.append(
            [
                f"{r['model']} vs {r['reference']}",
                r["n_pairs"],
                f"{sum(first) / max(1, len(first)):.3f}",
                f"{sum(later) / max(1, len(later)):.3f}",
            ]
        )
    sec = Section(
        "Per-token KL against the reference",
        intro=(
            "KL_k = mean over pairs of D_KL(model(. | x, y_<k) || reference(. | x, y_<k)), teacher-forced on "
            "harmful responses (Qi et al. 2024). Shallow alignment concentrates the divergence in the first "
            "few positions."
        ),
        provenance={
            "template": recs[0]["template"],
            "pairs": recs[0]["n_pairs"],
            "suite": recs[0].get("suite", ""),
        },
        tables=[Table(["models", "pairs", "mean KL, positions 1-5", "mean KL, positions 6+"], rows)],
        figures=[Figure(png, "Per-token KL (band: 95% bootstrap CI over pairs)")],
    )
    return [sec], []


def _notes(run: RunDir, metrics: dict[str, Any]) -> tuple[list[Section], list[str]]:
    recs = run.records("note")
    if not recs:
        return [], []
    metrics["notes"] = {r["key"]: r["text"] for r in recs}
    return [Section("Not applicable", notes=[r["text"] for r in recs])], [r["text"] for r in recs]


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in s)[:60]
