"""Batched serving: the scheduler groups concurrent requests, a greedy answer is the same alone and inside a
batch of different-length prompts (streamed or not), sampled rows keep their own seeds, and the serial server
(``max_batch_size=1``) processes one request at a time."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from alignscope.models import GenerationConfig, user_turn
from alignscope.server import BackgroundServer, ServerSettings, create_app
from alignscope.server.batching import BatchScheduler, QueueFull
from alignscope.server.decoding import Decoding
from alignscope.server.engine import Generated, RowRequest, generate_local
from alignscope.testing import tiny_local_model

PROMPTS = [
    "hello",
    "Write a poem about the sea.",
    "How do I kill a Python process? Use the kill command, step by step, please.",
    "Sure",
    "The capital of France is Paris. Write a poem about the sea. I'm sorry, but I cannot help with that.",
    "x",
]


@pytest.fixture(scope="module")
def tiny() -> Any:
    return tiny_local_model(seed=0)


def greedy(max_new_tokens: int = 12) -> Decoding:
    return Decoding(GenerationConfig(max_new_tokens=max_new_tokens))


def sampled(seed: int, max_new_tokens: int = 12, **kw: Any) -> Decoding:
    return Decoding(GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, seed=seed, **kw))


def alone(tiny: Any, prompt: str, decoding: Decoding) -> Generated:
    return generate_local(
        tiny, [RowRequest(tiny.encode_prompt(user_turn(prompt)), decoding, decoding.row_seed(0))]
    )[0]


# -- the engine: one generate call for many rows ----------------------------------------------------------------


def test_greedy_rows_in_a_batch_equal_each_alone_and_local_generate(tiny: Any) -> None:
    rows = [RowRequest(tiny.encode_prompt(user_turn(p)), greedy()) for p in PROMPTS]
    assert len({len(r.prompt_ids) for r in rows}) > 3  # different lengths: left padding is exercised
    batch = generate_local(tiny, rows)
    for p, got in zip(PROMPTS, batch, strict=True):
        single = alone(tiny, p, greedy())
        assert got == single
        assert got.text == tiny.generate([user_turn(p)], GenerationConfig(max_new_tokens=12))[0]


def test_rows_keep_their_own_budgets(tiny: Any) -> None:
    rows = [RowRequest(tiny.encode_prompt(user_turn("hello")), greedy(k)) for k in (3, 12, 7)]
    out = generate_local(tiny, rows)
    assert [g.completion_tokens for g in out] == [3, 12, 7]
    assert [g.finish_reason for g in out] == ["length"] * 3
    full = out[1].text
    assert full.startswith(out[0].text) and full.startswith(out[2].text)


def test_sampled_row_depends_on_its_seed_not_on_its_batch(tiny: Any) -> None:
    prompt = PROMPTS[1]
    want = alone(tiny, prompt, sampled(5, top_k=50, top_p=0.9))
    others = [RowRequest(tiny.encode_prompt(user_turn(p)), greedy()) for p in PROMPTS[2:5]]
    others.append(RowRequest(tiny.encode_prompt(user_turn(PROMPTS[0])), sampled(9, temperature=0.7), seed=9))
    target = RowRequest(tiny.encode_prompt(user_turn(prompt)), sampled(5, top_k=50, top_p=0.9), seed=5)
    batch = generate_local(tiny, [*others[:2], target, *others[2:]])
    assert batch[2] == want
    assert alone(tiny, prompt, sampled(6, top_k=50, top_p=0.9)).text != want.text  # the seed matters
    # and the greedy rows next to it are unchanged by a sampled neighbour
    assert batch[0] == alone(tiny, PROMPTS[2], greedy())


def test_streamed_rows_join_to_their_answers(tiny: Any) -> None:
    pieces: dict[int, list[str]] = {0: [], 1: []}
    rows = [
        RowRequest(
            tiny.encode_prompt(user_turn(p)),
            greedy(16),
            emit=lambda text, _lp, i=i: pieces[i].append(text),
        )
        for i, p in enumerate(PROMPTS[:2])
    ]
    out = generate_local(tiny, rows)
    assert ["".join(pieces[i]) for i in (0, 1)] == [g.text for g in out]
    assert all(len(pieces[i]) > 1 for i in (0, 1))  # streamed as generated, not at the end


def test_cancelled_row_stops_and_its_neighbours_go_on(tiny: Any) -> None:
    gone = threading.Event()
    rows = [
        RowRequest(
            tiny.encode_prompt(user_turn("hello")), greedy(12), cancelled=gone, emit=lambda *_: gone.set()
        ),
        RowRequest(tiny.encode_prompt(user_turn("Sure")), greedy(12)),
    ]
    out = generate_local(tiny, rows)
    assert out[0].finish_reason == "cancelled" and out[0].completion_tokens < 12
    assert out[1] == alone(tiny, "Sure", greedy(12))


def test_rows_are_reported_as_soon_as_they_finish(tiny: Any) -> None:
    order: list[int] = []
    rows = [
        RowRequest(tiny.encode_prompt(user_turn("hello")), greedy(k), on_done=lambda _g, k=k: order.append(k))
        for k in (12, 2, 6)
    ]
    generate_local(tiny, rows)
    assert order == [2, 6, 12]


# -- the scheduler ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Item:
    rows: int = 1
    future: Future[Any] = field(default_factory=Future)


def test_scheduler_groups_waiting_requests_up_to_the_batch_size() -> None:
    batches: list[list[int]] = []
    entered, gate = threading.Event(), threading.Event()

    def process(items: list[Item]) -> None:
        entered.set()
        gate.wait(10)  # hold the first batch so that the others queue up behind it
        batches.append([i.rows for i in items])
        for i in items:
            i.future.set_result(len(items))

    scheduler: BatchScheduler[Item] = BatchScheduler("t", process, max_batch_size=4, batch_wait_ms=0)
    items = [Item(r) for r in (1, 1, 2, 1, 3, 1)]
    futures = [scheduler.submit(items[0])]
    assert entered.wait(10)
    futures += [scheduler.submit(i) for i in items[1:]]
    gate.set()
    for f in futures:
        f.result(timeout=10)
    assert batches[0] == [1]
    # in arrival order, never more than 4 rows, a request never split
    assert batches[1:] == [[1, 2, 1], [3, 1]]
    assert scheduler.pending == 0
    scheduler.shutdown()


def test_scheduler_bounds_its_queue() -> None:
    gate = threading.Event()

    def process(items: list[Item]) -> None:
        gate.wait(10)
        for i in items:
            i.future.set_result(None)

    scheduler: BatchScheduler[Item] = BatchScheduler("t", process, max_queue=2, max_batch_size=1)
    first, second = scheduler.submit(Item()), scheduler.submit(Item())
    with pytest.raises(QueueFull):
        scheduler.submit(Item())
    gate.set()
    first.result(timeout=10)
    second.result(timeout=10)
    scheduler.shutdown()


def test_scheduler_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchScheduler("t", lambda items: None, max_batch_size=0)
    with pytest.raises(ValueError, match="batch_wait_ms"):
        BatchScheduler("t", lambda items: None, batch_wait_ms=200, max_batch_wait_ms=100)


# -- over HTTP ----------------------------------------------------------------------------------------------------


def post_all(base_url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    with httpx.Client(timeout=120) as http, ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(lambda b: http.post(f"{base_url}/chat/completions", json=b), bodies))


def body(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 12, **extra}


def streamed_text(r: httpx.Response) -> str:
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return "".join(
        e["choices"][0]["delta"].get("content") or "" for e in map(json.loads, events[:-1]) if e["choices"]
    )


@pytest.fixture(scope="module")
def batched_server(tiny: Any) -> Iterator[BackgroundServer]:
    # a long window and a batch size equal to the number of requests sent at once: they form one batch
    settings = ServerSettings(
        max_batch_size=len(PROMPTS), batch_wait_ms=5000, max_batch_wait_ms=5000, default_temperature=0
    )
    with BackgroundServer(create_app(tiny, settings=settings)) as s:
        yield s


def test_concurrent_requests_are_batched_and_equal_single_requests(
    batched_server: BackgroundServer, tiny: Any
) -> None:
    bodies = [body(tiny.name, p, stream=i % 2 == 1) for i, p in enumerate(PROMPTS)]
    responses = post_all(batched_server.base_url, bodies)
    assert all(r.status_code == 200 for r in responses)
    texts = [
        streamed_text(r) if b["stream"] else r.json()["choices"][0]["message"]["content"]
        for b, r in zip(bodies, responses, strict=True)
    ]
    assert texts == [tiny.generate([user_turn(p)], GenerationConfig(max_new_tokens=12))[0] for p in PROMPTS]
    rows = [
        r.json()["alignscope"]["batch_rows"]
        for b, r in zip(bodies, responses, strict=True)
        if not b["stream"]
    ]
    assert max(rows) > 1


def test_serial_server_generates_one_request_at_a_time(tiny: Any) -> None:
    settings = ServerSettings(max_batch_size=1, default_temperature=0)
    with BackgroundServer(create_app(tiny, settings=settings)) as s:
        responses = post_all(s.base_url, [body(tiny.name, p) for p in PROMPTS[:4]])
    assert [r.json()["alignscope"]["batch_rows"] for r in responses] == [1, 1, 1, 1]
    assert [r.json()["choices"][0]["message"]["content"] for r in responses] == [
        tiny.generate([user_turn(p)], GenerationConfig(max_new_tokens=12))[0] for p in PROMPTS[:4]
    ]
