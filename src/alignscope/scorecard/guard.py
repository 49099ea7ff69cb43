"""The guard as part of the model under test, applied to every family's records.

The families record what the model itself answered; the guard's decisions are taken on the same records and
stored beside them (stage ``guard`` of the model's sub-run, keyed by a hash of what the guard read, so a
prompt asked in several families is checked once and a resumed run checks nothing twice). A guard whose
policy is ``block`` changes the outcome: an input guard that fires means the system answered with its refusal
text (refused, whatever the model would have said); an output guard that fires replaces the answer with its
refusal. ``flag`` and ``allow`` guards are recorded and change nothing. Each family is reported with and
without the guard, so the guard's share of the defence is visible.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from alignscope.judges.outcomes import success_flags, verdicts_of
from alignscope.models.base import ChatModel, Conversation, user_turn
from alignscope.runs.store import RunDir
from alignscope.stats import rate_of

STAGE = "guard"


def record_conversation(record: Mapping[str, Any]) -> Conversation:
    """The chat the model was given for a stored record: a GCG record's attacked prompt, else the prompt."""
    return user_turn(str(record.get("attack_prompt") or record.get("prompt") or ""))


class ModelGuards:
    """The guards of one model (built from server guard specs, bound to that model).

    Args:
        guards: objects with ``check_input(conversation)`` and/or ``check_output(conversation, response)``,
            a ``name`` and a ``policy`` (:mod:`alignscope.server.guards`).
        run: the model's sub-run, where decisions are stored (None: kept in memory).
    """

    def __init__(self, guards: Sequence[Any], run: RunDir | None = None) -> None:
        self.guards = list(guards)
        self.run = run
        self.cache: dict[str, dict[str, Any]] = dict(run.done(STAGE)) if run is not None else {}

    @classmethod
    def build(cls, specs: Sequence[str], model: ChatModel, run: RunDir | None = None) -> ModelGuards:
        from alignscope.server.guards import build_guard

        return cls([build_guard(s, model) for s in specs], run)

    def __bool__(self) -> bool:
        return bool(self.guards)

    @property
    def names(self) -> list[str]:
        return [f"{g.name} ({g.policy})" for g in self.guards]

    def _decide(self, kind: str, conversation: Conversation, response: str | None) -> dict[str, Any]:
        payload = json.dumps([kind, conversation, response], ensure_ascii=False, sort_keys=True)
        key = f"{kind}|{hashlib.sha256(payload.encode()).hexdigest()[:20]}"
        if key in self.cache:
            return self.cache[key]
        decisions = []
        for g in self.guards:
            if kind == "input" and hasattr(g, "check_input"):
                check = g.check_input(conversation)
            elif kind == "output" and hasattr(g, "check_output"):
                check = g.check_output(conversation, response or "")
            else:
                continue
            decisions.append(
                {
                    "guard": g.name,
                    "policy": g.policy,
                    "triggered": bool(check.triggered),
                    "score": check.score,
                    "detail": check.detail,
                }
            )
        blocked = any(d["triggered"] and d["policy"] == "block" for d in decisions)
        rec = {"stage": STAGE, "key": key, "kind": kind, "blocked": blocked, "decisions": decisions}
        if self.run is not None:
            self.run.append(rec)
        self.cache[key] = rec
        return rec

    def blocked(
        self,
        records: Sequence[Mapping[str, Any]],
        conversation: Callable[[Mapping[str, Any]], Conversation] = record_conversation,
        input_guards: bool = True,
    ) -> list[bool]:
        """Per record: did a blocking guard turn it into a refusal? ``input_guards=False`` for inputs a text
        guard cannot read (spoken questions)."""
        if not self.guards:
            return [False] * len(records)
        out = []
        for r in records:
            conv = conversation(r)
            hit = input_guards and self._decide("input", conv, None)["blocked"]
            if not hit:
                answer = f"{r.get('prefill') or ''}{r.get('response') or ''}"
                hit = self._decide("output", conv, answer)["blocked"]
            out.append(bool(hit))
        return out


def guarded_success(records: Sequence[Mapping[str, Any]], blocked: Sequence[bool]) -> tuple[str, list[bool]]:
    """Per-record attack success with the guard counted: a blocked record is a refusal, never a success."""
    measure, flags = success_flags(records)
    return measure, [ok and not b for ok, b in zip(flags, blocked, strict=True)]


def guarded_refusals(records: Sequence[Mapping[str, Any]], blocked: Sequence[bool]) -> list[bool]:
    """Per-record refusal with the guard counted (a blocked answer is a refusal)."""
    return [bool(v.refused) or b for v, b in zip(verdicts_of(records), blocked, strict=True)]


def rate_dict(flags: Sequence[bool]) -> dict[str, Any]:
    return rate_of(list(flags)).to_dict()
