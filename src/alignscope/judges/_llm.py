"""Plumbing shared by the judges that ask a language model (rubric, StrongREJECT, preference)."""

from __future__ import annotations

from collections.abc import Sequence

from alignscope.judges.base import JudgeError
from alignscope.models.base import ChatModel, GenerationConfig, ModelError, user_turn

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
