"""Generation for the server: a batch of rows in one ``generate`` call for local models (each row with its own
decoding settings, streaming, stop strings and log-probs), and any other :class:`ChatModel` through its own
``generate``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from alignscope.models.base import ChatModel, Conversation, ModelError
from alignscope.models.local import LocalModel
from alignscope.server.decoding import (
    Decoding,
    LogprobRecorder,
    PresenceFrequencyPenalty,
    RowSampler,
    SampledRow,
    find_stop,
    held_back,
)

LogprobEntry = dict[str, Any]
"""One token in OpenAI's ``logprobs.content``: ``token``, ``logprob``, ``bytes``, ``top_logprobs``."""

RowEmit = Callable[[str, list[LogprobEntry] | None], None]
"""Receives each new piece of a row's text (and the log-prob entries of the tokens it completes)."""

MIN_LOGPROB = -9999.0  # what OpenAI reports for tokens with no probability (JSON has no -inf)


@dataclass
class Generated:
    """One generated answer: the text, why it ended, token counts (0 when the model cannot tell) and, on
    request, the log-prob entries of its tokens."""

    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[LogprobEntry] | None = None


@dataclass
class RowRequest:
    """One sequence of a batch.

    Attributes:
        prompt_ids: the encoded prompt (with any prefill).
        decoding: the request's settings (budget, sampling, stops, penalties, log-probs).
        seed: this row's sampling seed.
        emit: streams the text as it is generated (held back while it may be the start of a stop string or
            ends in an incomplete UTF-8 sequence).
        cancelled: set when the client has gone: the row stops.
        on_done: called on the generating thread as soon as the row is finished (the batch may go on).
    """

    prompt_ids: list[int]
    decoding: Decoding
    seed: int = 0
    emit: RowEmit | None = None
    cancelled: threading.Event | None = None
    on_done: Callable[[Generated], None] | None = None


def generate(
    model: ChatModel, conversation: Conversation, prefill: str | None, decoding: Decoding
) -> list[Generated]:
    """``decoding.n`` answers through the model's own ``generate`` (a model that is not local: no streaming,
    penalties or log-probs). Stop strings cut the text afterwards."""
    n = decoding.n
    config = decoding.config.with_(batch_size=n)
    texts = model.generate([conversation] * n, config, [prefill] * n if prefill else None)
    out = []
    for text in texts:
        cut = find_stop(text, decoding.stop) if decoding.stop else -1
        out.append(Generated(text[:cut] if cut >= 0 else text, "stop"))
    return out


@torch.inference_mode()
def generate_local(model: LocalModel, rows: Sequence[RowRequest]) -> list[Generated]:
    """All ``rows`` in one left-padded ``generate`` call (greedy rows give what :meth:`LocalModel.generate`
    gives, alone or in any batch). Returns the answers in row order."""
    input_ids, attention = model.left_pad([r.prompt_ids for r in rows])
    width = input_ids.shape[1]
    processors: list[LogitsProcessor] = []
    want_logprobs = [i for i, r in enumerate(rows) if r.decoding.logprobs]
    recorder = LogprobRecorder(want_logprobs) if want_logprobs else None
    if recorder is not None:
        processors.append(recorder)
    if any(r.decoding.penalised for r in rows):
        presence = torch.tensor([r.decoding.presence_penalty for r in rows], device=model.device)
        frequency = torch.tensor([r.decoding.frequency_penalty for r in rows], device=model.device)
        processors.append(PresenceFrequencyPenalty(width, presence, frequency))
    sampled = [
        SampledRow(i, r.decoding.config.temperature, r.decoding.config.top_p, r.decoding.config.top_k, r.seed)
        for i, r in enumerate(rows)
        if r.decoding.config.do_sample
    ]
    if sampled:
        processors.append(RowSampler(sampled, model.device))
    tracker = _Tracker(model, rows, recorder)
    try:
        model.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=max(r.decoding.config.max_new_tokens for r in rows),
            do_sample=False,  # sampled rows are sampled by RowSampler, each with its own generator
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=model.tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList(processors),
            stopping_criteria=StoppingCriteriaList([tracker]),
        )
    except torch.OutOfMemoryError as e:
        raise ModelError(f"{model.name}: out of memory generating a batch of {len(rows)}") from e
    return tracker.results()


class _Row:
    """A row's progress: generated ids, text so far, what was streamed."""

    def __init__(self, request: RowRequest):
        self.request = request
        self.ids: list[int] = []
        self.text = ""
        self.sent = ""
        self.scan = 0  # where the next search for a stop string starts
        self.entries: list[tuple[LogprobEntry, int, int]] = []  # entry, start and end of its text
        self.entries_sent = 0
        self.result: Generated | None = None
        # text is decoded at every step only when it is streamed or searched for stop strings
        self.live = request.emit is not None or bool(request.decoding.stop)


class _Tracker(StoppingCriteria):
    """Follows every row as tokens arrive: stop strings, per-row budgets, end of sequence, cancellation,
    streaming and log-probs. Called once per step with the ids so far (the newest token last); returns which
    rows are finished."""

    def __init__(self, model: LocalModel, rows: Sequence[RowRequest], recorder: LogprobRecorder | None):
        self.tokenizer = model.tokenizer
        self.rows = [_Row(r) for r in rows]
        self.recorder = recorder
        self.eos = _eos_ids(model)
        self.device = model.device
        self._token_text: dict[int, str] = {}

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        newest = input_ids[:, -1].tolist()
        for r, row in enumerate(self.rows):
            if row.result is None:
                self._step(r, row, int(newest[r]))
        return torch.tensor(
            [row.result is not None for row in self.rows], dtype=torch.bool, device=self.device
        )

    def _step(self, r: int, row: _Row, token: int) -> None:
        request, decoding = row.request, row.request.decoding
        row.ids.append(token)
        if token in self.eos:
            self._finish(row, "stop")
            return
        entry = self._entry(r, token) if decoding.logprobs else None
        if row.live:
            start = len(row.text)
            row.text = str(self.tokenizer.decode(row.ids, skip_special_tokens=True))
            if entry is not None:
                row.entries.append((entry, start, len(row.text)))
            if decoding.stop:
                cut = find_stop(row.text, decoding.stop, row.scan)
                if cut >= 0:
                    self._finish(row, "stop", row.text[:cut])
                    return
                row.scan = max(0, len(row.text) - max(len(s) for s in decoding.stop) + 1)
        elif entry is not None:
            row.entries.append((entry, 0, 0))
        if len(row.ids) >= decoding.config.max_new_tokens:
            self._finish(row, "length")
        elif request.cancelled is not None and request.cancelled.is_set():
            self._finish(row, "cancelled")
        elif request.emit is not None:
            self._flush(row, final=False)

    def _entry(self, r: int, token: int) -> LogprobEntry:
        assert self.recorder is not None
        logp = self.recorder.take(r)
        entry = self._token_entry(token, float(logp[token]))
        k = self.rows[r].request.decoding.top_logprobs
        if k:
            values, indices = torch.topk(logp, k)
            entry["top_logprobs"] = [
                self._token_entry(int(i), float(v))
                for v, i in zip(values.tolist(), indices.tolist(), strict=True)
            ]
        else:
            entry["top_logprobs"] = []
        return entry

    def _token_entry(self, token: int, logprob: float) -> LogprobEntry:
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = str(self.tokenizer.decode([token]))
        return {"token": text, "logprob": max(logprob, MIN_LOGPROB), "bytes": list(text.encode("utf-8"))}

    def _finish(self, row: _Row, reason: str, text: str | None = None) -> None:
        if text is None:  # the whole sequence (eos included: decoded as LocalModel.generate decodes it)
            text = str(self.tokenizer.decode(row.ids, skip_special_tokens=True))
        row.text = text
        logprobs = None
        if row.request.decoding.logprobs:
            # a token belongs to the answer if its text starts before the cut
            row.entries = [x for x in row.entries if not row.live or x[1] < len(text)]
            logprobs = [e for e, _, _ in row.entries]
            row.entries_sent = min(row.entries_sent, len(row.entries))
        prompt = len(row.request.prompt_ids)
        row.result = Generated(text, reason, prompt, len(row.ids), logprobs)
        if row.request.emit is not None:
            self._flush(row, final=True)
        if row.request.on_done is not None:
            row.request.on_done(row.result)

    def _flush(self, row: _Row, final: bool) -> None:
        emit = row.request.emit
        assert emit is not None
        text = row.text
        if final:
            safe = len(text)
        else:
            if text.endswith("\ufffd") or not text.startswith(row.sent):
                return  # an incomplete UTF-8 sequence, or decoding changed what was already sent
            safe = len(text) - held_back(text, row.request.decoding.stop)
        end = row.entries_sent
        while end < len(row.entries) and (final or row.entries[end][2] <= safe):
            end += 1
        piece = text[len(row.sent) : safe] if safe > len(row.sent) else ""
        entries = [e for e, _, _ in row.entries[row.entries_sent : end]]
        if piece or entries:
            emit(piece, entries if row.request.decoding.logprobs else None)
            row.sent += piece
            row.entries_sent = end

    def results(self) -> list[Generated]:
        for row in self.rows:
            if row.result is None:  # generation ended on the model's own limit
                self._finish(row, "length")
        return [row.result for row in self.rows if row.result is not None]


def _eos_ids(model: LocalModel) -> set[int]:
    found: set[int] = set()
    for value in (getattr(model.model.generation_config, "eos_token_id", None), model.tokenizer.eos_token_id):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list | tuple):
            found.update(int(v) for v in value)
    return found
