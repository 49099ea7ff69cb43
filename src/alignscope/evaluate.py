"""``alignscope evaluate``: answer the prompts of one or more suites and judge every answer.

Refusal, non-refusal and (with a harm judge) harmful rates on harmful suites; over-refusal on benign and
borderline ones. Records go to stage ``evaluate`` (one per prompt, with its ``suite``), so a killed run resumes
and a finished one can be re-judged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alignscope.attacks.stage import GenItem, generate_and_judge
from alignscope.config_io import ConfigIO, RunSettings
from alignscope.data.types import Suite
from alignscope.judges.base import Judge
from alignscope.judges.outcomes import outcome_rates
from alignscope.judges.registry import check_judge_spec
from alignscope.models.base import ChatModel, GenerationConfig, user_turn
from alignscope.models.loading import DEFAULT_MODEL
from alignscope.models.pool import ModelPool
from alignscope.runs.experiment import experiment
from alignscope.runs.store import RunDir
from alignscope.validation import FieldChecks

STAGE = "evaluate"


@dataclass(frozen=True)
class EvaluateConfig(RunSettings):
    """Settings of ``alignscope evaluate``.

    Attributes:
        model: spec of the model to evaluate.
        suites: suite specs (see :func:`alignscope.data.load_suite`); harmful ones give refusal, non-refusal
            and harmful rates, benign and borderline ones over-refusal.
        n: prompts per suite (a category-stratified subset); None takes every prompt.
        judge: judge spec (see :func:`alignscope.judges.get_judge`).
        system: a system prompt for every conversation.
        max_new_tokens: tokens per answer.
        temperature: sample at this temperature; 0 is greedy (the default).
        top_p: nucleus sampling threshold when sampling, in (0, 1].
    """

    suite_fields = ("suites",)
    model: str = DEFAULT_MODEL
    suites: tuple[str, ...] = ("harmful", "borderline")
    n: int | None = None
    judge: str = "keyword"
    system: str | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.at_least(1, "n", "max_new_tokens", "batch_size")
        check.at_least(0, "temperature")
        check.in_range("top_p", 0, 1, low_open=True)
        check.non_empty("suites")
        check_judge_spec(self.judge)

    def generation(self) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
            batch_size=self.batch_size,
            do_sample=self.temperature > 0,
            temperature=self.temperature or 1.0,
            top_p=self.top_p,
        )


@dataclass(frozen=True)
class EvaluateResult(ConfigIO):
    """Rates per suite (refusal, non-refusal, harmful or None, each a rate dict) and the records behind them.

    Attributes:
        rates: suite name -> :func:`alignscope.judges.outcome_rates` of its records.
        model: the evaluated model's name.
        judge: the judge's name.
        records: every judged answer (not serialised by ``to_dict``).
    """

    rates: dict[str, dict[str, Any]]
    model: str
    judge: str
    records: list[dict[str, Any]] = field(default_factory=list, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"rates": self.rates, "model": self.model, "judge": self.judge}

    def summary(self) -> str:
        lines = [f"{self.model}, judge {self.judge}:"]
        lines += [f"  {suite}: {rates_text(r)} (n={r['refusal']['n']})" for suite, r in self.rates.items()]
        return "\n".join(lines)


def rates_text(rates: Mapping[str, Any]) -> str:
    """One suite's outcome rates as ``refused 12.5%, not refused 87.5%, harmful 2.5%`` (``not judged`` when
    its ``harmful`` rate is None or missing); the evaluate and audit summaries share it."""
    harmful = rates.get("harmful")
    harm = "not judged" if harmful is None else f"{100 * harmful['rate']:.1f}%"
    return (
        f"refused {100 * rates['refusal']['rate']:.1f}%, not refused "
        f"{100 * rates['non_refusal']['rate']:.1f}%, harmful {harm}"
    )


def evaluate_suites(
    model: ChatModel,
    suites: Sequence[Suite],
    judge: Judge,
    gen: GenerationConfig,
    run: RunDir | None,
    progress: bool = True,
    system: str | None = None,
) -> list[dict[str, Any]]:
    """Answer every prompt of ``suites`` and judge it (stage ``evaluate``; records carry ``suite``)."""
    items = [
        GenItem(f"{s.name}:{x.id}", x, user_turn(x.prompt, system), extra={"suite": s.name})
        for s in suites
        for x in s
    ]
    return generate_and_judge(model, items, STAGE, gen, judge, run, progress=progress)


@experiment(EvaluateConfig)
def run_evaluate(
    config: EvaluateConfig, run: RunDir | None, pool: ModelPool, progress: bool
) -> EvaluateResult:
    """Evaluate ``config.model`` on ``config.suites``; with ``run``, records are stored (resumable) and the
    report is rebuilt. ``models`` shares already-loaded models (a pool, or specs mapped to models)."""
    from alignscope.data import load_suite

    suites = [load_suite(s).take(config.n, config.seed) for s in config.suites]
    model = pool.get(config.model)
    judge = pool.judge(config.judge)
    records = evaluate_suites(model, suites, judge, config.generation(), run, progress, config.system)
    rates = {s.name: outcome_rates([r for r in records if r["suite"] == s.name]) for s in suites}
    return EvaluateResult(rates, model.name, judge.name, records)
