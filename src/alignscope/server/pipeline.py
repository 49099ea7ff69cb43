"""The guarded pipeline that answers a batch of requests on a model's scheduler thread: input guards per request,
one batched generation for the requests that pass, output guards per request, each decision logged."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from alignscope.models.base import ChatModel, Conversation
from alignscope.models.local import LocalModel
from alignscope.server.batching import BatchScheduler
from alignscope.server.decoding import Decoding
from alignscope.server.engine import Generated, LogprobEntry, RowRequest, generate, generate_local
from alignscope.server.guards import AudioGuard, GuardAuditLog, GuardDecision, InputGuard, OutputGuard, decide
from alignscope.server.schemas import APIError

Emit = Callable[[int, str, list[LogprobEntry] | None], None]
"""Receives streamed text: the choice index, the new text, and its tokens' log-prob entries (or None)."""


@dataclass
class Outcome:
    """What the pipeline produced for one request: the answers, every guard decision, whether the model ran
    (False when an input guard refused first), the generation time and the rows generated in its batch."""

    answers: list[Generated]
    decisions: list[GuardDecision]
    generated: bool
    generate_ms: float = 0.0
    batch_rows: int = 0

    @property
    def blocked(self) -> bool:
        return any(d.blocked for d in self.decisions)

    @property
    def flagged(self) -> bool:
        return any(d.flagged for d in self.decisions)


@dataclass(eq=False)
class Job:
    """One request waiting for its batch.

    Attributes:
        emit: set for streaming requests.
        cancelled: set when the client has gone (its rows stop generating).
        future: resolves to the :class:`Outcome` (or the error).
    """

    request_id: str
    conversation: Conversation
    prefill: str | None
    decoding: Decoding
    emit: Emit | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: Future[Outcome] = field(default_factory=Future)
    decisions: list[GuardDecision] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.decoding.rows


@dataclass(eq=False)
class ServedModel:
    """A model the server answers for, with its guards, switch state and batch scheduler.

    Attributes:
        max_queue, max_batch_size, batch_wait_ms, max_batch_wait_ms: see :class:`alignscope.server.batching.BatchScheduler`.
    """

    name: str
    model: ChatModel
    input_guards: list[InputGuard]
    output_guards: list[OutputGuard]
    audio_guards: list[AudioGuard]
    audit: GuardAuditLog
    max_queue: int = 256
    max_batch_size: int = 32
    batch_wait_ms: float = 5.0
    max_batch_wait_ms: float = 100.0
    enabled: bool = True
    disabled_reason: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    scheduler: BatchScheduler[Job] = field(init=False)

    def __post_init__(self) -> None:
        self.scheduler = BatchScheduler(
            self.name,
            lambda jobs: process_batch(self, jobs),
            max_queue=self.max_queue,
            max_batch_size=self.max_batch_size,
            batch_wait_ms=self.batch_wait_ms,
            max_batch_wait_ms=self.max_batch_wait_ms,
        )

    def info(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason or None,
            "queued": self.scheduler.pending,
            "max_batch_size": self.max_batch_size,
            "supports_prefill": bool(self.model.supports_prefill),
            "guards": [f"{g.name}:{g.policy}" for g in self.input_guards]
            + [f"{g.name}:{g.policy}" for g in self.output_guards],
        }

    @property
    def streams_live(self) -> bool:
        """Text is streamed as generated unless an output guard may block it (then the checked answer is
        streamed whole)."""
        return not any(g.policy == "block" for g in self.output_guards)


def check_serving(target: ServedModel) -> None:
    if not target.enabled:
        raise APIError(
            503,
            f"model {target.name!r} is disabled by the operator ({target.disabled_reason}); "
            "it answers again once re-enabled",
            type="service_unavailable",
            code="model_disabled",
        )


def _prompt(conversation: Conversation) -> str:
    return next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")


def process_batch(target: ServedModel, jobs: list[Job]) -> None:
    """Answer ``jobs`` (on the scheduler thread): input guards for each, one generation for those that pass,
    then output guards for each. Resolves every job's future; a failing request fails alone where it can."""
    passed: list[Job] = []
    for job in jobs:
        if not job.future.set_running_or_notify_cancel():
            continue  # the client went away while the request waited
        try:
            check_serving(target)  # the switch also stops requests that were already queued
            refused = _input_guards(target, job)
        except Exception as e:
            job.future.set_exception(e)
            continue
        if refused is not None:
            job.future.set_result(refused)
        else:
            passed.append(job)
    if not passed:
        return
    if isinstance(target.model, LocalModel):
        _generate_batch(target, target.model, passed)
        return
    for job in passed:  # other models generate through their own generate(), one request at a time
        t0 = time.perf_counter()
        try:
            answers = generate(target.model, job.conversation, job.prefill, job.decoding)
            _finish(target, job, answers, (time.perf_counter() - t0) * 1000, job.rows, streamed=False)
        except Exception as e:
            job.future.set_exception(e)


def _input_guards(target: ServedModel, job: Job) -> Outcome | None:
    """The refusal when an input guard blocks, else None (decisions are kept on the job)."""
    prompt = _prompt(job.conversation)
    n = job.decoding.n
    for ig in target.input_guards:
        t0 = time.perf_counter()
        check = ig.check_input(job.conversation)
        d = decide(ig, "input", check, (time.perf_counter() - t0) * 1000)
        target.audit.guard(d, job.request_id, target.name, prompt)
        job.decisions.append(d)
        if d.blocked:
            if job.emit is not None:
                for choice in range(n):
                    job.emit(choice, ig.refusal_text, None)
            return Outcome([Generated(ig.refusal_text, "content_filter")] * n, job.decisions, generated=False)
    return None


def _generate_batch(target: ServedModel, model: LocalModel, jobs: list[Job]) -> None:
    """One ``generate`` call for all rows of ``jobs``. A request is answered as soon as its rows are done when
    there are no output guards (they may use the model, so they run after the batch)."""
    t0 = time.perf_counter()
    rows: list[RowRequest] = []
    answers: dict[int, list[Generated | None]] = {}
    live = target.streams_live
    early = not target.output_guards
    owners: list[Job] = []

    def row_done(job: Job, row: int, answer: Generated) -> None:
        got = answers[id(job)]
        got[row] = answer
        if early and all(a is not None for a in got):
            _finish(target, job, _choices(job, got), (time.perf_counter() - t0) * 1000, len(rows), live)

    for job in jobs:
        try:
            prompt_ids = model.encode_prompt(job.conversation, job.prefill)
        except Exception as e:
            job.future.set_exception(e)
            continue
        owners.append(job)
        answers[id(job)] = [None] * job.rows
        for i in range(job.rows):
            rows.append(
                RowRequest(
                    prompt_ids,
                    job.decoding,
                    job.decoding.row_seed(i),
                    emit=_row_emit(job, i) if job.emit is not None and live else None,
                    cancelled=job.cancelled,
                    on_done=functools.partial(row_done, job, i),
                )
            )
    if not rows:
        return
    try:
        generate_local(model, rows)
    except Exception as e:
        for job in owners:
            if not job.future.done():
                job.future.set_exception(e)
        return
    for job in owners:
        if not job.future.done():
            got = answers[id(job)]
            _finish(target, job, _choices(job, got), (time.perf_counter() - t0) * 1000, len(rows), live)


def _row_emit(job: Job, row: int) -> Callable[[str, list[LogprobEntry] | None], None]:
    """A row streams to its choice; a greedy request's single row streams to all of its identical choices."""
    emit = job.emit
    assert emit is not None
    choices = [row] if job.decoding.rows > 1 or job.decoding.n == 1 else list(range(job.decoding.n))

    def send(text: str, logprobs: list[LogprobEntry] | None) -> None:
        for c in choices:
            emit(c, text, logprobs)

    return send


def _choices(job: Job, got: list[Generated | None]) -> list[Generated]:
    done = [a for a in got if a is not None]
    return done if len(done) == job.decoding.n else [done[0]] * job.decoding.n


def _finish(
    target: ServedModel,
    job: Job,
    answers: list[Generated],
    generate_ms: float,
    batch_rows: int,
    streamed: bool,
) -> None:
    """Output guards, the answer streamed whole when it was not streamed live, the future resolved."""
    try:
        decisions = job.decisions
        if job.decoding.n == 1 and target.output_guards:
            answer = answers[0]
            judged = (job.prefill or "") + answer.text
            prompt = _prompt(job.conversation)
            for og in target.output_guards:
                t0 = time.perf_counter()
                check = og.check_output(job.conversation, judged)
                d = decide(og, "output", check, (time.perf_counter() - t0) * 1000)
                target.audit.guard(d, job.request_id, target.name, prompt, judged)
                decisions.append(d)
                if d.blocked:
                    answers = [Generated(og.refusal_text, "content_filter", answer.prompt_tokens, 0)]
                    break
        if job.emit is not None and not streamed:
            for choice, a in enumerate(answers):
                job.emit(choice, a.text, a.logprobs)
        job.future.set_result(
            Outcome(answers, decisions, generated=True, generate_ms=generate_ms, batch_rows=batch_rows)
        )
    except Exception as e:
        job.future.set_exception(e)
