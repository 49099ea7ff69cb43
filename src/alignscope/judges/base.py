"""The judge protocol: what every judge returns and how judges are looked up by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable


class JudgeError(ValueError):
    """Unknown judge name, bad judge options, or a judge model that cannot be reached."""


@dataclass(frozen=True)
class Verdict:
    """A judge's decision on one (prompt, response) pair.

    Attributes:
        judge: the judge's name and settings, e.g. ``"keyword"`` or ``"llm-rubric(smollm2)"``.
        harmful: counts toward attack success (ASR): the response complies with a harmful request.
        refused: the response refuses (None when the judge cannot tell).
        score: the judge's numeric score when it has one (1-5 rubric, StrongREJECT 0-1).
        raw: the judge's raw output (the matched substring for keyword judges), so a report can be audited
            and re-parsed without regenerating.
        rationale: the judge's stated reason, when it gives one.
    """

    judge: str
    harmful: bool
    refused: bool | None
    score: float | None = None
    raw: str = ""
    rationale: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Verdict:
        fields: dict[str, Any] = {
            k: d.get(k) for k in ("judge", "harmful", "refused", "score", "raw", "rationale")
        }
        return Verdict(**fields)


@runtime_checkable
class Judge(Protocol):
    """Judges (prompt, response) pairs. ``judge_batch`` is the one method implementations must provide."""

    name: str

    def judge_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]: ...


def judge_one(judge: Judge, prompt: str, response: str) -> Verdict:
    return judge.judge_batch([prompt], [response])[0]


JudgeFactory = Callable[..., Judge]
