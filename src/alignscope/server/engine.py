"""Generation for the server: one worker thread per model, token streaming for local models.

torch is not re-entrant for one model, so every call that touches a model (guards included) runs on that
model's single worker thread; requests queue in front of it, up to a bound.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from alignscope.models.base import ChatModel, Conversation, GenerationConfig
from alignscope.models.local import LocalModel

T = TypeVar("T")


class QueueFull(RuntimeError):
    """More requests are waiting for a model than the server accepts."""


class ModelWorker:
    """A single worker thread for one model, with a bounded queue.

    Args:
        name: the model's served name (names the thread).
        max_queue: requests waiting or running at once; beyond it :meth:`submit` raises :class:`QueueFull`.
    """

    def __init__(self, name: str, max_queue: int = 256):
        self.max_queue = max_queue
        self._thread_name = f"alignscope-{name}"[:40]
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn``. The count drops when ``fn`` finishes or is cancelled (not when a disconnected client
        stops waiting)."""
        with self._lock:
            if self._pending >= self.max_queue:
                raise QueueFull(f"{self._pending} requests are already queued")
            if self._executor is None:  # first use, or the app was started again after a shutdown
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
            future = self._executor.submit(fn)
            self._pending += 1
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: Future[Any]) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class Generated:
    """One generated answer: the text, why it ended, and token counts (0 when the model cannot tell)."""

    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


def generate(
    model: ChatModel, conversation: Conversation, prefill: str | None, config: GenerationConfig, n: int = 1
) -> list[Generated]:
    """``n`` answers through the model's own ``generate`` (the same code path as local evaluation, so greedy
    answers equal the local model's). Token counts are re-tokenised for local models."""
    texts = model.generate([conversation] * n, config.with_(batch_size=n), [prefill] * n if prefill else None)
    prompt_tokens = 0
    if isinstance(model, LocalModel):
        prompt_tokens = len(model.encode_prompt(conversation, prefill))
    out = []
    for text in texts:
        # re-tokenising the text can overshoot what was generated (merges differ): clip to the budget
        used = (
            min(len(model.response_ids(text)), config.max_new_tokens) if isinstance(model, LocalModel) else 0
        )
        reason = "length" if used >= config.max_new_tokens else "stop"
        out.append(Generated(text, reason, prompt_tokens, used))
    return out


class _DeltaStreamer:
    """A transformers streamer that emits the new text after each token (held back while the decoded text
    ends in an incomplete UTF-8 sequence)."""

    def __init__(self, tokenizer: Any, emit: Callable[[str], None]):
        self.tokenizer = tokenizer
        self.emit = emit
        self.ids: list[int] = []
        self.sent = ""
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return
        if len(text) > len(self.sent):
            self.emit(text[len(self.sent) :])
            self.sent = text

    def end(self) -> None:
        pass

    def finish(self, final: str) -> None:
        if final.startswith(self.sent) and len(final) > len(self.sent):
            self.emit(final[len(self.sent) :])
            self.sent = final


class _Cancelled(StoppingCriteria):
    """Stopping criterion: stop generating once the client has gone."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


@torch.inference_mode()
def stream_local(
    model: LocalModel,
    conversation: Conversation,
    prefill: str | None,
    config: GenerationConfig,
    emit: Callable[[str], None],
    cancelled: threading.Event | None = None,
) -> Generated:
    """Generate one answer token by token, calling ``emit`` with each new piece of text.

    Mirrors :meth:`LocalModel.generate` for a batch of one (same prompt ids, decoding settings and seeding),
    so the pieces join to the text it returns.
    """
    ids = model.encode_prompt(conversation, prefill)
    input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)
    kwargs: dict[str, Any] = {
        "max_new_tokens": config.max_new_tokens,
        "do_sample": config.do_sample,
        "pad_token_id": model.tokenizer.pad_token_id,
    }
    if config.do_sample:
        torch.manual_seed(config.seed)
        kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k or None)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    streamer = _DeltaStreamer(model.tokenizer, emit)
    criteria = [_Cancelled(cancelled)] if cancelled is not None else []
    out = model.model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        streamer=streamer,
        stopping_criteria=StoppingCriteriaList(criteria),
        **kwargs,
    )
    new = [int(t) for t in out[0, len(ids) :].tolist()]
    text = str(model.tokenizer.decode(new, skip_special_tokens=True))
    streamer.finish(text)
    eos = _eos_ids(model)
    ended = bool(new) and new[-1] in eos
    reason = "length" if not ended and len(new) >= config.max_new_tokens else "stop"
    return Generated(text, reason, len(ids), len(new))


def _eos_ids(model: LocalModel) -> set[int]:
    found: set[int] = set()
    for value in (getattr(model.model.generation_config, "eos_token_id", None), model.tokenizer.eos_token_id):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list | tuple):
            found.update(int(v) for v in value)
    return found
