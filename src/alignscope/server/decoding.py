"""What a chat-completions request asks of the decoder, and the per-row logits processors that let requests
with different settings share one batch.

Every request in a batch keeps its own settings: greedy and sampled rows, temperatures, top-k / top-p, seeds,
penalties and log-prob requests are applied row by row, so any requests can be generated together. Batched
generation runs transformers' greedy search (argmax) over scores that these processors prepare:

* :class:`LogprobRecorder` keeps the model's log-softmax for the rows that asked for ``logprobs`` (before any
  penalty or temperature: the model's own distribution, as vLLM's default "raw" log-probs).
* :class:`PresenceFrequencyPenalty`: OpenAI's ``presence_penalty`` / ``frequency_penalty``.
* :class:`RowSampler` turns argmax into sampling for the sampled rows (temperature, top-k, top-p with
  transformers' warpers, then the Gumbel-max trick with the row's own seeded generator), so a sampled answer
  depends on its seed and prompt only, not on which other requests share its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from alignscope.models.base import GenerationConfig


@dataclass(frozen=True)
class Decoding:
    """The decoding settings of one request.

    Attributes:
        config: token budget (``max_new_tokens``), greedy or sampled, temperature, top-p, top-k and seed.
        n: choices to return. Greedy choices are identical, so they are generated once; sampled choice ``i`` uses
            seed ``config.seed + i``.
        stop: strings that end an answer; the answer is cut before the first one (``finish_reason`` ``"stop"``).
        presence_penalty: subtracted once from the logit of every token already in the answer (OpenAI).
        frequency_penalty: subtracted from a token's logit once per occurrence in the answer (OpenAI).
        logprobs: return each chosen token's log-probability.
        top_logprobs: and the most likely alternatives at each position (0-20).
    """

    config: GenerationConfig = field(default_factory=GenerationConfig)
    n: int = 1
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def rows(self) -> int:
        """Sequences to generate: ``n`` when sampling, one otherwise."""
        return self.n if self.config.do_sample else 1

    def row_seed(self, row: int) -> int:
        return self.config.seed + row

    @property
    def penalised(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty)

    def describe(self) -> str:
        """The settings in reports: :meth:`GenerationConfig.describe` plus what else was asked."""
        parts = [self.config.describe()]
        if self.presence_penalty:
            parts.append(f"presence_penalty={self.presence_penalty:g}")
        if self.frequency_penalty:
            parts.append(f"frequency_penalty={self.frequency_penalty:g}")
        if self.stop:
            parts.append(f"stop={list(self.stop)!r}")
        return ", ".join(parts)


class LogprobRecorder(LogitsProcessor):
    """Keeps ``log_softmax`` of the scores it sees for ``rows`` (the first processor, so the model's own
    distribution); :meth:`take` reads one row's after the step's token is chosen. Scores pass unchanged.

    Args:
        rows: batch rows that asked for log-probs.
    """

    def __init__(self, rows: Sequence[int]):
        self.rows = list(rows)
        self._index = {r: i for i, r in enumerate(self.rows)}
        self.last: torch.Tensor | None = None  # (len(rows), vocab)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.last = torch.log_softmax(scores[self.rows].float(), dim=-1)
        return scores

    def take(self, row: int) -> torch.Tensor:
        """``(vocab,)`` log-probs of ``row`` at the current step."""
        if self.last is None:
            raise RuntimeError("no step recorded yet")
        return self.last[self._index[row]]


class PresenceFrequencyPenalty(LogitsProcessor):
    """OpenAI's penalties on the tokens generated so far (the prompt and prefill are not counted)::

        logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty

    Not transformers' ``repetition_penalty`` (which divides logits and counts the prompt too).

    Args:
        prompt_width: columns of ``input_ids`` that hold the (left-padded) prompt.
        presence: ``(batch,)`` presence penalty per row.
        frequency: ``(batch,)`` frequency penalty per row.
    """

    def __init__(self, prompt_width: int, presence: torch.Tensor, frequency: torch.Tensor):
        self.prompt_width = prompt_width
        self.presence = presence
        self.frequency = frequency
        self.rows = torch.nonzero((presence != 0) | (frequency != 0)).flatten()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[self.rows, self.prompt_width :]
        if generated.shape[1] == 0 or len(self.rows) == 0:
            return scores
        counts = torch.zeros((len(self.rows), scores.shape[-1]), dtype=scores.dtype, device=scores.device)
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        penalty = counts * self.frequency[self.rows, None].to(scores) + (counts > 0).to(scores.dtype) * (
            self.presence[self.rows, None].to(scores)
        )
        scores = scores.clone()
        scores[self.rows] -= penalty
        return scores


@dataclass(frozen=True)
class SampledRow:
    """A sampled row: its batch position, settings and seed."""

    row: int
    temperature: float
    top_p: float
    top_k: int
    seed: int


class RowSampler(LogitsProcessor):
    """Samples the given rows under greedy search: temperature, top-k and top-p (transformers' warpers, in
    transformers' order, applied once per group of rows with the same settings), then Gumbel noise from each
    row's own generator, so the argmax that greedy search takes is a draw from the warped distribution (the
    Gumbel-max trick; vLLM also samples each request with its own generator). Other rows pass unchanged."""

    def __init__(self, rows: Sequence[SampledRow], device: torch.device):
        self.generators = {r.row: torch.Generator(device=device).manual_seed(r.seed) for r in rows}
        groups: dict[tuple[float, int, float], list[int]] = {}
        for r in rows:
            groups.setdefault((r.temperature, r.top_k, r.top_p), []).append(r.row)
        self.groups = [
            (settings, torch.tensor(members, device=device)) for settings, members in groups.items()
        ]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        for (temperature, top_k, top_p), members in self.groups:
            ids, x = input_ids[members], scores[members]
            x = TemperatureLogitsWarper(temperature)(ids, x)
            if top_k:
                x = TopKLogitsWarper(top_k)(ids, x)
            if top_p < 1.0:
                x = TopPLogitsWarper(top_p)(ids, x)
            # argmax(logits + Gumbel) is a sample of softmax(logits); Gumbel = -log(Exp(1))
            noise = torch.stack(
                [torch.empty_like(x[0]).exponential_(generator=self.generators[int(r)]) for r in members]
            )
            scores[members] = x - noise.log_()
        return scores


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int:
    """Position of the earliest stop string in ``text`` at or after ``start`` (-1 when none)."""
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else -1


def held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of ``text`` that may be the start of a stop string (not streamed yet)."""
    longest = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest
