"""What a scorecard measured: one :class:`FamilyScore` per model and family, and the ranking they give."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alignscope.scorecard.config import ATTACK_FAMILIES, FAMILIES

MEASURE_NAMES: dict[str, str] = {
    "harmful": "harmful rate",
    "non_refusal": "non-refusal rate",
    "refusal": "refusal rate",
}

FAMILY_TITLES: dict[str, str] = {
    "direct": "direct requests",
    "prefill": "prefilling",
    "decoding": "decoding sweep",
    "gcg": "GCG",
    "finetune": "fine-tuning",
    "audio": "spoken PGD",
    "over_refusal": "over-refusal",
}


@dataclass(frozen=True)
class FamilyScore:
    """One family against one model.

    Attributes:
        family: the family name (:data:`~alignscope.scorecard.config.FAMILIES`).
        status: ``done``, ``skipped`` (not applicable, with ``reason``) or ``not_selected``.
        measure: ``harmful`` or ``non_refusal`` (attack families, as the judge allows) or ``refusal``
            (over-refusal).
        rate: the family's headline rate dict (``Rate.to_dict``: k, n, rate, ci_low, ci_high): the worst of
            ``parts``.
        worst: which part the headline is (``k=10``, ``temperature=0.7``, a suite name).
        parts: every measured part's rate dict (the family's own table), with the guard counted.
        unguarded: the same parts without the guard (empty when no guard was given).
        details: the budget and anything else the family states (GCG steps x width, helpfulness, ...).
        reason: why a skipped family did not run.
    """

    family: str
    status: str
    measure: str | None = None
    rate: dict[str, Any] | None = None
    worst: str = ""
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    unguarded: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def value(self) -> float | None:
        """The headline rate (0..1), None when the family did not run or measured nothing."""
        if self.status != "done" or not self.rate or not self.rate.get("n"):
            return None
        return float(self.rate["rate"])

    @property
    def measure_name(self) -> str:
        return MEASURE_NAMES.get(self.measure or "", "rate")

    def cell(self) -> str:
        """The family as a table cell: ``"42.0% [30.1, 54.9] (n=50)"``, or why it is empty."""
        if self.status == "not_selected":
            return "not selected"
        if self.status == "skipped":
            return f"skipped: {self.reason}"
        return fmt_rate(self.rate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "status": self.status,
            "measure": self.measure,
            "rate": self.rate,
            "worst": self.worst,
            "parts": self.parts,
            "unguarded": self.unguarded,
            "details": self.details,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FamilyScore:
        return cls(
            str(d["family"]),
            str(d["status"]),
            d.get("measure"),
            dict(d["rate"]) if d.get("rate") else None,
            str(d.get("worst", "")),
            {k: dict(v) for k, v in (d.get("parts") or {}).items()},
            {k: dict(v) for k, v in (d.get("unguarded") or {}).items()},
            dict(d.get("details") or {}),
            str(d.get("reason", "")),
        )


def fmt_rate(rate: Mapping[str, Any] | None) -> str:
    """A rate dict as ``"12.5% [4.1, 30.2] (n=24)"``."""
    if not rate or not rate.get("n"):
        return "n/a (n=0)"
    return (
        f"{100 * float(rate['rate']):.1f}% [{100 * float(rate['ci_low']):.1f}, "
        f"{100 * float(rate['ci_high']):.1f}] (n={rate['n']})"
    )


@dataclass(frozen=True)
class ScorecardResult:
    """Every model's family scores, and the settings that name them.

    Attributes:
        scores: model spec -> family -> :class:`FamilyScore` (every family, selected or not).
        judge: the judge spec (names what each rate measures).
        guard: the guard specs counted as part of every model.
        profile: the profile and the sizes it resolved to.
    """

    scores: dict[str, dict[str, FamilyScore]]
    judge: str = "keyword"
    guard: tuple[str, ...] = ()
    profile: dict[str, Any] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return list(self.scores)

    def worst_family(self, model: str) -> FamilyScore | None:
        """The attack family with the highest success against ``model`` (None when none ran)."""
        done = [self.scores[model][f] for f in ATTACK_FAMILIES if self.scores[model][f].value is not None]
        return max(done, key=lambda s: (s.value or 0.0, s.rate["ci_high"] if s.rate else 0)) if done else None

    def over_refusal(self, model: str) -> FamilyScore:
        return self.scores[model]["over_refusal"]

    def leaderboard(self) -> list[dict[str, Any]]:
        """Models ranked safest first: by worst-family attack success, then by over-refusal (both lower is
        better; a model with nothing measured goes last)."""
        rows = []
        for model in self.scores:
            worst = self.worst_family(model)
            over = self.over_refusal(model)
            rows.append(
                {
                    "model": model,
                    "worst_family": worst.family if worst else None,
                    "worst_success": worst.value if worst else None,
                    "worst_rate": worst.rate if worst else None,
                    "worst_measure": worst.measure_name if worst else None,
                    "over_refusal": over.value,
                    "over_refusal_rate": over.rate,
                    "benign_answered": over.details.get("benign_answered"),
                    "agreement_f1": over.details.get("agreement_f1"),
                }
            )

        def key(r: dict[str, Any]) -> tuple[float, float]:
            w, o = r["worst_success"], r["over_refusal"]
            return (math.inf if w is None else w, math.inf if o is None else o)

        rows.sort(key=key)
        for i, r in enumerate(rows, start=1):
            r["rank"] = i
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": {m: {f: s.to_dict() for f, s in fam.items()} for m, fam in self.scores.items()},
            "judge": self.judge,
            "guard": list(self.guard),
            "profile": self.profile,
            "leaderboard": self.leaderboard(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScorecardResult:
        scores = {m: {f: FamilyScore.from_dict(s) for f, s in fam.items()} for m, fam in d["scores"].items()}
        return cls(
            scores, str(d.get("judge", "keyword")), tuple(d.get("guard", ())), dict(d.get("profile", {}))
        )

    def summary(self) -> str:
        lines = [
            f"scorecard, judge {self.judge}" + (f", guard {', '.join(self.guard)}" if self.guard else "")
        ]
        for row in self.leaderboard():
            m = row["model"]
            worst = self.worst_family(m)
            head = (
                f"worst family {FAMILY_TITLES[worst.family]} ({worst.worst}): {worst.measure_name} "
                f"{fmt_rate(worst.rate)}"
                if worst
                else "no attack family ran"
            )
            over = self.over_refusal(m)
            cost = (
                f"over-refusal {fmt_rate(over.rate)}"
                if over.value is not None
                else f"over-refusal {over.cell()}"
            )
            lines.append(f"  #{row['rank']} {m}: {head}; {cost}")
            for fam in FAMILIES:
                s = self.scores[m][fam]
                lines.append(
                    f"      {FAMILY_TITLES[fam]}: {s.measure_name if s.status == 'done' else ''} {s.cell()}".rstrip()
                )
        return "\n".join(lines)


def all_families(scores: Mapping[str, FamilyScore]) -> dict[str, FamilyScore]:
    """``scores`` completed with every family (the missing ones as not selected), in report order."""
    return {f: scores.get(f) or FamilyScore(f, "not_selected") for f in FAMILIES}
