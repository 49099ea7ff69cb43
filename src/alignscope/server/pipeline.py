"""The guarded pipeline that answers one request on a model's worker thread: input guards, generation, output
guards, each decision logged."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alignscope.models.base import ChatModel, Conversation, GenerationConfig
from alignscope.models.local import LocalModel
from alignscope.server.engine import Generated, ModelWorker, generate, stream_local
from alignscope.server.guards import AudioGuard, GuardAuditLog, GuardDecision, InputGuard, OutputGuard, decide
from alignscope.server.schemas import APIError


@dataclass
class ServedModel:
    """A model the server answers for, with its guards, switch state and worker thread."""

    name: str
    model: ChatModel
    input_guards: list[InputGuard]
    output_guards: list[OutputGuard]
    audio_guards: list[AudioGuard]
    worker: ModelWorker
    enabled: bool = True
    disabled_reason: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def info(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason or None,
            "queued": self.worker.pending,
            "supports_prefill": bool(self.model.supports_prefill),
            "guards": [f"{g.name}:{g.policy}" for g in self.input_guards]
            + [f"{g.name}:{g.policy}" for g in self.output_guards],
        }


@dataclass
class Outcome:
    """What the pipeline produced for one request: the answers, every guard decision, whether the model ran
    (False when an input guard refused first) and the generation time."""

    answers: list[Generated]
    decisions: list[GuardDecision]
    generated: bool
    generate_ms: float = 0.0

    @property
    def blocked(self) -> bool:
        return any(d.blocked for d in self.decisions)

    @property
    def flagged(self) -> bool:
        return any(d.flagged for d in self.decisions)


def check_serving(target: ServedModel) -> None:
    if not target.enabled:
        raise APIError(
            503,
            f"model {target.name!r} is disabled by the operator ({target.disabled_reason}); "
            "it answers again once re-enabled",
            type="service_unavailable",
            code="model_disabled",
        )


def run_pipeline(
    target: ServedModel,
    audit: GuardAuditLog,
    request_id: str,
    conversation: Conversation,
    prefill: str | None,
    gen: GenerationConfig,
    n: int = 1,
    emit: Callable[[str], None] | None = None,
    cancelled: threading.Event | None = None,
) -> Outcome:
    """Input guards, generation, output guards. With ``emit``, text is streamed as it is generated unless an
    output guard may block (then the checked answer is emitted whole)."""
    check_serving(target)  # the switch also stops requests that were already queued
    prompt = next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")
    decisions: list[GuardDecision] = []
    for ig in target.input_guards:
        t0 = time.perf_counter()
        check = ig.check_input(conversation)
        d = decide(ig, "input", check, (time.perf_counter() - t0) * 1000)
        audit.guard(d, request_id, target.name, prompt)
        decisions.append(d)
        if d.blocked:
            if emit is not None:
                emit(ig.refusal_text)
            return Outcome([Generated(ig.refusal_text, "content_filter")] * n, decisions, generated=False)
    live = emit is not None and not any(g.policy == "block" for g in target.output_guards)
    t0 = time.perf_counter()
    if live and emit is not None and isinstance(target.model, LocalModel):
        answers = [stream_local(target.model, conversation, prefill, gen, emit, cancelled)]
    else:
        answers = generate(target.model, conversation, prefill, gen, n)
    generate_ms = (time.perf_counter() - t0) * 1000
    if n == 1 and target.output_guards:
        answer = answers[0]
        judged = (prefill or "") + answer.text
        for og in target.output_guards:
            t0 = time.perf_counter()
            check = og.check_output(conversation, judged)
            d = decide(og, "output", check, (time.perf_counter() - t0) * 1000)
            audit.guard(d, request_id, target.name, prompt, judged)
            decisions.append(d)
            if d.blocked:
                answers = [Generated(og.refusal_text, "content_filter", answer.prompt_tokens, 0)]
                break
    if emit is not None and not (live and isinstance(target.model, LocalModel)):
        emit(answers[0].text)
    return Outcome(answers, decisions, generated=True, generate_ms=generate_ms)
