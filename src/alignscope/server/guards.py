"""Guards of the chat-completions server: what they check, what they do about it, and the audit log.

A guard checks the prompt before generation (:class:`InputGuard`) or the generated text after it
(:class:`OutputGuard`) and says whether it fired, with a score. Its **policy** decides what firing does:

* ``block``: an input guard answers its refusal text without generating; an output guard replaces the
  generated text with its refusal text. ``finish_reason`` is ``"content_filter"``.
* ``flag``: the answer is unchanged but marked as flagged.
* ``allow``: the guard runs and is logged, nothing else (shadow mode, to measure a guard before enforcing it).

Every decision is returned in the response's ``alignscope.guards`` field (see :class:`GuardDecision`) and
appended to the :class:`GuardAuditLog`.

Guard specs (``alignscope serve --guard ...``): ``KIND[:POLICY][=ARG]``, policy ``block`` by default:

* ``probe[:POLICY]=PATH``: the safety-layer probe (:class:`alignscope.analysis.probe.ProbeGuard` saved as JSON),
  run on the served model before generating.
* ``judge[:POLICY]=JUDGE_SPEC``: an alignscope judge that judges harm, on the output (``wildguard:PATH``,
  ``llama-guard:openai:http://host/v1#meta-llama/Llama-Guard-3-8B``, ``llm-rubric:openai:...``); fires when
  the judge calls the answer harmful. A judge that cannot judge harm (``keyword``) is refused at start: it
  would block every answer that is not a refusal ("The capital of France is Paris.").
* ``request-complied[:POLICY]=PATH``: harmful request AND complied: fires when the safety-layer probe at
  ``PATH`` calls the request harmful and the keyword judge finds no refusal in the answer. For a deployment
  without a harm judge: the model's own refusals pass, compliance with a flagged request is caught.
* ``keyword[:POLICY]=WORD|WORD...``: fires when the output contains one of the words (case-insensitive).

Audio: ``input_audio`` content parts go through :class:`AudioGuard`s (TDNF, issue 6) before an audio model
sees them; the server answers 400 "audio input not supported by this model" until an audio model exists.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from alignscope.jsonl import iter_jsonl
from alignscope.models.base import ChatModel, Conversation, ModelError

log = logging.getLogger("alignscope.server")

Policy = Literal["block", "flag", "allow"]
POLICIES: tuple[str, ...] = ("block", "flag", "allow")
DEFAULT_REFUSAL = "I'm sorry, but I can't help with that request."
_ACTIONS = {"block": "blocked", "flag": "flagged", "allow": "allowed"}


@dataclass(frozen=True)
class GuardCheck:
    """What a guard found: whether it fired, its score (None when it has none), a short detail."""

    triggered: bool
    score: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class GuardDecision:
    """One guard's decision on one request, as it appears in the response and the audit log.

    Attributes:
        guard: the guard's name, e.g. ``"probe(layer=5)"``.
        stage: ``"input"`` (before generating) or ``"output"`` (on the generated text).
        policy: the guard's policy.
        decision: ``"passed"`` (did not fire), or when it fired ``"blocked"`` / ``"flagged"`` / ``"allowed"``
            according to the policy.
        score: the guard's score (probe log-odds, judge score), None when it has none.
        threshold: the score above which the guard fires, when it has one.
        detail: what fired (matched word, judge output), clipped.
        ms: how long the check took, in milliseconds (what the guard adds to the request's latency).
    """

    guard: str
    stage: str
    policy: str
    decision: str
    score: float | None = None
    threshold: float | None = None
    detail: str = ""
    ms: float | None = None

    @property
    def blocked(self) -> bool:
        return self.decision == "blocked"

    @property
    def flagged(self) -> bool:
        return self.decision == "flagged"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    guard: InputGuard | OutputGuard, stage: str, check: GuardCheck, ms: float | None = None
) -> GuardDecision:
    """Apply the guard's policy to what it found (``ms``: how long the check took)."""
    decision = _ACTIONS[guard.policy] if check.triggered else "passed"
    return GuardDecision(
        guard.name,
        stage,
        guard.policy,
        decision,
        check.score,
        getattr(guard, "threshold", None),
        check.detail,
        None if ms is None else round(ms, 3),
    )


@runtime_checkable
class InputGuard(Protocol):
    """Checks a conversation before generation. Runs on the model's worker thread (it may use the model)."""

    name: str
    policy: Policy
    refusal_text: str

    def check_input(self, conversation: Conversation) -> GuardCheck: ...


@runtime_checkable
class OutputGuard(Protocol):
    """Checks the generated text (prefill included when there was one)."""

    name: str
    policy: Policy
    refusal_text: str

    def check_output(self, conversation: Conversation, response: str) -> GuardCheck: ...


@runtime_checkable
class AudioGuard(Protocol):
    """Processes one ``input_audio`` part before an audio model hears it (e.g. TDNF denoising, issue 6).

    Returns the (possibly transformed) audio bytes and what it found. Not called until an audio model is
    served: the server rejects audio input for text models with a 400.
    """

    name: str
    policy: Policy

    def process_audio(self, audio: bytes, format: str) -> tuple[bytes, GuardCheck]: ...


def _check_policy(policy: str) -> Policy:
    if policy not in POLICIES:
        raise ValueError(f"unknown guard policy {policy!r} (use {', '.join(POLICIES)})")
    return policy  # type: ignore[return-value]


class ProbeInputGuard:
    """The safety-layer probe as an input guard: one partial forward pass, refuse before generating.

    Args:
        probe: a :class:`alignscope.analysis.probe.ProbeGuard` bound to the served model.
        policy: see the module docstring.
    """

    def __init__(self, probe: Any, policy: Policy = "block"):
        if getattr(probe, "model", None) is None:
            raise ModelError("the probe guard is not bound to a model: ProbeGuard.load(path, model)")
        self.probe = probe
        self.policy = _check_policy(policy)
        self.name = f"probe(layer={probe.layer})"
        self.threshold = float(probe.threshold)
        self.refusal_text = str(getattr(probe, "refusal_text", DEFAULT_REFUSAL))

    def check_input(self, conversation: Conversation) -> GuardCheck:
        score = float(self.probe.scores([conversation])[0])
        return GuardCheck(score > self.threshold, score)


class JudgeOutputGuard:
    """An alignscope judge on the generated text; fires when the judge calls it harmful.

    Args:
        judge: a :class:`alignscope.judges.base.Judge` that judges harm (``judges_harm``); a judge that can
            only tell refusal from compliance is refused with a ValueError saying why.
        policy: see the module docstring.
        refusal_text: what a blocked answer is replaced with.
    """

    def __init__(self, judge: Any, policy: Policy = "block", refusal_text: str = DEFAULT_REFUSAL):
        if not getattr(judge, "judges_harm", False):
            raise ValueError(
                f"the output guard needs a judge that judges harm, and {judge.name} cannot: it tells refusal "
                "from compliance, so it would block every answer that is not a refusal. Use a harm judge "
                "(judge=wildguard:MODEL, judge=llama-guard:MODEL, judge=harmbench-cls:MODEL, "
                "judge=llm-rubric:MODEL) or request-complied=PROBE.json (harmful request AND complied)"
            )
        self.judge = judge
        self.policy = _check_policy(policy)
        self.name = f"judge({judge.name})"
        self.refusal_text = refusal_text

    def check_output(self, conversation: Conversation, response: str) -> GuardCheck:
        prompt = next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")
        verdict = self.judge.judge_batch([prompt], [response])[0]
        return GuardCheck(bool(verdict.harmful), verdict.score, f"{verdict.outcome}: {verdict.raw}"[:200])


class RequestCompliedGuard:
    """Harmful request AND complied: the safety-layer probe flags the request and the keyword judge finds no
    refusal in the answer (a harm guard for deployments without a harm judge).

    Args:
        probe: a fitted :class:`alignscope.analysis.probe.ProbeGuard` bound to the served model.
        policy: see the module docstring.
        refusal_text: what a blocked answer is replaced with.
    """

    def __init__(self, probe: Any, policy: Policy = "block", refusal_text: str = DEFAULT_REFUSAL):
        from alignscope.judges.keyword import KeywordJudge

        if getattr(probe, "model", None) is None:
            raise ModelError("the probe is not bound to a model: ProbeGuard.load(path, model)")
        self.probe = probe
        self.keyword = KeywordJudge()
        self.policy = _check_policy(policy)
        self.name = f"request-complied(probe layer={probe.layer}, {self.keyword.name})"
        self.threshold = float(probe.threshold)
        self.refusal_text = refusal_text

    def check_output(self, conversation: Conversation, response: str) -> GuardCheck:
        score = float(self.probe.scores([conversation])[0])
        flagged = score > self.threshold
        prompt = next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")
        verdict = self.keyword.judge_batch([prompt], [response])[0]
        detail = f"request {'flagged' if flagged else 'not flagged'}; answer {verdict.outcome}"
        return GuardCheck(flagged and bool(verdict.complied), score, detail)


class KeywordOutputGuard:
    """Fires when the generated text contains one of ``words`` (case-insensitive substring match)."""

    def __init__(self, words: Sequence[str], policy: Policy = "block", refusal_text: str = DEFAULT_REFUSAL):
        self.words = [w.strip() for w in words if w.strip()]
        if not self.words:
            raise ValueError("the keyword guard needs at least one word (keyword=WORD|WORD)")
        self.policy = _check_policy(policy)
        self.name = "keyword"
        self.refusal_text = refusal_text

    def check_output(self, conversation: Conversation, response: str) -> GuardCheck:
        lowered = response.lower()
        hits = [w for w in self.words if w.lower() in lowered]
        return GuardCheck(bool(hits), float(len(hits)), ", ".join(hits)[:200])


Guard = InputGuard | OutputGuard


def parse_guard_spec(spec: str) -> tuple[str, Policy, str]:
    """``KIND[:POLICY][=ARG]`` -> ``(kind, policy, arg)``.

    >>> parse_guard_spec("judge:flag=llm-rubric:smollm2")
    ('judge', 'flag', 'llm-rubric:smollm2')
    """
    head, _, arg = spec.partition("=")
    kind, _, policy = head.strip().partition(":")
    return kind.strip(), _check_policy(policy.strip() or "block"), arg.strip()


def build_guard(spec: str, model: ChatModel) -> Guard:
    """The guard a spec names (see the module docstring), for the served ``model``."""
    kind, policy, arg = parse_guard_spec(spec)
    if kind in ("probe", "request-complied"):
        from alignscope.analysis.probe import ProbeGuard
        from alignscope.models.local import LocalModel

        if not arg:
            raise ValueError(
                f"the {kind} guard needs its probe file: {kind}[:POLICY]=PATH (from a safety-layer run)"
            )
        if not isinstance(model, LocalModel):
            raise ModelError(f"the {kind} guard reads hidden states: {model.name} is not a local model")
        probe = ProbeGuard.load(arg, model)
        return ProbeInputGuard(probe, policy) if kind == "probe" else RequestCompliedGuard(probe, policy)
    if kind == "judge":
        from alignscope.judges.registry import DEFAULT_JUDGE_MODEL, JUDGES, get_judge, parse_judge_spec

        judge_spec = arg or "llm-rubric"
        name, _, judge_model = parse_judge_spec(judge_spec)
        entry = JUDGES.get(name)
        same = entry is not None and entry.uses_model and (judge_model or DEFAULT_JUDGE_MODEL) == model.name
        # the served model judging itself is loaded once (and runs on the same worker thread)
        judge = get_judge(judge_spec, model=model) if same else get_judge(judge_spec)
        return JudgeOutputGuard(judge, policy)
    if kind == "keyword":
        return KeywordOutputGuard(arg.split("|"), policy)
    raise ValueError(f"unknown guard {kind!r} in {spec!r} (use probe, judge, request-complied or keyword)")


class GuardAuditLog:
    """Append-only JSONL of guard decisions and operator actions; safe to share between threads.

    Each line has ``time`` (UTC ISO 8601), ``event`` (``"guard"``, ``"admin"``, ``"admin_denied"`` or
    ``"request"``) and the event's fields. The file is opened in append mode for every write, so nothing already
    logged is ever rewritten, and each record is flushed and fsynced before the write returns.

    Args:
        path: the JSONL file (parent directories are created); None logs to the ``alignscope.server`` logger
            only.
        max_text_chars: prompt and response excerpts are clipped to this many characters (0 stores none).
    """

    def __init__(self, path: str | os.PathLike[str] | None, max_text_chars: int = 500):
        self.path = Path(path) if path is not None else None
        self.max_text_chars = max_text_chars
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()

    def clip(self, text: str) -> str:
        return text[: self.max_text_chars] if self.max_text_chars else ""

    def write(self, event: str, **fields: Any) -> None:
        record = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event, **fields}
        log.info("%s %s", event, json.dumps(fields, ensure_ascii=False, default=str)[:500])
        if self.path is None:
            return
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())  # a crash loses at most the record being written

    def guard(
        self, decision: GuardDecision, request_id: str, model: str, prompt: str, response: str | None = None
    ) -> None:
        fields: dict[str, Any] = {"request_id": request_id, "model": model, **decision.to_dict()}
        fields["prompt"] = self.clip(prompt)
        if response is not None:
            fields["response"] = self.clip(response)
        self.write("guard", **fields)

    def records(self) -> list[dict[str, Any]]:
        """Everything logged so far (for tests and reports)."""
        if self.path is None or not self.path.exists():
            return []
        with self._lock:
            text = self.path.read_text(encoding="utf-8")
        return [rec for _, rec in iter_jsonl(text, str(self.path))]
