"""Plumbing shared by the judges that ask a language model (rubric, StrongREJECT, preference, classifiers).

Closed questions (a score digit, yes/no, safe/unsafe) are decided by scoring the allowed answers with the
model's ``answer_logprobs`` (:meth:`alignscope.models.LocalModel.answer_logprobs`,
:meth:`alignscope.models.remote.RemoteModel.answer_logprobs`), never by parsing free text alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from alignscope.judges.base import JudgeError, Verdict, full_texts
from alignscope.models.base import (
    ChatModel,
    Conversation,
    GenerationConfig,
    ModelError,
    NoLogprobsError,
    user_turn,
)

log = logging.getLogger("alignscope.judges")

DEFAULT_MAX_RESPONSE_CHARS = 4000
"""Responses longer than this are clipped before they go into a judge prompt (keeps small judges' context)."""

CLIP_MARK = "\n[... response truncated for judging ...]"


def check_lengths(prompts: Sequence[str], *others: Sequence[str]) -> None:
    """Raise :class:`JudgeError` unless every sequence is as long as ``prompts``."""
    for other in others:
        if len(other) != len(prompts):
            raise JudgeError(f"got {len(prompts)} prompts but {len(other)} responses")


def clip(text: str, max_chars: int | None) -> str:
    """``text`` cut to ``max_chars`` characters with a visible mark (unchanged when None or short enough)."""
    if max_chars is None or len(text) <= max_chars:
        return text
    return text[:max_chars] + CLIP_MARK


def ask(
    model: ChatModel,
    judge_name: str,
    user_messages: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    progress: bool = False,
) -> list[str]:
    """Greedy answers of ``model`` to one-turn conversations, in order.

    Model failures (an unreachable endpoint, out of memory) become :class:`JudgeError` naming the judge.
    """
    if not user_messages:
        return []
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, batch_size=batch_size)
    try:
        outputs = model.generate([user_turn(m) for m in user_messages], config, progress=progress)
    except ModelError as e:
        raise JudgeError(f"judge {judge_name}: the judge model failed: {e}") from e
    if len(outputs) != len(user_messages):
        raise JudgeError(
            f"judge {judge_name}: the judge model returned {len(outputs)} outputs "
            f"for {len(user_messages)} inputs"
        )
    return [str(o) for o in outputs]


def model_label(model: ChatModel) -> str:
    """The name a judge shows for its model."""
    return str(getattr(model, "name", type(model).__name__))


def can_score(model: Any) -> bool:
    """The model can score answers by log-probability (``answer_logprobs``)."""
    return callable(getattr(model, "answer_logprobs", None))


def white_box(model: Any) -> bool:
    """A local model with teacher-forced log-probs (scoring it costs one forward pass, so judges always do)."""
    return callable(getattr(model, "response_logprobs", None))


def answer_distribution(row: Sequence[float], answers: Sequence[str]) -> dict[str, float] | None:
    """Softmax of one row of :meth:`answer_logprobs` over ``answers``; None when no answer has any probability
    (none was among an endpoint's top tokens)."""
    finite = [x for x in row if math.isfinite(x)]
    if not finite:
        return None
    top = max(finite)
    weights = [math.exp(x - top) if math.isfinite(x) else 0.0 for x in row]
    z = sum(weights)
    return {a: w / z for a, w in zip(answers, weights, strict=True)}


def answer_mass(row: Sequence[float]) -> float:
    """Total probability of the allowed answers (how far the model wanted to answer at all), in [0, 1]."""
    return min(1.0, sum(math.exp(x) for x in row if math.isfinite(x)))


def score_answers(
    model: Any,
    judge_name: str,
    prompts: Sequence[str | Conversation],
    answers: Sequence[str],
    prefills: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[list[float]]:
    """``model.answer_logprobs(...)`` with model failures as :class:`JudgeError` naming the judge
    (:class:`NoLogprobsError` passes through, so callers can fall back)."""
    if not prompts:
        return []
    try:
        rows = model.answer_logprobs(prompts, answers, prefills, **kwargs)
    except NoLogprobsError:
        raise
    except ModelError as e:
        raise JudgeError(f"judge {judge_name}: the judge model failed: {e}") from e
    return [[float(x) for x in row] for row in rows]


@dataclass(frozen=True)
class ClosedQuestion:
    """A question with fixed answers that a judge's output format ends with (a score line, a rubric item).

    Attributes:
        cue: the text the format puts right before the answer, e.g. ``"#thescore:"``; the answer is scored
            after ``prefix + cue`` in the judge's own turn (teacher-forced on its rationale).
        answers: the allowed answers, e.g. ``("1", "2", "3", "4", "5")``.
        follow_up: asked as a new user turn (after the judge's whole output) when the model cannot continue
            its own turn (an endpoint without ``prefill=continue``).
    """

    cue: str
    answers: tuple[str, ...]
    follow_up: str


def score_closed(
    model: ChatModel,
    judge_name: str,
    conversations: Sequence[Conversation],
    outputs: Sequence[str],
    prefixes: Sequence[str],
    question: ClosedQuestion,
    batch_size: int,
) -> list[dict[str, float] | None]:
    """The probabilities of ``question.answers`` after each judge output; None for every item when the model
    gives no log-probs (then only the parsed text can decide).

    ``conversations[i]`` is the judge's prompt, ``outputs[i]`` its free-text answer and ``prefixes[i]`` the
    part of that answer kept before ``question.cue`` (its rationale, plus earlier answers).
    """
    if not conversations or not can_score(model):
        return [None] * len(conversations)
    try:
        if model.supports_prefill:
            rows = score_answers(
                model,
                judge_name,
                conversations,
                question.answers,
                [p + question.cue for p in prefixes],
                batch_size=batch_size,
            )
        else:
            asked: list[str | Conversation] = [
                [*c, {"role": "assistant", "content": o}, {"role": "user", "content": question.follow_up}]
                for c, o in zip(conversations, outputs, strict=True)
            ]
            rows = score_answers(model, judge_name, asked, question.answers, batch_size=batch_size)
    except NoLogprobsError as e:
        log.warning(
            "judge %s: no log-probs to score %s (%s); only the parsed text decides",
            judge_name,
            question.cue,
            e,
        )
        return [None] * len(conversations)
    return [answer_distribution(row, question.answers) for row in rows]


def most_probable(probs: dict[str, float]) -> str:
    """The answer with the highest probability (the first one on ties)."""
    return max(probs, key=lambda a: probs[a])


class GeneratingJudge:
    """What the judges whose model writes its answer share (the rubric judges, the preference judge): the
    judge model with its generation settings, and :meth:`_generate`, which asks it with them."""

    name: str

    def __init__(
        self,
        model: ChatModel,
        max_new_tokens: int,
        batch_size: int,
        max_response_chars: int | None,
        progress: bool,
    ) -> None:
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.max_response_chars = max_response_chars
        self.progress = progress

    def _generate(self, user_messages: Sequence[str]) -> list[str]:
        """The judge model's greedy answers to one-turn conversations, in order (see :func:`ask`)."""
        return ask(self.model, self.name, user_messages, self.max_new_tokens, self.batch_size, self.progress)


PairsJudged = Callable[[Sequence[str], list[str], list[int]], dict[int, Verdict]]
"""``(prompts, texts, todo) -> {index: verdict}``: judges the pairs ``todo`` (the non-empty texts)."""


class ModelJudge:
    """Base of the judges that ask a model about ``prefill + response`` (rubric judges, classifiers).

    :meth:`judge_batch` checks the inputs, sends only the non-empty texts to :meth:`_judge` (a subclass
    overrides it) and gives the empty ones :meth:`_empty_verdict`: empty text is not sent to a judge model.
    """

    name: str
    judges_harm = True

    def judge_batch(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        prefills: Sequence[str] | None = None,
    ) -> list[Verdict]:
        """Judge ``prefill + response`` for each pair (the judge sees the forced prefix too)."""
        return self._judge_nonempty(prompts, responses, prefills, self._judge)

    def _judge_nonempty(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        prefills: Sequence[str] | None,
        judge: PairsJudged,
    ) -> list[Verdict]:
        check_lengths(prompts, responses)
        texts = full_texts(responses, prefills)
        todo = [i for i, r in enumerate(texts) if r.strip()]
        judged = judge(prompts, texts, todo)
        empty = self._empty_verdict()
        return [judged.get(i, empty) for i in range(len(texts))]

    def _judge(self, prompts: Sequence[str], texts: list[str], todo: list[int]) -> dict[int, Verdict]:
        """Verdicts of the pairs ``todo`` (indices of the non-empty ``texts``), by index."""
        raise NotImplementedError

    def _empty_verdict(self) -> Verdict:
        return Verdict(
            self.name,
            refused=False,
            complied=False,
            harmful=False,
            rationale="empty response: not sent to the judge",
        )
