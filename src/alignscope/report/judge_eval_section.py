"""The report section of ``alignscope judge-eval``: scores, confusion matrix and the judge's worst mistakes."""

from __future__ import annotations

from typing import Any

from alignscope.judges.validation import LABELS, mistakes
from alignscope.report.examples import describe_verdict
from alignscope.report.html import Section, Table
from alignscope.runs.store import RunDir


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def judge_eval_section(run: RunDir, metrics: dict[str, Any]) -> tuple[list[Section], list[str]]:
    """Nothing unless the run scored a judge (``metrics["judge_eval"]``, written by ``run_judge_eval``)."""
    ev = metrics.get("judge_eval")
    records = run.records("judge_eval")
    if not ev or not records:
        return [], []
    rows = []
    for name, key in (("refusal", "refusal"), (f"harm ({ev['harm_from']})", "harm")):
        s = ev[key]
        rows.append(
            [
                name,
                _f(s["accuracy"]),
                _f(s["precision"]),
                _f(s["recall"]),
                _f(s["kappa"]),
                s["predicted_yes"],
                s["labelled_yes"],
            ]
        )
    tables = [
        Table(
            ["decision", "accuracy", "precision", "recall", "Cohen's kappa", "predicted yes", "labelled yes"],
            rows,
            f"{ev['n']} labelled items ({ev['labels_source']})",
        )
    ]
    if ev.get("three_way"):
        t = ev["three_way"]
        tables.append(
            Table(
                ["label", "precision", "recall", "support"],
                [
                    [lab, _f(v["precision"]), _f(v["recall"]), v["support"]]
                    for lab, v in t["per_class"].items()
                ],
                f"three labels: accuracy {_f(t['accuracy'])}, kappa {_f(t['kappa'])}",
            )
        )
    cols = sorted({c for row in ev["confusion"].values() for c in row})
    tables.append(
        Table(
            ["label \\ judge", *cols],
            [[lab, *[ev["confusion"].get(lab, {}).get(c, 0) for c in cols]] for lab in LABELS],
            "confusion matrix (rows: hand label; columns: the judge's verdict)",
        )
    )
    worst = mistakes(records, bool(ev["judges_harm"]))
    examples = [
        {
            "label": str(r["label"]),
            "judge": str(r["predicted"]),
            "source": ", ".join(f"{k}={v}" for k, v in (r.get("source") or {}).items() if k != "generation"),
            "prompt": str(r["prompt"])[:300],
            **({"prefill": str(r["prefill"])[:300]} if r.get("prefill") else {}),
            "response": str(r["response"])[:400],
            "verdict": describe_verdict(r),
        }
        for r in worst[:25]
    ]
    sec = Section(
        "Judge validation",
        intro=(
            "The judge's verdicts against hand labels (refusal / harmful / neither; guide: "
            "docs/judge-labelling-guide.md). A judge that cannot tell harm is scored on refusal, and its "
            "non-refusal is scored as a harm prediction to show what reading it as attack success would mean."
        ),
        provenance={"judge": ev["judge"], "labels": ev["labels_source"], "items": ev["n"]},
        tables=tables,
        notes=[f"{len(worst)} mistakes; the worst {len(examples)} below (missed harm first)."],
        examples=examples,
    )
    r, h = ev["refusal"], ev["harm"]
    line = (
        f"Judge {ev['judge']}: refusal accuracy {_f(r['accuracy'])}, harm precision {_f(h['precision'])} "
        f"recall {_f(h['recall'])} ({ev['harm_from']}), on {ev['n']} items of {ev['labels_source']}."
    )
    return [sec], [line]
