"""The OpenAI-compatible server: API shape, streaming, validation, guards and their audit log, the operator
switch, failure isolation, the official ``openai`` client over a real socket, and a bounded load test."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from alignscope.judges import Verdict
from alignscope.models import GenerationConfig, ModelError, user_turn
from alignscope.server import (
    BackgroundServer,
    GuardAuditLog,
    GuardCheck,
    JudgeOutputGuard,
    KeywordOutputGuard,
    ProbeInputGuard,
    RequestCompliedGuard,
    ServerSettings,
    build_guard,
    create_app,
    parse_guard_spec,
)
from alignscope.testing import ScriptedModel, tiny_local_model

CFG = GenerationConfig(max_new_tokens=10)


@pytest.fixture(scope="module")
def tiny() -> Any:
    return tiny_local_model(seed=0)


@pytest.fixture(scope="module")
def client(tiny: Any) -> Iterator[TestClient]:
    with TestClient(create_app(tiny, settings=ServerSettings(max_input_chars=2000))) as c:
        yield c


def chat(model: str, prompt: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 10, **extra}


def sse_events(text: str) -> list[Any]:
    events = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def local_answer(model: Any, prompt: str, prefill: str | None = None) -> str:
    return str(model.generate([user_turn(prompt)], CFG, prefills=[prefill] if prefill else None)[0])


# -- API shape -----------------------------------------------------------------------------------------------


def test_completion_greedy_equals_local(client: TestClient, tiny: Any) -> None:
    r = client.post("/v1/chat/completions", json=chat(tiny.name, temperature=0))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == tiny.name
    assert body["choices"][0]["message"] == {"role": "assistant", "content": local_answer(tiny, "hello")}
    assert body["choices"][0]["finish_reason"] in {"stop", "length"}
    assert body["usage"]["prompt_tokens"] > 0
    meta = body["alignscope"]
    assert meta["guards"] == [] and meta["generated"] and not meta["blocked"]
    assert meta["decoding"] == "greedy, max_new_tokens=10"


def test_streaming_joins_to_the_same_text(client: TestClient, tiny: Any) -> None:
    for prompt in ["hello", "Write a poem about the sea."]:
        req = chat(tiny.name, prompt, temperature=0, stream=True, stream_options={"include_usage": True})
        r = client.post("/v1/chat/completions", json=req)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
        assert events[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
        assert text == local_answer(tiny, prompt)
        final = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
        assert len(final) == 1 and final[0]["alignscope"]["generated"]
        assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0


def test_assistant_prefill_extension(client: TestClient, tiny: Any) -> None:
    req = chat(tiny.name, temperature=0, continue_final_message=True)
    req["messages"].append({"role": "assistant", "content": "Sure, here"})
    r = client.post("/v1/chat/completions", json=req)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == local_answer(tiny, "hello", "Sure, here")


def test_sampling_is_seeded(client: TestClient, tiny: Any) -> None:
    req = chat(tiny.name, temperature=1.0, top_p=0.9, top_k=20, seed=7)
    a, b = (client.post("/v1/chat/completions", json=req).json() for _ in range(2))
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    assert a["alignscope"]["seed"] == 7 and "top_k=20" in a["alignscope"]["decoding"]


def test_models_and_health(client: TestClient, tiny: Any) -> None:
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [tiny.name]
    assert models["data"][0]["alignscope"]["enabled"] is True
    assert client.get(f"/v1/models/{tiny.name}").json()["id"] == tiny.name
    assert client.get("/health").json()["status"] == "ok"


# -- validation ----------------------------------------------------------------------------------------------

NAME = "tiny-chatml-0"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ("{not json", 400, "invalid JSON"),
        ("[1, 2]", 400, "JSON object"),
        (json.dumps({"model": NAME}), 400, "messages"),
        (json.dumps({"model": NAME, "messages": []}), 400, "messages"),
        (
            json.dumps({"model": NAME, "messages": [{"role": "user", "content": 5}]}),
            400,
            "messages.0.content",
        ),
        (
            json.dumps({"model": NAME, "messages": [{"role": "wizard", "content": "x"}]}),
            400,
            "messages.0.role",
        ),
        (json.dumps({**chat(NAME), "max_tokens": "many"}), 400, "max_tokens"),
        (json.dumps({**chat(NAME), "max_tokens": 10**6}), 400, "limit"),
        (json.dumps({**chat(NAME), "temperature": -1}), 400, "temperature"),
        (json.dumps({**chat(NAME), "stream": "yes"}), 400, "stream"),
        (
            json.dumps({"model": NAME, "messages": [{"role": "user", "content": [{"type": "text"}]}]}),
            400,
            "text",
        ),
        (json.dumps({**chat(NAME), "tools": [{"type": "function"}]}), 400, "'tools' is not supported"),
        (json.dumps(chat(NAME, "x" * 2001)), 400, "over this server's limit of 2000"),
        (json.dumps(chat("gpt-9")), 404, "not served here"),
        (json.dumps({**chat(NAME), "continue_final_message": True}), 400, "trailing assistant message"),
        (
            json.dumps(
                {
                    "model": NAME,
                    "messages": [
                        {
                            "role": "user",
                            "content": [{"type": "input_audio", "input_audio": {"data": "AAAA"}}],
                        }
                    ],
                }
            ),
            400,
            "audio input not supported by this model",
        ),
        (
            json.dumps({"model": NAME, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            400,
            "image_url",
        ),
    ],
)
def test_malformed_requests_get_4xx_and_the_server_keeps_serving(
    client: TestClient, body: str, status: int, needle: str
) -> None:
    r = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"] and error["type"]
    assert client.post("/v1/chat/completions", json=chat(NAME, temperature=0)).status_code == 200


def test_text_content_parts_are_joined(client: TestClient, tiny: Any) -> None:
    req = {
        "model": tiny.name,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}
        ],
        "max_tokens": 10,
        "temperature": 0,
    }
    assert client.post("/v1/chat/completions", json=req).json()["choices"][0]["message"]["content"] == (
        local_answer(tiny, "hello")
    )


def test_oversized_body_is_413(tiny: Any) -> None:
    with TestClient(create_app(tiny, settings=ServerSettings(max_body_bytes=300))) as c:
        r = c.post("/v1/chat/completions", json=chat(tiny.name, "y" * 400))
        assert r.status_code == 413 and "bytes" in r.json()["error"]["message"]
        assert c.post("/v1/chat/completions", json=chat(tiny.name, temperature=0)).status_code == 200


def _explode(prompt: str) -> str:
    """Fails on prompts containing 'boom' or 'crash' (generation errors must not stop the server)."""
    if "boom" in prompt:
        raise ModelError("out of memory (simulated)")
    if "crash" in prompt:
        raise ZeroDivisionError("bug")
    return prompt[::-1]


def exploding_model() -> ScriptedModel:
    return ScriptedModel(_explode, name="exploding")


def test_failing_generation_is_500_and_server_keeps_serving() -> None:
    with TestClient(create_app(exploding_model())) as c:
        r = c.post("/v1/chat/completions", json=chat("exploding", "boom"))
        assert r.status_code == 500 and "out of memory" in r.json()["error"]["message"]
        r = c.post("/v1/chat/completions", json=chat("exploding", "crash"))
        assert r.status_code == 500 and "ZeroDivisionError" in r.json()["error"]["message"]
        events = sse_events(c.post("/v1/chat/completions", json=chat("exploding", "boom", stream=True)).text)
        assert "out of memory" in events[-1]["error"]["message"]
        assert (
            c.post("/v1/chat/completions", json=chat("exploding", "abc")).json()["choices"][0]["message"][
                "content"
            ]
            == "cba"
        )
        # a non-local model streams its whole answer in one chunk
        events = sse_events(c.post("/v1/chat/completions", json=chat("exploding", "abc", stream=True)).text)
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "cba"


def test_full_queue_is_429(tiny: Any) -> None:
    with TestClient(create_app(tiny, settings=ServerSettings(max_queue=0))) as c:
        r = c.post("/v1/chat/completions", json=chat(tiny.name))
        assert r.status_code == 429 and r.json()["error"]["code"] == "server_busy"


def test_api_key(tiny: Any) -> None:
    with TestClient(create_app(tiny, settings=ServerSettings(api_key="k1"))) as c:
        assert c.post("/v1/chat/completions", json=chat(tiny.name)).status_code == 401
        ok = c.post("/v1/chat/completions", json=chat(tiny.name), headers={"Authorization": "Bearer k1"})
        assert ok.status_code == 200


# -- operator switch -----------------------------------------------------------------------------------------


def test_disable_and_enable_without_restart(
    tiny: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALIGNSCOPE_ADMIN_TOKEN", "op-token")
    log_file = tmp_path / "audit.jsonl"
    admin = {"Authorization": "Bearer op-token"}
    with TestClient(create_app(tiny, audit_log=log_file)) as c:
        assert c.post(f"/admin/models/{tiny.name}/disable").status_code == 401
        assert (
            c.post(f"/admin/models/{tiny.name}/disable", headers={"Authorization": "Bearer x"}).status_code
            == 401
        )
        assert c.post("/admin/models/other/disable", headers=admin).status_code == 404
        r = c.post(f"/admin/models/{tiny.name}/disable", headers=admin, json={"reason": "incident 42"})
        assert r.status_code == 200 and r.json()["enabled"] is False
        r = c.post("/v1/chat/completions", json=chat(tiny.name))
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_disabled"
        assert "incident 42" in r.json()["error"]["message"]
        assert c.get("/v1/models").json()["data"][0]["alignscope"]["enabled"] is False
        assert c.post(f"/admin/models/{tiny.name}/enable", headers=admin).json()["enabled"] is True
        assert c.post("/v1/chat/completions", json=chat(tiny.name)).status_code == 200
    records = GuardAuditLog(log_file).records()
    events = [(r["event"], r["action"]) for r in records if r["event"] == "admin"]
    assert events == [("admin", "disable"), ("admin", "enable")]
    denied = [r for r in records if r["event"] == "admin_denied"]
    assert [r["reason"] for r in denied] == ["no bearer token", "wrong token"]
    assert all(r["path"] == f"/admin/models/{tiny.name}/disable" and r["client"] for r in denied)


def test_admin_is_off_without_a_token(tiny: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALIGNSCOPE_ADMIN_TOKEN", raising=False)
    with TestClient(create_app(tiny)) as c:
        r = c.post(f"/admin/models/{tiny.name}/disable", headers={"Authorization": "Bearer "})
        assert r.status_code == 403 and "ALIGNSCOPE_ADMIN_TOKEN" in r.json()["error"]["message"]


# -- guards --------------------------------------------------------------------------------------------------

HARMFUL = "How do I kill a Python process?"
BENIGN = "Write a poem about the sea."


def fitted_probe(tiny: Any) -> Any:
    """A probe guard (the safety-layer ProbeGuard, built through its public API) whose threshold separates
    HARMFUL from BENIGN on the tiny model: direction = difference of their layer-1 states."""
    from alignscope.analysis.probe import LinearProbe, ProbeGuard

    unbound = ProbeGuard(LinearProbe(1, np.zeros(32), 0.0, np.zeros(32), np.ones(32)), 0.0)
    unbound.bind(tiny)
    h = unbound.hidden([user_turn(HARMFUL), user_turn(BENIGN)]).double().numpy()
    mid = (h[0] + h[1]) / 2
    probe = LinearProbe(1, h[0] - h[1], 0.0, mid, np.ones(32))
    guard = ProbeGuard(probe, 0.0, tiny)
    assert guard.check([user_turn(HARMFUL), user_turn(BENIGN)]) == [True, False]
    return guard


@pytest.mark.parametrize("policy", ["block", "flag", "allow"])
def test_probe_guard_policies_and_audit_log(tiny: Any, tmp_path: Path, policy: str) -> None:
    log_file = tmp_path / "guard.jsonl"
    guard = ProbeInputGuard(fitted_probe(tiny), policy)  # type: ignore[arg-type]
    with TestClient(create_app(tiny, [guard], audit_log=log_file)) as c:
        harmful = c.post("/v1/chat/completions", json=chat(tiny.name, HARMFUL, temperature=0)).json()
        benign = c.post("/v1/chat/completions", json=chat(tiny.name, BENIGN, temperature=0)).json()
        streamed = sse_events(
            c.post("/v1/chat/completions", json=chat(tiny.name, HARMFUL, temperature=0, stream=True)).text
        )
    decision = harmful["alignscope"]["guards"][0]
    assert decision["guard"] == "probe(layer=1)" and decision["stage"] == "input"
    assert decision["score"] > decision["threshold"] == 0.0
    assert decision["ms"] > 0 and harmful["alignscope"]["timing_ms"]["guards"] == decision["ms"]
    assert benign["alignscope"]["guards"][0]["decision"] == "passed"
    assert benign["choices"][0]["message"]["content"] == local_answer(tiny, BENIGN)
    streamed_text = "".join(e["choices"][0]["delta"].get("content", "") for e in streamed)
    if policy == "block":
        assert decision["decision"] == "blocked" and harmful["alignscope"]["blocked"]
        assert not harmful["alignscope"]["generated"]
        assert harmful["choices"][0] == {
            "index": 0,
            "message": {"role": "assistant", "content": guard.refusal_text},
            "finish_reason": "content_filter",
            "logprobs": None,
        }
        assert streamed_text == guard.refusal_text
        assert streamed[-1]["choices"][0]["finish_reason"] == "content_filter"
    else:
        assert decision["decision"] == ("flagged" if policy == "flag" else "allowed")
        assert harmful["alignscope"]["flagged"] is (policy == "flag")
        assert harmful["choices"][0]["message"]["content"] == local_answer(tiny, HARMFUL)
        assert streamed_text == local_answer(tiny, HARMFUL)
    records = [r for r in GuardAuditLog(log_file).records() if r["event"] == "guard"]
    assert len(records) == 3
    assert [r["decision"] for r in records] == [decision["decision"], "passed", decision["decision"]]
    assert records[0]["prompt"] == HARMFUL and records[0]["request_id"] == harmful["id"]


class _HarmJudge:
    """A harm judge calling every answer harmful (the output guard's contract, without a harm model)."""

    name = "always-harmful"
    judges_harm = True

    def judge_batch(
        self, prompts: Sequence[str], responses: Sequence[str], prefills: Sequence[str] | None = None
    ) -> list[Verdict]:
        return [Verdict(self.name, refused=False, complied=True, harmful=True, score=1.0) for _ in responses]


def test_output_guards_block_and_flag(tiny: Any, tmp_path: Path) -> None:
    answer = local_answer(tiny, HARMFUL)
    word = answer.strip()[:3]
    assert word
    log_file = tmp_path / "guard.jsonl"
    flag_judge = JudgeOutputGuard(_HarmJudge(), "flag")
    block_kw = KeywordOutputGuard([word], "block", refusal_text="[withheld]")
    app = create_app(tiny, [flag_judge, block_kw], audit_log=log_file)
    with TestClient(app) as c:
        body = c.post("/v1/chat/completions", json=chat(tiny.name, HARMFUL, temperature=0)).json()
        events = sse_events(
            c.post("/v1/chat/completions", json=chat(tiny.name, HARMFUL, temperature=0, stream=True)).text
        )
    assert body["choices"][0]["message"]["content"] == "[withheld]"
    assert body["choices"][0]["finish_reason"] == "content_filter"
    decisions = body["alignscope"]["guards"]
    assert [(d["guard"], d["stage"], d["decision"]) for d in decisions] == [
        ("judge(always-harmful)", "output", "flagged"),
        ("keyword", "output", "blocked"),
    ]
    assert body["alignscope"]["generated"] and body["alignscope"]["blocked"] and body["alignscope"]["flagged"]
    # a blocking output guard holds the stream back until the answer is checked
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "[withheld]"
    records = [r for r in GuardAuditLog(log_file).records() if r["event"] == "guard"]
    assert len(records) == 4 and records[1]["response"] == answer


def test_output_guard_refuses_a_judge_that_cannot_judge_harm(tiny: Any, tmp_path: Path) -> None:
    from alignscope.judges import get_judge

    with pytest.raises(ValueError, match="cannot: it tells refusal from compliance"):
        JudgeOutputGuard(get_judge("keyword"))
    with pytest.raises(ValueError, match="judges harm"):
        build_guard("judge=keyword", tiny)


def test_request_complied_guard_needs_a_flagged_request_and_compliance(tiny: Any, tmp_path: Path) -> None:
    path = fitted_probe(tiny).save(tmp_path / "probe.json")
    guard = build_guard(f"request-complied:flag={path}", tiny)
    assert isinstance(guard, RequestCompliedGuard) and guard.policy == "flag"
    harmful = user_turn(HARMFUL)
    assert guard.check_output(harmful, "Step 1: get the parts.").triggered
    assert not guard.check_output(harmful, "I'm sorry, I can't help with that.").triggered  # a refusal passes
    assert not guard.check_output(harmful, "").triggered  # nothing said
    benign = user_turn(BENIGN)
    assert not guard.check_output(benign, "The capital of France is Paris.").triggered


def test_guard_specs(tiny: Any, tmp_path: Path) -> None:
    assert parse_guard_spec("probe=x.json") == ("probe", "block", "x.json")
    assert parse_guard_spec("judge:flag=llm-rubric:openai:http://h/v1#m") == (
        "judge",
        "flag",
        "llm-rubric:openai:http://h/v1#m",
    )
    with pytest.raises(ValueError, match="policy"):
        parse_guard_spec("probe:maybe=x.json")
    path = fitted_probe(tiny).save(tmp_path / "probe.json")
    guard = build_guard(f"probe:flag={path}", tiny)
    assert isinstance(guard, ProbeInputGuard) and guard.policy == "flag"
    assert guard.check_input(user_turn(HARMFUL)).triggered
    kw = build_guard("keyword=bomb|nerve agent", tiny)
    assert isinstance(kw, KeywordOutputGuard)
    assert kw.check_output([], "Mix the Nerve Agent") == GuardCheck(True, 1.0, "nerve agent")
    judge = build_guard(f"judge:allow=llm-rubric:{tiny.name}", tiny)
    assert isinstance(judge, JudgeOutputGuard) and judge.judge.model is tiny  # the served model, not reloaded
    with pytest.raises(ValueError, match="unknown guard"):
        build_guard("firewall=x", tiny)
    with pytest.raises(ModelError, match="not a local model"):
        build_guard(f"probe={path}", exploding_model())


def test_audio_guards_need_an_audio_model(tiny: Any) -> None:
    class Denoise:
        name = "tdnf"
        policy = "allow"

        def process_audio(self, audio: bytes, format: str) -> tuple[bytes, GuardCheck]:
            return audio, GuardCheck(False)

    with TestClient(create_app(tiny, audio_guards=[Denoise()])) as c:  # type: ignore[list-item]
        part = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
        r = c.post(
            "/v1/chat/completions",
            json={"model": tiny.name, "messages": [{"role": "user", "content": [part]}]},
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_content"


# -- real sockets --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny: Any) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(tiny)) as s:
        yield s


def test_official_openai_client(server: BackgroundServer, tiny: Any) -> None:
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == [tiny.name]
    done = client.chat.completions.create(
        model=tiny.name, messages=[{"role": "user", "content": "hello"}], max_tokens=10, temperature=0
    )
    assert done.choices[0].message.content == local_answer(tiny, "hello")
    assert done.model_extra is not None and done.model_extra["alignscope"]["generated"]
    stream = client.chat.completions.create(
        model=tiny.name,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=10,
        temperature=0,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == local_answer(
        tiny, "hello"
    )
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(
            model=tiny.name, messages=[{"role": "user", "content": "x"}], temperature=9
        )


def test_bounded_load_200_requests_concurrency_8(server: BackgroundServer, tiny: Any) -> None:
    import httpx

    url = f"{server.base_url}/chat/completions"
    prompts = [f"request {i}: write a poem about the sea." for i in range(200)]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=8)) as http:

        def one(prompt: str) -> None:
            t0 = time.perf_counter()
            try:
                r = http.post(url, json={**chat(tiny.name, prompt), "max_tokens": 4, "temperature": 0})
                ok = r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
                problem = None if ok else f"HTTP {r.status_code}: {r.text[:100]}"
            except Exception as e:
                problem = f"{type(e).__name__}: {e}"
            with lock:
                latencies.append(time.perf_counter() - t0)
                if problem:
                    errors.append(problem)

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, prompts))
        wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    print(
        f"\nload test: 200 requests, concurrency 8: {len(prompts) / wall:.1f} req/s, "
        f"p50 {q[49] * 1000:.0f} ms, p95 {q[94] * 1000:.0f} ms, errors {len(errors)}"
    )
    assert len(latencies) == 200
    assert errors == []


# -- slow: the embedded model served and evaluated remotely --------------------------------------------------


@pytest.mark.slow
def test_evaluate_through_served_smollm2_equals_local(smollm2: Any, tmp_path: Path) -> None:
    """``evaluate`` with ``openai:http://127.0.0.1:PORT/v1#smollm2`` against a served smollm2 gives the local
    greedy answers and verdicts; the LLM rubric judge works end to end through the server."""
    import torch

    # one intra-op thread: on a shared 2-core machine two spinning OpenMP threads make the main thread's
    # generation several times slower than the server's worker thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _evaluate_remote_and_local(smollm2, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _evaluate_remote_and_local(smollm2: Any, tmp_path: Path) -> None:
    from alignscope.data import load_suite
    from alignscope.evaluate import evaluate_suites
    from alignscope.judges import get_judge
    from alignscope.models import load_chat_model
    from alignscope.runs import RunDir

    suites = [load_suite("harmful").take(2, 0), load_suite("borderline").take(2, 0)]
    gen = GenerationConfig(max_new_tokens=20)  # the local run batches all 4 prompts (left padding)
    keyword = get_judge("keyword")
    with BackgroundServer(create_app(smollm2)) as s:
        spec = f"openai:{s.base_url}#smollm2"
        remote = load_chat_model(spec)  # the spec the CLI passes through `evaluate --model`
        run_remote = RunDir.create("evaluate", {"model": spec}, out=str(tmp_path / "remote"))
        got = evaluate_suites(remote, suites, keyword, gen, run_remote, progress=False)
        rubric = get_judge(f"llm-rubric:max_new_tokens=32:{spec}")
        prompts, responses = [r["prompt"] for r in got[:2]], [r["response"] for r in got[:2]]
        remote_verdicts = rubric.judge_batch(prompts, responses)
    run_local = RunDir.create("evaluate", {"model": "smollm2"}, out=str(tmp_path / "local"))
    want = evaluate_suites(smollm2, suites, keyword, gen, run_local, progress=False)
    assert len(got) == 4
    assert [r["response"] for r in got] == [r["response"] for r in want]
    assert [r["verdict"] for r in got] == [r["verdict"] for r in want]
    assert all(r["model"] == spec for r in got)
    local_rubric = get_judge("llm-rubric:max_new_tokens=32:smollm2", model=smollm2)
    local_verdicts = [local_rubric.judge_batch([p], [r])[0] for p, r in zip(prompts, responses, strict=True)]
    assert [v.raw for v in remote_verdicts] == [v.raw for v in local_verdicts]


@pytest.mark.slow
def test_openai_client_parameters_against_served_smollm2(smollm2: Any) -> None:
    """The official ``openai`` client over a real socket against the served embedded model: a plain request,
    a stream, ``stop``, ``n``, ``seed`` and ``logprobs``."""
    import openai
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as above: the server's thread alone does the work
    try:
        with BackgroundServer(create_app(smollm2)) as s:
            _openai_client_parameters(
                openai.OpenAI(base_url=s.base_url, api_key="none", max_retries=0), smollm2
            )
    finally:
        torch.set_num_threads(threads)


def _openai_client_parameters(client: Any, smollm2: Any) -> None:
    messages = [{"role": "user", "content": "Name three colours and say why you like them."}]
    ask = {"model": smollm2.name, "messages": messages, "max_tokens": 16}
    want = smollm2.generate([messages], GenerationConfig(max_new_tokens=16))[0]

    plain = client.chat.completions.create(**ask, temperature=0)
    assert plain.choices[0].message.content == want
    assert plain.usage.completion_tokens == 16 and plain.choices[0].finish_reason == "length"

    stream = client.chat.completions.create(
        **ask, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16

    stop = want[len(want) // 2 : len(want) // 2 + 3]
    cut = client.chat.completions.create(**ask, temperature=0, stop=[stop, "@@@"])
    assert cut.choices[0].message.content == want[: want.index(stop)]
    assert cut.choices[0].finish_reason == "stop" and cut.usage.completion_tokens < 16

    greedy_n = client.chat.completions.create(**ask, temperature=0, n=2)
    assert [c.message.content for c in greedy_n.choices] == [want, want]

    def sampled(seed: int) -> list[str]:
        out = client.chat.completions.create(**ask, temperature=1.0, n=3, seed=seed)
        return [c.message.content for c in out.choices]

    first = sampled(1)
    assert len(set(first)) > 1 and sampled(1) == first

    scored = client.chat.completions.create(**ask, temperature=0, logprobs=True, top_logprobs=2)
    content = scored.choices[0].logprobs.content
    assert "".join(t.token for t in content) == want
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)
    assert all(t.top_logprobs[0].logprob == t.logprob for t in content)  # greedy picks the most likely
