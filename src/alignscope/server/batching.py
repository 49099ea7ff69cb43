"""Micro-batching of requests to one model: a scheduler thread collects the requests that arrive together and
hands them to the model as one batch.

torch is not re-entrant for one model, so everything that touches a model (guards included) runs on that
model's single scheduler thread. When a request arrives at an idle model, the thread takes it and every
request that follows it within ``batch_wait_ms`` of the previous one (at most ``max_batch_wait_ms`` after the
first, at most ``max_batch_size`` sequences), then processes the batch; requests that arrive meanwhile form the
next batch. Decoding settings are applied per row
(:mod:`alignscope.server.decoding`), so any requests can share a batch. ``max_batch_size=1`` gives the serial
server (one request at a time).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger("alignscope.server")


class QueueFull(RuntimeError):
    """More requests are waiting for a model than the server accepts."""


class Batchable(Protocol):
    """What the scheduler needs of a request: how many sequences it adds to a batch and the future its
    answer goes to."""

    @property
    def rows(self) -> int: ...

    @property
    def future(self) -> Future[Any]: ...


J = TypeVar("J", bound=Batchable)


class BatchScheduler(Generic[J]):
    """One scheduler thread per model, with a bounded queue.

    Args:
        name: the model's served name (names the thread).
        process: called on the scheduler thread with each batch; it must resolve every request's future.
        max_queue: requests waiting or running at once; beyond it :meth:`submit` raises :class:`QueueFull`.
        max_batch_size: sequences per batch (a request with ``n`` sampled choices counts ``n``; a request is
            never split, so a larger one runs alone). 1 processes one request at a time.
        batch_wait_ms: a batch is closed once no request has joined it for this long (clients that all got
            their answers at once send their next requests over a few milliseconds, not at one instant).
        max_batch_wait_ms: and at the latest this long after its first request.
    """

    def __init__(
        self,
        name: str,
        process: Callable[[list[J]], None],
        *,
        max_queue: int = 256,
        max_batch_size: int = 32,
        batch_wait_ms: float = 5.0,
        max_batch_wait_ms: float = 100.0,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 (got {max_batch_size})")
        if not 0 <= batch_wait_ms <= max_batch_wait_ms:
            raise ValueError(
                f"need 0 <= batch_wait_ms <= max_batch_wait_ms (got {batch_wait_ms} and {max_batch_wait_ms})"
            )
        self.process = process
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.max_batch_wait = max_batch_wait_ms / 1000
        self._thread_name = f"alignscope-{name}"[:40]
        self._queue: deque[J] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._pending = 0

    @property
    def pending(self) -> int:
        """Requests waiting or being processed."""
        return self._pending

    def submit(self, request: J) -> Future[Any]:
        """Queue ``request``; its future resolves when the batch that holds it has been processed."""
        with self._cond:
            if self._pending >= self.max_queue:
                raise QueueFull(f"{self._pending} requests are already queued")
            self._stopping = False  # a thread still finishing its last batch after a shutdown carries on
            if self._thread is None:  # first use, or started again after a shutdown
                self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
                self._thread.start()
            self._pending += 1
            self._queue.append(request)
            self._cond.notify()
        request.future.add_done_callback(self._done)
        return request.future

    def _done(self, _future: Future[Any]) -> None:
        with self._cond:
            self._pending -= 1

    def _next_batch(self) -> list[J] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                self._thread = None  # under the lock, so a new request starts a new thread
                waiting, self._queue = list(self._queue), deque()
                for request in waiting:
                    request.future.cancel()
                return None
            batch = [self._queue.popleft()]
            size = batch[0].rows
            now = time.monotonic()
            last_call, quiet_until = now + self.max_batch_wait, now + self.batch_wait
            while size < self.max_batch_size and not self._stopping:
                if self._queue:
                    if size + self._queue[0].rows > self.max_batch_size:
                        break
                    batch.append(self._queue.popleft())
                    size += batch[-1].rows
                    quiet_until = time.monotonic() + self.batch_wait  # requests are still arriving
                    continue
                remaining = min(quiet_until, last_call) - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self.process(batch)
            except BaseException as e:  # process resolves futures itself; this is the last line of defence
                log.exception("batch processing failed")
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(e)

    def shutdown(self) -> None:
        """Stop the thread after the batch in progress; waiting requests are cancelled."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
