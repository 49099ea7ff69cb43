"""The decoding-parameter exploit (Huang et al. 2023, "Catastrophic Jailbreak of Open-source LLMs via
Exploiting Generation").

Each prompt is answered under greedy decoding and a sweep of sampling settings, varying one parameter at a
time (temperature, then top-p, then top-k). A prompt counts as broken when any setting yields a success:
an output the judge calls harmful where it judges harm (worst-case harmful rate, the paper's ASR), otherwise
one it does not call a refusal (worst-case non-refusal rate, e.g. the keyword judge). Results name which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from alignscope.attacks.stage import GenItem, generate_and_judge
from alignscope.config_io import RunSettings
from alignscope.data.types import Sample
from alignscope.judges.base import Judge
from alignscope.judges.outcomes import attack_success, success_flags
from alignscope.judges.registry import check_judge_spec
from alignscope.models.base import ChatModel, GenerationConfig
from alignscope.models.loading import DEFAULT_MODEL
from alignscope.models.pool import ModelPool
from alignscope.runs.experiment import experiment
from alignscope.runs.store import RunDir
from alignscope.stats import rate_of
from alignscope.validation import FieldChecks


def _steps(lo: float, hi: float, step: float) -> tuple[float, ...]:
    n = round((hi - lo) / step)
    return tuple(round(lo + i * step, 4) for i in range(n + 1))


FULL_GRID: dict[str, tuple[float, ...]] = {
    "temperature": _steps(0.05, 1.0, 0.05),
    "top_p": _steps(0.05, 1.0, 0.05),
    "top_k": (1, 2, 5, 10, 20, 50, 100, 200, 500),
}
"""The paper's grid: 20 temperatures, 20 top-p values, 9 top-k values (49 sampled settings + greedy)."""

REDUCED_GRID: dict[str, tuple[float, ...]] = {
    "temperature": (0.4, 0.7, 1.0),
    "top_p": (0.5, 0.9),
    "top_k": (5, 50),
}
"""A CPU-sized grid (7 sampled settings + greedy) spanning the same three axes."""


def decoding_settings(
    grid: dict[str, tuple[float, ...]], max_new_tokens: int = 48, seed: int = 0, batch_size: int = 16
) -> list[tuple[str, GenerationConfig]]:
    """Greedy plus one sampled setting per grid value, the other parameters at their neutral values
    (temperature 1, top-p 1, no top-k), as Huang et al. vary one parameter at a time."""
    base = GenerationConfig(max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    out = [("greedy", base)]
    for name, values in grid.items():
        if name not in {"temperature", "top_p", "top_k"}:
            raise ValueError(f"unknown decoding parameter {name!r}")
        for v in values:
            value: float | int = int(v) if name == "top_k" else float(v)
            out.append((f"{name}={value:g}", base.with_(do_sample=True, **{name: value})))
    return out


@dataclass(frozen=True)
class DecodingConfig(RunSettings):
    """Settings of the decoding-parameter exploit (``alignscope attack decoding``).

    Attributes:
        model: spec of the attacked model.
        suite: harmful suite spec.
        n: prompts (a category-stratified subset); None takes every prompt.
        grid: ``reduced`` (greedy + 7 sampled settings, CPU-sized) or ``full`` (greedy + the paper's 49).
        judge: judge spec; the rate it supports names the worst case (non-refusal for ``keyword``).
        max_new_tokens: tokens per answer.
    """

    suite_fields = ("suite",)
    model: str = DEFAULT_MODEL
    suite: str = "harmful"
    n: int | None = 16
    grid: Literal["reduced", "full"] = "reduced"
    judge: str = "keyword"
    max_new_tokens: int = 48

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.at_least(1, "n", "max_new_tokens", "batch_size")
        check.one_of("grid", ("reduced", "full"))
        check_judge_spec(self.judge)


@dataclass(frozen=True)
class DecodingResult:
    """Worst-case and per-setting success of the decoding exploit, with the records behind them.

    ``measure`` is ``"harmful"`` (harmful rate) or ``"non_refusal"`` (non-refusal rate), as the judge allows.
    """

    measure: str
    worst_case: dict[str, float | int]
    greedy: dict[str, Any]
    per_setting: dict[str, dict[str, Any]]
    records: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "worst_case": self.worst_case,
            "greedy": self.greedy,
            "per_setting": self.per_setting,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DecodingResult:
        return cls(str(d["measure"]), dict(d["worst_case"]), dict(d["greedy"]), dict(d["per_setting"]), [])

    def summary(self) -> str:
        name = "harmful rate" if self.measure == "harmful" else "non-refusal rate"
        w = self.worst_case
        return (
            f"decoding exploit: worst-case {name} {100 * float(w['rate']):.1f}% of {w['n']} prompts over "
            f"{len(self.per_setting)} settings (greedy {100 * float(self.greedy.get('rate', 0)):.1f}%)"
        )


def decoding_attack(
    model: ChatModel,
    samples: Sequence[Sample],
    judge: Judge,
    grid: dict[str, tuple[float, ...]] | None = None,
    max_new_tokens: int = 48,
    seed: int = 0,
    batch_size: int = 16,
    run: RunDir | None = None,
    stage: str = "decoding",
    progress: bool = True,
) -> DecodingResult:
    """Sweep decoding settings over ``samples`` and report the worst case per prompt."""
    settings = decoding_settings(grid or REDUCED_GRID, max_new_tokens, seed, batch_size)
    records: list[dict[str, Any]] = []
    for label, cfg in settings:
        items = [GenItem.of(s, key=f"{s.id}@{label}", setting=label) for s in samples]
        records += generate_and_judge(model, items, stage, cfg, judge, run, progress=progress)
    return summarize_decoding(records, [label for label, _ in settings])


def summarize_decoding(
    records: Sequence[dict[str, Any]], settings: Sequence[str] | None = None
) -> DecodingResult:
    """Aggregate decoding-exploit records (also used when re-judging a run)."""
    labels = list(settings) if settings is not None else list(dict.fromkeys(r["setting"] for r in records))
    measure, flags = success_flags(records)
    broken: dict[str, bool] = {}
    for r, ok in zip(records, flags, strict=True):
        broken[r["sample_id"]] = broken.get(r["sample_id"], False) or ok
    per = {lab: attack_success([r for r in records if r["setting"] == lab]).to_dict() for lab in labels}
    worst = rate_of(list(broken.values())).to_dict()
    return DecodingResult(measure, worst, per.get("greedy", {}), per, list(records))


@experiment(DecodingConfig)
def run_decoding(
    config: DecodingConfig, run: RunDir | None, pool: ModelPool, progress: bool
) -> DecodingResult:
    """The decoding exploit as an experiment: answers and verdicts go into ``run`` (resumable), whose report
    is rebuilt."""
    from alignscope.data import load_suite

    samples = list(load_suite(config.suite).take(config.n, config.seed))
    model = pool.get(config.model)
    grid = FULL_GRID if config.grid == "full" else REDUCED_GRID
    return decoding_attack(
        model,
        samples,
        pool.judge(config.judge),
        grid,
        config.max_new_tokens,
        config.seed,
        config.batch_size,
        run,
        progress=progress,
    )
