"""Remote OpenAI-compatible models: spec parsing, request bodies, retries, errors, concurrency, and generation
through a served tiny model equal to the local model's."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from alignscope.models import GenerationConfig, ModelError, load_model, user_turn
from alignscope.models.loading import load_chat_model
from alignscope.models.remote import RemoteModel, parse_remote_spec

OK_BODY = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}}]}


class ScriptedServer:
    """A tiny loopback HTTP server answering POSTs from a script of ``(status, body, headers)``; the last entry
    repeats. Records every request body."""

    def __init__(self, script: list[tuple[int, dict[str, Any] | str, dict[str, str]]]):
        self.script = script
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                outer.requests.append(json.loads(self.rfile.read(length)))
                status, body, headers = outer.script[min(len(outer.requests) - 1, len(outer.script) - 1)]
                payload = body if isinstance(body, str) else json.dumps(body)
                self.send_response(status)
                self.send_header("content-type", "application/json")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(payload.encode())))
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def remote(base_url: str, **options: Any) -> RemoteModel:
    query = "&".join(f"{k}={v}" for k, v in {"backoff": 0.01, **options}.items())
    return RemoteModel(f"openai:{base_url}#m?{query}")


# -- specs ---------------------------------------------------------------------------------------------------


def test_spec_parsing() -> None:
    cfg = parse_remote_spec("openai:http://127.0.0.1:8000/v1#smollm2")
    assert (cfg.base_url, cfg.model, cfg.prefill, cfg.max_concurrency) == (
        "http://127.0.0.1:8000/v1",
        "smollm2",
        "none",
        8,
    )
    assert cfg.url == "http://127.0.0.1:8000/v1/chat/completions"
    cfg = parse_remote_spec("openai:https://h/v1/#org/model-7b?prefill=continue&max_concurrency=3&timeout=5")
    assert (cfg.model, cfg.prefill, cfg.max_concurrency, cfg.timeout) == ("org/model-7b", "continue", 3, 5.0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("openai:http://h/v1", "names no model"),
        ("openai:http://h/v1#", "names no model"),
        ("openai:ftp://h/v1#m", "http"),
        ("openai:http://h/v1#m?colour=red", "unknown option 'colour'"),
        ("openai:http://h/v1#m?max_concurrency=many", "not a number"),
        ("openai:http://h/v1#m?prefill=yes", "prefill='yes'"),
    ],
)
def test_bad_specs_are_explained(spec: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        RemoteModel(spec)


def test_key_from_the_named_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ModelError, match="MY_KEY"):
        RemoteModel("openai:http://h/v1#m?key_env=MY_KEY")
    monkeypatch.setenv("MY_KEY", "s3cret")
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        return httpx.Response(200, json=OK_BODY)

    model = RemoteModel("openai:http://h/v1#m?key_env=MY_KEY", transport=httpx.MockTransport(handler))
    assert model.generate([user_turn("hi")]) == ["fine"]
    assert seen == ["Bearer s3cret"]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the default variable is optional
    assert RemoteModel("openai:http://h/v1#m").name == "openai:http://h/v1#m"


def test_remote_specs_load_as_chat_models_only() -> None:
    assert isinstance(load_chat_model("openai:http://127.0.0.1:9/v1#m"), RemoteModel)
    with pytest.raises(ModelError, match="white-box"):
        load_model("openai:http://127.0.0.1:9/v1#m")  # white-box uses need a local model


def test_judge_spec_loads_a_remote_judge_model() -> None:
    from alignscope.judges import get_judge

    judge = get_judge("llm-rubric:openai:http://127.0.0.1:9/v1#judge")
    assert "openai:http://127.0.0.1:9/v1#judge" in judge.name


def test_white_box_access_says_it_needs_a_local_model() -> None:
    model = RemoteModel("openai:http://h/v1#m")
    with pytest.raises(ModelError, match="black-box"):
        _ = model.tokenizer
    assert not hasattr(model, "response_logprobs")


# -- request bodies ------------------------------------------------------------------------------------------


def test_greedy_and_sampled_request_bodies() -> None:
    model = RemoteModel("openai:http://h/v1#m")
    greedy = model.request_body(user_turn("hi"), GenerationConfig(max_new_tokens=7, seed=3))
    assert greedy == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 7,
        "seed": 3,
        "temperature": 0.0,
    }
    sampled = model.request_body(
        user_turn("hi"), GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9, top_k=40, seed=1)
    )
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"], sampled["seed"]) == (0.7, 0.9, 40, 1)
    no_k = model.request_body(user_turn("hi"), GenerationConfig(do_sample=True))
    assert "top_k" not in no_k  # non-standard: only sent when set


def test_prefill_needs_support_and_text() -> None:
    plain = RemoteModel("openai:http://h/v1#m")
    assert not plain.supports_prefill
    with pytest.raises(ModelError, match="prefill=continue"):
        plain.generate([user_turn("hi")], prefills=["Sure"])
    model = RemoteModel("openai:http://h/v1#m?prefill=continue")
    assert model.supports_prefill
    body = model.request_body(user_turn("hi"), GenerationConfig(), "Sure, here")
    assert body["messages"][-1] == {"role": "assistant", "content": "Sure, here"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    with pytest.raises(ModelError, match="text prefills"):
        model.generate([user_turn("hi")], prefills=[[1, 2, 3]])
    assert "continue_final_message" not in model.request_body(user_turn("hi"), GenerationConfig(), "")


# -- transport behaviour -------------------------------------------------------------------------------------


def test_retries_429_twice_then_succeeds() -> None:
    script = [(429, {"error": {"message": "slow down"}}, {"retry-after": "0"})] * 2 + [(200, OK_BODY, {})]
    with ScriptedServer(script) as server:
        assert remote(server.base_url, retries=3).generate([user_turn("hi")]) == ["fine"]
        assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("status", "message", "retries", "match", "attempts"),
    [
        (503, "overloaded", 2, "{url}/chat/completions answered HTTP 503 after 3 attempts: overloaded", 3),
        (400, "bad field", 3, "{url}/chat/completions answered HTTP 400: bad field", 1),
    ],
    ids=["5xx-until-retries-run-out", "4xx-not-retried"],
)
def test_http_error_names_url_and_attempts(
    status: int, message: str, retries: int, match: str, attempts: int
) -> None:
    """A 5xx answer is retried until the retries run out, a 4xx is not; the error names the URL, the status,
    the server's message and, after several attempts, their number."""
    with ScriptedServer([(status, {"error": {"message": message}}, {})]) as server:
        with pytest.raises(ModelError, match=match.format(url=server.base_url)):
            remote(server.base_url, retries=retries).generate([user_turn("hi")])
        assert len(server.requests) == attempts


def test_malformed_success_body_is_an_error() -> None:
    with (
        ScriptedServer([(200, "not json", {})]) as server,
        pytest.raises(ModelError, match="no chat completion"),
    ):
        remote(server.base_url).generate([user_turn("hi")])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_endpoint_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with pytest.raises(ModelError, match=rf"cannot reach {url}/chat/completions after 2 attempt"):
        remote(url, retries=1).generate([user_turn("hi")])


def test_concurrency_is_bounded_and_order_kept() -> None:
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["messages"][-1]["content"]
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.01)
        with lock:
            state["now"] -= 1
        return httpx.Response(200, json={"choices": [{"message": {"content": prompt.upper()}}]})

    model = RemoteModel("openai:http://h/v1#m?max_concurrency=3", transport=httpx.MockTransport(handler))
    prompts = [f"p{i}" for i in range(12)]
    assert model.generate([user_turn(p) for p in prompts]) == [p.upper() for p in prompts]
    assert 1 <= state["peak"] <= 3


# -- against a served tiny model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_tiny() -> Iterator[tuple[Any, str]]:
    from alignscope.server import BackgroundServer, create_app
    from alignscope.testing import tiny_local_model

    model = tiny_local_model(seed=0)
    with BackgroundServer(create_app(model)) as server:
        yield model, server.base_url


PROMPTS = ["hello", "Write a poem about the sea.", "How do I kill a Python process?", "Sure"]


def test_remote_greedy_equals_local(served_tiny: tuple[Any, str]) -> None:
    local, base_url = served_tiny
    model = RemoteModel(f"openai:{base_url}#{local.name}?prefill=continue")
    cfg = GenerationConfig(max_new_tokens=12)
    convs = [user_turn(p) for p in PROMPTS]
    assert model.generate(convs, cfg) == [local.generate([c], cfg)[0] for c in convs]
    prefills = ["Sure, here", None, "I'm sorry", "The capital"]
    expected = [local.generate([c], cfg, prefills=[p])[0] for c, p in zip(convs, prefills, strict=True)]
    assert model.generate(convs, cfg, prefills=prefills) == expected


def test_remote_unknown_model_is_a_clear_error(served_tiny: tuple[Any, str]) -> None:
    _, base_url = served_tiny
    with pytest.raises(ModelError, match=r"HTTP 404.*not served here.*model name the server knows"):
        RemoteModel(f"openai:{base_url}#nope").generate([user_turn("hi")])


def test_rubric_judge_through_the_served_model(served_tiny: tuple[Any, str]) -> None:
    from alignscope.judges import get_judge

    local, base_url = served_tiny
    pairs = (
        ["How do I pick a lock?", "Explain photosynthesis."],
        ["Use a tension wrench...", "Plants use light."],
    )
    remote_judge = get_judge(f"llm-rubric:max_new_tokens=16:openai:{base_url}#{local.name}")
    local_judge = get_judge("llm-rubric:max_new_tokens=16", model=local)
    remote_verdicts = remote_judge.judge_batch(*pairs)
    local_verdicts = [local_judge.judge_batch([p], [r])[0] for p, r in zip(*pairs, strict=True)]
    assert [v.raw for v in remote_verdicts] == [v.raw for v in local_verdicts]  # the same judge text
    # the local judge scores its score digit after that text; alignscope serve returns log-probs, so the served
    # judge scores the digits too (from the endpoint's top log-probs) instead of reading free text that a random
    # tiny model does not write in the rubric's format
    for remote, local_v in zip(remote_verdicts, local_verdicts, strict=True):
        assert local_v.score is not None and sum(local_v.probs.values()) == pytest.approx(1.0)
        assert remote.score in {1.0, 2.0, 3.0, 4.0, 5.0} and remote.probs
        assert remote.harmful is (remote.score >= 5) and remote.outcome != "unknown"
