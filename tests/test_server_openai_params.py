"""The OpenAI chat-completions parameters clients send: ``stop``, ``n``, ``seed``, ``presence_penalty`` /
``frequency_penalty``, ``logprobs`` / ``top_logprobs``, ``user``, ``stream_options``, ``response_format``, and
the 400s for what is not supported. On a tiny random model with FastAPI's TestClient."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from alignscope.models import GenerationConfig, user_turn
from alignscope.server import GuardAuditLog, ServerSettings, create_app
from alignscope.server.decoding import PresenceFrequencyPenalty, RowSampler, SampledRow, held_back
from alignscope.testing import ScriptedModel, tiny_local_model

URL = "/v1/chat/completions"


@pytest.fixture(scope="module")
def tiny() -> Any:
    return tiny_local_model(seed=0)


@pytest.fixture(scope="module")
def client(tiny: Any) -> Iterator[TestClient]:
    with TestClient(create_app(tiny)) as c:
        yield c


def chat(model: Any, prompt: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "model": model.name,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 20,
        "temperature": 0,
        **extra,
    }


def events(text: str) -> list[Any]:
    lines = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(e) for e in lines[:-1]]


def stream_texts(text: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for e in events(text):
        for c in e["choices"]:
            out[c["index"]] = out.get(c["index"], "") + (c["delta"].get("content") or "")
    return out


def local(tiny: Any, prompt: str = "hello", max_new_tokens: int = 20) -> str:
    return str(tiny.generate([user_turn(prompt)], GenerationConfig(max_new_tokens=max_new_tokens))[0])


# -- stop ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_list", [False, True])
def test_stop_cuts_before_the_stop_string_and_stops_generating(
    client: TestClient, tiny: Any, as_list: bool
) -> None:
    full = local(tiny)
    assert "org" in full and full.index("org") > 0
    want = full[: full.index("org")]
    stop: str | list[str] = ["never-there", "org"] if as_list else "org"
    r = client.post(URL, json=chat(tiny, stop=stop))
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == want and choice["finish_reason"] == "stop"
    assert r.json()["usage"]["completion_tokens"] < 20  # generation stopped at the stop string
    streamed = client.post(URL, json=chat(tiny, stop=stop, stream=True))
    assert stream_texts(streamed.text)[0] == want
    final = [e for e in events(streamed.text) if e["choices"] and e["choices"][0]["finish_reason"]]
    assert [e["choices"][0]["finish_reason"] for e in final] == ["stop"]


def test_stop_that_never_occurs_changes_nothing(client: TestClient, tiny: Any) -> None:
    r = client.post(URL, json=chat(tiny, stop=["zzzz"])).json()
    assert r["choices"][0]["message"]["content"] == local(tiny)
    assert r["choices"][0]["finish_reason"] == "length"


def test_streaming_holds_back_a_possible_stop_string() -> None:
    assert held_back("abc or", ["org"]) == 2
    assert held_back("abc o", ["org", "xo"]) == 1
    assert held_back("abc", ["org"]) == 0


# -- n and seed ----------------------------------------------------------------------------------------------------


def test_greedy_n_gives_identical_choices(client: TestClient, tiny: Any) -> None:
    r = client.post(URL, json=chat(tiny, n=3)).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in r["choices"]] == [local(tiny)] * 3
    single = client.post(URL, json=chat(tiny)).json()["usage"]["completion_tokens"]
    assert r["usage"]["completion_tokens"] == 3 * single


def test_sampled_n_differ_and_repeat_under_a_seed(client: TestClient, tiny: Any) -> None:
    def choices(seed: int, **extra: Any) -> list[str]:
        body = chat(tiny, n=3, temperature=1.0, seed=seed, max_tokens=10, **extra)
        return [c["message"]["content"] for c in client.post(URL, json=body).json()["choices"]]

    first = choices(11)
    assert len(set(first)) > 1  # the choices differ
    assert choices(11) == first  # the seed reproduces them
    assert choices(12) != first
    # streamed choices are the same draws
    body = chat(tiny, n=3, temperature=1.0, seed=11, max_tokens=10, stream=True)
    assert stream_texts(client.post(URL, json=body).text) == dict(enumerate(first))


def test_row_sampler_draws_from_the_warped_distribution() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    n = 4000
    ids = torch.zeros((n, 1), dtype=torch.long)

    def draws(temperature: float, top_k: int = 0) -> torch.Tensor:
        # n rows with the same distribution, each with its own fixed seed: the frequencies are deterministic
        rows = [SampledRow(i, temperature, 1.0, top_k, seed=i) for i in range(n)]
        picked = torch.argmax(RowSampler(rows, torch.device("cpu"))(ids, logits.repeat(n, 1)), dim=-1)
        return torch.bincount(picked, minlength=4) / n

    assert torch.allclose(draws(1.0), torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    sharpened = torch.softmax(logits / 0.5, dim=-1)
    assert torch.allclose(draws(0.5), sharpened, atol=0.03)
    top2 = draws(1.0, top_k=2)
    assert top2[2:].sum() == 0 and torch.allclose(top2[:2], torch.tensor([0.625, 0.375]), atol=0.03)


def test_seed_is_reported(client: TestClient, tiny: Any) -> None:
    r = client.post(URL, json=chat(tiny, temperature=0.8, seed=3)).json()
    assert r["alignscope"]["seed"] == 3 and "seed=3" in r["alignscope"]["decoding"]


# -- presence / frequency penalties ------------------------------------------------------------------------------


def test_penalty_processor_follows_openais_formula() -> None:
    # prompt (width 2) is not counted; generated: 5 twice, 7 once
    input_ids = torch.tensor([[5, 5, 5, 5, 7], [1, 2, 3, 3, 3]])
    scores = torch.zeros((2, 10))
    out = PresenceFrequencyPenalty(2, torch.tensor([0.5, 0.0]), torch.tensor([1.5, 0.0]))(input_ids, scores)
    want = torch.zeros((2, 10))
    want[0, 5] = -(2 * 1.5 + 0.5)
    want[0, 7] = -(1 * 1.5 + 0.5)
    assert torch.equal(out, want)  # row 1 has no penalty: unchanged


def reference_penalised(
    tiny: Any, prompt: str, presence: float, frequency: float, max_new_tokens: int
) -> tuple[str, list[int]]:
    """Greedy decoding written out step by step, with OpenAI's penalty on the generated tokens."""
    ids = tiny.encode_prompt(user_turn(prompt))
    eos = tiny.tokenizer.eos_token_id
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = tiny.model(torch.tensor([ids + generated])).logits[0, -1].float()
            for token, count in Counter(generated).items():
                logits[token] -= count * frequency + presence
            generated.append(int(torch.argmax(logits)))
            if generated[-1] == eos:
                break
    return str(tiny.tokenizer.decode(generated, skip_special_tokens=True)), generated


@pytest.mark.parametrize(("presence", "frequency"), [(0.0, 1.5), (1.0, 0.0), (0.5, 2.0), (-0.5, 0.0)])
def test_penalties_equal_a_step_by_step_reference(
    client: TestClient, tiny: Any, presence: float, frequency: float
) -> None:
    want, ids = reference_penalised(tiny, "hello", presence, frequency, 20)
    if presence > 0 or frequency > 0:
        assert want != local(tiny)  # the penalty changes this answer (it repeats tokens without one)
    r = client.post(URL, json=chat(tiny, presence_penalty=presence, frequency_penalty=frequency))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == want
    assert r.json()["usage"]["completion_tokens"] == len(ids)


def test_penalties_out_of_range_are_400(client: TestClient, tiny: Any) -> None:
    r = client.post(URL, json=chat(tiny, presence_penalty=2.5))
    assert r.status_code == 400 and "presence_penalty" in r.json()["error"]["message"]


# -- logprobs ------------------------------------------------------------------------------------------------------


def greedy_ids(tiny: Any, prompt: str, n: int) -> list[int]:
    ids = torch.tensor([tiny.encode_prompt(user_turn(prompt))])
    out = tiny.model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False
    )
    return [int(t) for t in out[0, ids.shape[1] :] if int(t) != tiny.tokenizer.eos_token_id]


def test_logprobs_are_the_models_and_shaped_as_openai(client: TestClient, tiny: Any) -> None:
    r = client.post(URL, json=chat(tiny, "Sure", logprobs=True, top_logprobs=3, max_tokens=8))
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["logprobs"]["content"]
    ids = greedy_ids(tiny, "Sure", 8)
    want = tiny.response_logprobs([user_turn("Sure")], [ids])[0].tolist()
    assert len(content) == len(ids) == 8
    for entry, token, lp in zip(content, ids, want, strict=True):
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["token"] == tiny.tokenizer.decode([token])
        assert entry["bytes"] == list(entry["token"].encode("utf-8"))
        assert entry["logprob"] == pytest.approx(lp, abs=1e-4)
        tops = entry["top_logprobs"]
        assert len(tops) == 3 and [t["logprob"] for t in tops] == sorted(
            (t["logprob"] for t in tops), reverse=True
        )
        assert (
            tops[0]["token"] == entry["token"] and tops[0]["logprob"] == entry["logprob"]
        )  # greedy: the argmax
    # streamed: the same entries, spread over the content chunks
    streamed = client.post(
        URL, json=chat(tiny, "Sure", logprobs=True, top_logprobs=3, max_tokens=8, stream=True)
    )
    entries = [
        x
        for e in events(streamed.text)
        if e["choices"] and e["choices"][0]["logprobs"]
        for x in e["choices"][0]["logprobs"]["content"]
    ]
    assert entries == content


def test_logprobs_cut_with_the_text_at_a_stop_string(client: TestClient, tiny: Any) -> None:
    r = client.post(URL, json=chat(tiny, logprobs=True, stop="org")).json()
    content = r["choices"][0]["logprobs"]["content"]
    text = r["choices"][0]["message"]["content"]
    assert 0 < len(content) < r["usage"]["completion_tokens"]
    assert "org" not in "".join(e["token"] for e in content)
    assert text.startswith(content[0]["token"].rstrip("\ufffd"))


def test_no_logprobs_unless_asked(client: TestClient, tiny: Any) -> None:
    assert client.post(URL, json=chat(tiny)).json()["choices"][0]["logprobs"] is None
    r = client.post(URL, json=chat(tiny, top_logprobs=2))
    assert r.status_code == 400 and "logprobs" in r.json()["error"]["message"]


# -- user, stream_options, response_format --------------------------------------------------------------------------


def test_user_is_written_to_the_audit_log(tiny: Any, tmp_path: Path) -> None:
    log_file = tmp_path / "audit.jsonl"
    with TestClient(create_app(tiny, audit_log=log_file)) as c:
        r = c.post(URL, json=chat(tiny, user="red-team-7"))
        bad = c.post(URL, json=chat(tiny, user="red-team-7", response_format={"type": "json_object"}))
    records = [x for x in GuardAuditLog(log_file).records() if x["event"] == "request"]
    assert [(x["user"], x["status"]) for x in records] == [("red-team-7", 200), ("red-team-7", 400)]
    assert records[0]["request_id"] == r.json()["id"] and records[0]["finish_reasons"] == ["length"]
    assert "json_object" in records[1]["error"] and bad.status_code == 400


def test_stream_usage_only_on_request(client: TestClient, tiny: Any) -> None:
    plain = events(client.post(URL, json=chat(tiny, stream=True)).text)
    assert all(e["choices"] for e in plain) and "usage" not in plain[-1]
    off = events(client.post(URL, json=chat(tiny, stream=True, stream_options={"include_usage": False})).text)
    assert all(e["choices"] for e in off)
    on = events(client.post(URL, json=chat(tiny, stream=True, stream_options={"include_usage": True})).text)
    assert on[-1]["choices"] == [] and on[-1]["usage"]["completion_tokens"] == 20


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format type 'json_object'"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "'json_schema'"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "'tools'"),
        ({"logit_bias": {"5": 10}}, "'logit_bias'"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"stop": ["ok", ""]}, "stop strings must not be empty"),
        ({"stop": [f"s{i}" for i in range(17)]}, "at most 16"),
        ({"n": 9}, "n"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"user": 5}, "user"),
    ],
)
def test_unsupported_parameters_are_named_in_a_400(
    client: TestClient, tiny: Any, extra: dict[str, Any], needle: str
) -> None:
    r = client.post(URL, json=chat(tiny, **extra))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error"


def test_text_response_format_and_garaks_default_request(client: TestClient, tiny: Any) -> None:
    assert client.post(URL, json=chat(tiny, response_format={"type": "text"})).status_code == 200
    # what garak 0.17's openai.OpenAICompatible generator sends with its default options
    garak = {
        "model": tiny.name,
        "messages": [{"role": "user", "content": "The quick brown fox jumps over the lazy dog"}],
        "n": 1,
        "max_tokens": 150,
        "temperature": 0.7,
        "top_p": 1.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "stop": ["#", ";"],
    }
    r = client.post(URL, json=garak)
    assert r.status_code == 200, r.text
    assert not {"#", ";"} & set(r.json()["choices"][0]["message"]["content"])


# -- models that are not local ---------------------------------------------------------------------------------------


def reverser() -> ScriptedModel:
    """A ChatModel that is not local: answers the prompt reversed."""
    return ScriptedModel(lambda prompt: prompt[::-1], name="reverser")


def test_other_models_honour_stop_and_n_and_name_what_they_cannot_do() -> None:
    with TestClient(create_app(reverser(), settings=ServerSettings(default_temperature=0))) as c:
        model = reverser()
        r = c.post(URL, json=chat(model, "abcdef", stop=["c"], n=2)).json()
        assert [x["message"]["content"] for x in r["choices"]] == ["fed", "fed"]
        assert r["choices"][0]["finish_reason"] == "stop"
        for extra in ({"logprobs": True}, {"presence_penalty": 0.5}, {"frequency_penalty": 1.0}):
            bad = c.post(URL, json=chat(model, **extra))
            assert bad.status_code == 400 and "needs a local model" in bad.json()["error"]["message"]
            assert bad.json()["error"]["param"] == next(iter(extra))
