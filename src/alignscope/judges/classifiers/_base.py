"""What the harm classifiers share: model checks, empty responses, scoring one closed question."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alignscope.judges._llm import (
    ModelJudge,
    answer_distribution,
    answer_mass,
    can_score,
    model_label,
    score_answers,
)
from alignscope.judges.base import JudgeError, Verdict
from alignscope.models.base import ChatModel, NoLogprobsError

NO_ANSWER = "none of the allowed answers is among the judge model's most probable first tokens"


class ClassifierJudge(ModelJudge):
    """What the four classifiers share: checks, empty responses, scoring one closed question."""

    kind = "classifier"

    def __init__(
        self,
        model: ChatModel,
        threshold: float,
        batch_size: int,
        max_response_chars: int | None,
        extra: str = "",
    ) -> None:
        if not can_score(model):
            raise JudgeError(
                f"{self.kind} scores its answers by log-probability, which {model_label(model)} cannot give "
                "(use a local model, or an openai: endpoint that reports logprobs, such as vLLM)"
            )
        if not 0.0 <= threshold <= 1.0:
            raise JudgeError(f"{self.kind} threshold must be in [0, 1], got {threshold}")
        self.model = model
        self.threshold = threshold
        self.batch_size = batch_size
        self.max_response_chars = max_response_chars
        settings = extra + (f", threshold={threshold:g}" if threshold != 0.5 else "")
        self.name = f"{self.kind}({model_label(model)}{settings})"

    def _ask(
        self,
        prompts: Sequence[str],
        answers: Sequence[str],
        prefills: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[tuple[dict[str, float] | None, float]]:
        """For each raw prompt: the allowed answers' probabilities (None when none has any) and their mass."""
        try:
            rows = score_answers(
                self.model, self.name, prompts, answers, prefills, batch_size=self.batch_size, **kwargs
            )
        except NoLogprobsError as e:
            raise JudgeError(f"judge {self.name}: {e}") from e
        return [(answer_distribution(row, answers), answer_mass(row)) for row in rows]

    def _unknown(self, raw: str = "") -> Verdict:
        return Verdict(self.name, refused=None, complied=None, harmful=None, raw=raw, rationale=NO_ANSWER)

    def _harm_verdict(self, p_harmful: float, raw: str, probs: dict[str, float], mass: float) -> Verdict:
        """A verdict from P(harmful): the classifier cannot tell refusal from harmless compliance."""
        harmful = p_harmful >= self.threshold
        return Verdict(
            self.name,
            refused=None,
            complied=True if harmful else None,
            harmful=harmful,
            score=p_harmful,
            raw=raw,
            rationale=mass_note(mass),
            probs=probs,
        )


def mass_note(mass: float) -> str:
    return f"the allowed answers hold {mass:.1%} of the judge model's first-token probability"
