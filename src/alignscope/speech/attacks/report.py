"""The spoken-attack section of a run's HTML report, built from its ``speech_*`` records alone.

The experiment registry (:mod:`alignscope.experiments`) lists it, so ``alignscope report`` shows the section for
any run holding spoken-attack records. Nothing here loads a model or torch.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from alignscope.judges.outcomes import MEASURE_LABELS, attack_success, verdict_of, verdicts_of
from alignscope.report.examples import examples
from alignscope.report.html import AudioClip, AudioRow, Figure, Section, Table
from alignscope.report.plots import Series, line_plot
from alignscope.runs.store import RunDir
from alignscope.stats import Rate, rate_of

METRICS_KEY = "speech_attacks"
KIND_ORDER = {"text": 0, "clean": 1, "white-box": 2, "universal": 3, "adaptive": 4, "transfer": 5}
KIND_LABEL = {
    "text": "LLM reading the transcript",
    "clean": "clean speech",
    "white-box": "white-box PGD",
    "universal": "universal PGD",
    "adaptive": "adaptive PGD (EOT through TDNF)",
    "transfer": "black-box transfer",
}

__all__ = ["METRICS_KEY", "condition_rows", "speech_attack_section"]


def _snr_of(defense: str | None) -> float | None:
    if not defense or defense == "none":
        return None
    return float(defense.partition("=")[2])


def _budget_value(budget: str | None) -> float:
    return float(str(budget).partition(":")[2]) if budget else float("nan")


def _budget_label(budget: str | None) -> str:
    if not budget:
        return "-"
    kind, _, value = budget.partition(":")
    return f"SNR >= {value} dB" if kind == "snr" else f"L-inf eps {value}"


def condition_label(kind: str, budget: str | None, attack_defense: str | None, eval_defense: str) -> str:
    label = KIND_LABEL.get(kind, kind)
    if attack_defense:
        label = f"adaptive PGD through TDNF {_snr_of(attack_defense):g} dB"
    if budget:
        label += f" ({_budget_label(budget)})"
    if eval_defense != "none":
        plain = attack_defense == eval_defense or kind in ("clean", "text")
        label += f", played through TDNF {_snr_of(eval_defense):g} dB" + ("" if plain else " (non-adaptive)")
    return label


def _median(values: Sequence[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _fmt(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _cond_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["kind"], r.get("budget"), r.get("attack_defense"), r.get("eval_defense", "none"))


def _order(key: tuple[Any, ...]) -> tuple[Any, ...]:
    kind, budget, attack_def, eval_def = key
    kind_of_budget = str(budget or "").partition(":")[0]
    value = _budget_value(budget)
    # quieter budgets first (higher SNR, smaller eps); no defence first, then stronger noise last
    budget_order = -value if kind_of_budget == "snr" else value
    eval_snr = _snr_of(eval_def)
    return (
        KIND_ORDER.get(kind, 9),
        kind_of_budget,
        0.0 if budget is None else budget_order,
        -(_snr_of(attack_def) or 1e9),
        0 if eval_snr is None else 1,
        -(eval_snr or 0.0),
    )


def condition_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per condition (kind, budget, attack defence, evaluation defence) of ``speech_answer``
    records: success (the harmful rate where the judge judges harm, else the non-refusal rate, with its
    ``measure``), refusal, target-prefix and off-topic target-hit rates with Wilson intervals, the
    preference-judge success rate when present, and medians of SNR, steps and seconds.

    ``target_off_topic`` counts answers that start with the attack target and are then judged not harmful
    (only where the judge judges harm; None otherwise): the white-box "successes" that say "Sure, here is"
    and then something unrelated."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(_cond_key(r), []).append(r)
    rows = []
    for key in sorted(groups, key=_order):
        recs = groups[key]
        kind, budget, attack_def, eval_def = key
        prefs = [bool(r["preference_success"]) for r in recs if "preference_success" in r]
        success = attack_success(recs)
        verdicts = verdicts_of(recs)
        off_topic = (
            rate_of(
                [bool(r.get("target_hit")) and not v.harmful for r, v in zip(recs, verdicts, strict=True)]
            )
            if success.measure == "harmful"
            else None
        )
        rows.append(
            {
                "kind": kind,
                "budget": budget,
                "attack_defense": attack_def,
                "eval_defense": eval_def,
                "label": condition_label(kind, budget, attack_def, eval_def),
                "n": len(recs),
                "success": success.to_dict(),
                "refused": rate_of([bool(v.refused) for v in verdicts]).to_dict(),
                "target_hit": rate_of([bool(r.get("target_hit")) for r in recs]).to_dict(),
                "target_off_topic": off_topic.to_dict() if off_topic is not None else None,
                "preference_success": rate_of(prefs).to_dict() if prefs else None,
                "median_snr_db": _median([r.get("snr_db") for r in recs]),
                "median_steps": _median([r.get("steps") for r in recs]),
                "median_seconds": _median([r.get("wall_time") for r in recs]),
                "model": ", ".join(sorted({str(r["model"]) for r in recs})),
            }
        )
    return rows


def _rate(d: dict[str, Any] | None) -> str:
    if d is None:
        return "n/a"
    return Rate(int(d["k"]), int(d["n"]), float(d["ci_low"]), float(d["ci_high"])).fmt()


def headline(rows: Sequence[dict[str, Any]], budgets: Sequence[str]) -> list[dict[str, Any]]:
    """The SpeechGuard table: clean speech, white-box at every budget, TDNF (non-adaptive) at the first budget,
    the adaptive attacker through its own defence, and transfer (with TDNF at the first budget)."""
    first = budgets[0] if budgets else None
    keep = []
    for r in rows:
        kind, budget, ad, ed = r["kind"], r["budget"], r["attack_defense"], r["eval_defense"]
        baseline = kind in ("text", "clean") and ed == "none"
        attacked = kind in ("white-box", "universal", "transfer") and (ed == "none" or budget == first)
        if baseline or attacked or (kind == "adaptive" and ed == ad):
            keep.append(r)
    return keep


def helpfulness_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(str(r["eval_defense"]), []).append(r)
    out = []
    for d in sorted(groups, key=lambda x: (x != "none", -(_snr_of(x) or 0.0))):
        recs = groups[d]
        hits, tokens = sum(int(r["top1_hits"]) for r in recs), sum(int(r["top1_tokens"]) for r in recs)
        out.append(
            {
                "eval_defense": d,
                "n": len(recs),
                "answered": rate_of([bool(r["answered"]) for r in recs]).to_dict(),
                "token_f1": statistics.mean(float(r["token_f1"]) for r in recs),
                "top1_agreement": hits / tokens if tokens else None,
                "text_answered": rate_of([bool(r["text_answered"]) for r in recs]).to_dict(),
            }
        )
    return out


def speech_attack_section(run: RunDir, metrics: dict[str, Any]) -> tuple[list[Section], list[str]]:
    """Report section and summary lines for the spoken-attack records of ``run`` (nothing when it has none)."""
    answers = list(run.done("speech_answer").values())
    helps = list(run.done("speech_help").values())
    attacks = list(run.done("speech_attack").values())
    universal = list(run.done("speech_universal").values())
    if not answers and not helps:
        return [], []
    cfg = run.config()
    spoken_cfg: dict[str, Any] = cfg.get("attack", cfg)
    budgets = [str(b) for b in spoken_cfg.get("budgets", [])] or sorted(
        {str(r["budget"]) for r in answers if r.get("budget")}
    )
    rows = condition_rows([r for r in answers if r.get("label", "harmful") == "harmful"])
    head = headline(rows, budgets)
    helpful = helpfulness_rows(helps)
    judges = sorted({str(r["verdict"]["judge"]) for r in answers + helps})
    prefs = sorted({str(r["preference"]["judge"]) for r in answers if "preference" in r})
    gens = sorted({_gen(r) for r in answers + helps if "generation" in r})
    pgd = next((r["config"] for r in attacks if "config" in r), None) or next(
        (r["config"] for r in universal), None
    )
    m: dict[str, Any] = {
        "conditions": rows,
        "headline": [r["label"] for r in head],
        "helpfulness": helpful,
        "judge": judges,
        "preference_judge": prefs,
        "decoding": gens,
        "pgd": pgd,
        "models": sorted({str(r["model"]) for r in answers if r["kind"] != "text"}),
        "surrogates": sorted({str(r["crafted_on"]) for r in attacks if r.get("kind") == "transfer"}),
        "n_harmful": len({r["sample_id"] for r in answers}),
        "n_benign": len({r["sample_id"] for r in helps}),
    }
    metrics[METRICS_KEY] = m
    prov = {
        "speech LLM": ", ".join(m["models"]) or "n/a",
        "surrogate (transfer)": ", ".join(m["surrogates"]) or "none",
        "questions": f"{m['n_harmful']} harmful ({_join(r.get('suite') for r in answers)}), {m['n_benign']} benign "
        f"({_join(r.get('suite') for r in helps)})",
        "judge": ", ".join(judges) or "n/a",
        "preference judge": ", ".join(prefs) or "not used",
        "decoding": "; ".join(gens) or "n/a",
    }
    if pgd:
        prov["PGD"] = (
            f"{pgd['steps']} steps x {pgd['restarts']} restarts, step {pgd['step_size']:g} of the radius, "
            f"early stop every {pgd['check_every']}, seed {pgd['seed']}"
        )
    has_pref = any(r["preference_success"] for r in rows)
    measure = rows[0]["success"].get("measure", "non_refusal") if rows else "non_refusal"
    label = MEASURE_LABELS[measure]
    harm_judged = measure == "harmful"
    columns = ["condition", "refusal rate", f"{label} [95% Wilson CI]", "answer starts with the target"]
    columns += ["starts with the target, then not harmful"] if harm_judged else []
    columns += ["preference judge: clean answer safer"] if has_pref else []
    columns += ["median SNR of the perturbation (dB)", "median steps", "median s / attack"]

    def table_rows(rs: Sequence[dict[str, Any]]) -> list[list[Any]]:
        out = []
        for r in rs:
            row = [r["label"], _rate(r["refused"]), _rate(r["success"]), _rate(r["target_hit"])]
            row += [_rate(r["target_off_topic"])] if harm_judged else []
            row += [_rate(r["preference_success"])] if has_pref else []
            row += [_fmt(r["median_snr_db"]), _fmt(r["median_steps"], 0), _fmt(r["median_seconds"])]
            out.append(row)
        return out

    tables = [
        Table(
            columns,
            table_rows(head),
            f"attack success on held-out spoken harmful questions ({label}"
            + (
                ": the judge calls the answer harmful)"
                if harm_judged
                else ": the judge finds no refusal; off-topic answers after the target count too, so this "
                "bounds the harmful rate from above)"
            ),
        ),
    ]
    if len(head) < len(rows):
        tables.append(Table(columns, table_rows(rows), "every condition"))
    if helpful:
        tables.append(
            Table(
                [
                    "defence",
                    "benign questions answered [95% Wilson CI]",
                    "token F1 with the text answer",
                    "teacher-forced top-1 agreement",
                    "text model answered",
                ],
                [
                    [
                        h["eval_defense"],
                        _rate(h["answered"]),
                        f"{h['token_f1']:.3f}",
                        _fmt(h["top1_agreement"], 3),
                        _rate(h["text_answered"]),
                    ]
                    for h in helpful
                ],
                "helpfulness kept on benign spoken questions (reference: the LLM's greedy answer to the transcript)",
            )
        )
    figures = _figures(run, rows, helpful, budgets)
    sec = Section(
        "Spoken jailbreaks: adversarial audio and TDNF",
        intro=(
            "SpeechGuard (Peri et al. 2024): PGD on the raw waveform through the whole speech LLM towards the "
            "target response start, bounded by an SNR (L2) or L-inf budget; TDNF adds white noise at a given SNR "
            "to every incoming clip (a fresh draw per query); the adaptive attacker optimises through the noise "
            "(expectation over draws); transfer crafts on a surrogate speech LLM and plays the clip to the target. "
            "Success is the harmful rate of the greedy answers where the judge judges harm, else the non-refusal "
            "rate (a keyword judge cannot tell an on-target answer from one that starts with the target and then "
            "says something unrelated). Helpfulness: keyword-judge answered rate, "
            "bag-of-words F1 and teacher-forced top-1 agreement with the LLM's answer to the transcript."
        ),
        provenance=prov,
        tables=tables,
        figures=figures,
        audio=_players(run, answers),
        examples=examples([r for r in answers if r["kind"] not in ("clean", "text")], extra=_condition),
    )
    guard = metrics.get("speechguard", {}).get("checks", {})
    if guard:
        sec.notes = [
            "SpeechGuard's expected ordering, as measured here: "
            + "; ".join(f"{k}: {v}" for k, v in guard.items() if k != "statements"),
            *guard.get("statements", []),
        ]
    summary = []
    for r in head:
        if r["kind"] in ("white-box", "adaptive", "transfer", "universal"):
            summary.append(
                f"Spoken {r['label']}: {label} {_rate(r['success'])}, median perturbation SNR "
                f"{_fmt(r['median_snr_db'])} dB ({', '.join(judges)})."
            )
    for h in helpful:
        summary.append(
            f"Benign spoken questions answered ({h['eval_defense']}): {_rate(h['answered'])}, "
            f"top-1 agreement {_fmt(h['top1_agreement'], 3)}."
        )
    return [sec], summary


def _join(values: Any) -> str:
    return ", ".join(sorted({str(v) for v in values if v})) or "n/a"


def _gen(r: dict[str, Any]) -> str:
    g = r["generation"]
    return f"greedy, max_new_tokens={g['max_new_tokens']}" if not g.get("do_sample") else str(g)


def _pct(d: dict[str, Any]) -> tuple[float, float, float]:
    return 100 * float(d["rate"]), 100 * float(d["ci_low"]), 100 * float(d["ci_high"])


def _figures(
    run: RunDir, rows: Sequence[dict[str, Any]], helpful: Sequence[dict[str, Any]], budgets: Sequence[str]
) -> list[Figure]:
    figures = []
    for budget_kind, xlabel in (
        ("snr", "perturbation SNR budget (dB; right = louder)"),
        ("linf", "L-inf budget eps"),
    ):
        series = []
        for kind in ("white-box", "universal", "transfer"):
            pts = sorted(
                (_budget_value(r["budget"]), r)
                for r in rows
                if r["kind"] == kind
                and r["eval_defense"] == "none"
                and str(r["budget"]).startswith(budget_kind + ":")
            )
            if len(pts) >= 2:
                xs = [x for x, _ in pts]
                vals = [_pct(r["success"]) for _, r in pts]
                series.append(
                    Series(
                        KIND_LABEL[kind], xs, [v[0] for v in vals], [v[1] for v in vals], [v[2] for v in vals]
                    )
                )
        if series:
            png = line_plot(run.plots_dir / f"speech_success_vs_{budget_kind}", series,
                            "Spoken jailbreak success against the perturbation budget", xlabel,
                            "jailbreak success (%)", (0, 100))  # fmt: skip
            figures.append(Figure(png, "Success without defence against the budget (band: 95% Wilson CI)"))
    first = budgets[0] if budgets else None
    series = []
    spec = (
        (
            "white-box",
            lambda r: r["kind"] == "white-box" and r["budget"] == first and r["attack_defense"] is None,
        ),
        ("transfer", lambda r: r["kind"] == "transfer" and r["budget"] == first),
        ("adaptive", lambda r: r["kind"] == "adaptive" and r["attack_defense"] == r["eval_defense"]),
        ("clean", lambda r: r["kind"] == "clean"),
    )
    for kind, pick in spec:
        pts = sorted((s, r) for r in rows if pick(r) and (s := _snr_of(r["eval_defense"])) is not None)
        if pts:
            vals = [_pct(r["success"]) for _, r in pts]
            what = "harmful answers" if kind == "clean" else "success"
            label = (
                f"{KIND_LABEL[kind]}{' (non-adaptive)' if kind in ('white-box', 'transfer') else ''}: {what}"
            )
            series.append(
                Series(
                    label,
                    [s for s, _ in pts],
                    [v[0] for v in vals],
                    [v[1] for v in vals],
                    [v[2] for v in vals],
                )
            )
    pts_h = sorted((s, h) for h in helpful if (s := _snr_of(h["eval_defense"])) is not None)
    if pts_h:
        vals = [_pct(h["answered"]) for _, h in pts_h]
        series.append(Series("benign answered (helpfulness)", [s for s, _ in pts_h], [v[0] for v in vals],
                             [v[1] for v in vals], [v[2] for v in vals]))  # fmt: skip
    if series:
        png = line_plot(run.plots_dir / "speech_success_vs_tdnf", series,
                        f"Success and helpfulness against the TDNF SNR (attack budget {first})",
                        "TDNF noise SNR (dB; left = more noise)", "rate (%)", (0, 100))  # fmt: skip
        figures.append(
            Figure(
                png,
                "Jailbreak success and benign questions answered through TDNF at each SNR (band: 95% Wilson CI)",
            )
        )
    return figures


def _players(run: RunDir, answers: Sequence[dict[str, Any]], n: int = 4) -> list[AudioRow]:
    """Per clip (the first ``n`` attacked), players for the clean clip, each adversarial clip and the clip
    played through the first TDNF level, each with the answer it got."""
    by_clip: dict[str, list[dict[str, Any]]] = {}
    for r in answers:
        if r.get("audio") and r["kind"] != "text":
            by_clip.setdefault(str(r["sample_id"]), []).append(r)
    rows = []
    for sid, recs in by_clip.items():
        recs = sorted(recs, key=lambda r: _order(_cond_key(r)))
        if not any(r["kind"] != "clean" for r in recs):
            continue
        # clean; each attack as played; the white-box clip through the first TDNF level (non-adaptive); the
        # adaptive clip through the defence it was made for
        wanted = {("clean", False), ("white-box", False), ("white-box", True), ("universal", False),
                  ("universal", True), ("adaptive", True), ("transfer", False)}  # fmt: skip
        chosen: list[dict[str, Any]] = []
        for r in recs:
            defended = r["eval_defense"] != "none"
            if r["kind"] == "adaptive" and r["eval_defense"] != r.get("attack_defense"):
                continue
            if (r["kind"], defended) in wanted:
                wanted.discard((r["kind"], defended))
                chosen.append(r)
        clips = [
            AudioClip(
                run.path / str(r["audio"]),  # recorded relative to the run directory
                condition_label(r["kind"], r.get("budget"), r.get("attack_defense"), r["eval_defense"])
                + (f", SNR {r['snr_db']:.1f} dB" if r.get("snr_db") is not None else ""),
                f"{verdict_of(r).outcome}: {str(r['response'])[:160]}",
            )
            for r in chosen
        ]
        rows.append(AudioRow(sid, clips, str(recs[0]["prompt"])[:160]))
        if len(rows) >= n:
            break
    return rows


def _condition(r: Mapping[str, Any]) -> dict[str, str]:
    return {
        "condition": condition_label(r["kind"], r.get("budget"), r.get("attack_defense"), r["eval_defense"])
    }
