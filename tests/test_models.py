"""Models: spec resolution errors, chat formatting with prefill, batched generation, white-box access."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alignscope.models import GenerationConfig, ModelError, load_model, user_turn
from alignscope.testing import tiny_local_model


def test_missing_model_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does-not-exist"):
        load_model(str(tmp_path / "does-not-exist"))
    with pytest.raises(ModelError, match=r"nope\.gguf"):
        load_model(str(tmp_path / "nope.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"no config\.json"):
        load_model(str(tmp_path / "empty"))


def test_model_too_big_for_memory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import alignscope.models.loading as loading

    model = tiny_local_model()
    model.model.save_pretrained(tmp_path / "m")
    model.tokenizer.save_pretrained(tmp_path / "m")

    class Mem:
        available = 1000  # bytes: far below the tiny model's weights

    monkeypatch.setattr(loading.psutil, "virtual_memory", lambda: Mem())
    with pytest.raises(ModelError, match="GiB"):
        load_model(str(tmp_path / "m"), device="cpu")


def test_saved_directory_round_trips(tmp_path: Path) -> None:
    model = tiny_local_model()
    model.model.save_pretrained(tmp_path / "m")
    model.tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"), device="cpu")
    convo = [user_turn("hello")]
    cfg = GenerationConfig(max_new_tokens=6)
    assert loaded.generate(convo, cfg) == model.generate(convo, cfg)


def test_prefill_goes_after_assistant_header_without_end_of_turn() -> None:
    model = tiny_local_model()
    ids = model.encode_prompt([{"role": "user", "content": "hi"}], prefill="Sure, here")
    text = model.tokenizer.decode(ids)
    assert text.endswith("<|im_start|>assistant\nSure, here")
    assert text.count("<|im_end|>") == 1  # only after the user turn


def test_plain_template_used_on_request() -> None:
    from alignscope.models.local import LocalModel

    m = tiny_local_model()
    plain = LocalModel(m.model, m.tokenizer, "plain", template="plain")
    assert plain.format_chat(user_turn("hi")).endswith("### Instruction:\nhi\n\n### Response:\n")
    assert plain.template_name == "plain instruction template"


def test_batched_generation_matches_one_at_a_time() -> None:
    model = tiny_local_model(seed=3)
    convos = [user_turn(p) for p in ["a", "a much longer prompt than the first", "mid length one"]]
    cfg = GenerationConfig(max_new_tokens=8, batch_size=3)
    batched = model.generate(convos, cfg)
    single = [model.generate([c], cfg.with_(batch_size=1))[0] for c in convos]
    assert batched == single


def test_sampled_generation_is_seeded() -> None:
    model = tiny_local_model(seed=1)
    convos = [user_turn("tell me")] * 2
    cfg = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.5, seed=7)
    assert model.generate(convos, cfg) == model.generate(convos, cfg)
    assert model.generate(convos, cfg) != model.generate(convos, cfg.with_(seed=8))


def test_response_logprobs_match_a_manual_forward() -> None:
    model = tiny_local_model(seed=2)
    convo = [user_turn("question")]
    response = "Sure, here is"
    lp = model.response_logprobs(convo, [response])[0]
    prompt = model.encode_prompt(convo[0])
    resp = model.response_ids(response)
    ids = torch.tensor([prompt + resp])
    with torch.no_grad():
        logits = model.model(ids).logits[0]
    manual = torch.log_softmax(logits[len(prompt) - 1 : -1], -1).gather(-1, torch.tensor(resp)[:, None])[:, 0]
    assert torch.allclose(lp, manual, atol=1e-5)


def test_hidden_states_ignore_left_padding() -> None:
    model = tiny_local_model(seed=4)
    convos = [user_turn("short"), user_turn("a far longer prompt with many more tokens in it")]
    both = model.last_token_hidden_states(convos, batch_size=2)
    alone = model.last_token_hidden_states(convos[:1], batch_size=1)
    assert both.shape == (2, model.num_layers, model.model.config.hidden_size)
    assert torch.allclose(both[0], alone[0], atol=1e-4)


SYSTEM = "You are a careful assistant who answers in full sentences and checks every fact twice."


def test_shared_prompt_start_is_run_once_with_the_same_outputs() -> None:
    """Prompts that share a system turn: its KV cache is computed once for the batch; the greedy outputs equal
    the unshared batch and one-at-a-time generation, and the batch's first pass sees only the rest."""
    model = tiny_local_model(seed=3)
    convos = [user_turn(p, SYSTEM) for p in ["a", "a much longer prompt than the first", "mid length one"]]
    cfg = GenerationConfig(max_new_tokens=8, batch_size=3)
    encoded = [model.encode_prompt(c) for c in convos]
    shared = model._shared_prefix(encoded)
    assert shared >= model.min_shared_prefix
    lengths: list[int] = []
    hook = model.model.register_forward_pre_hook(
        lambda _m, _a, kw: lengths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        batched = model.generate(convos, cfg)
    finally:
        hook.remove()
    assert lengths[0] == shared  # the prefix pass, batch 1
    assert lengths[1] == max(len(x) for x in encoded) - shared
    model.min_shared_prefix = 0
    plain = model.generate(convos, cfg)
    single = [model.generate([c], cfg.with_(batch_size=1))[0] for c in convos]
    assert batched == plain == single


def test_onednn_generation_gives_torchs_greedy_outputs() -> None:
    from alignscope.models.fast_linear import onednn_linear_available

    if not onednn_linear_available():
        pytest.skip("torch built without oneDNN's linear")
    model = tiny_local_model(seed=8)
    convos = [user_turn(p, SYSTEM) for p in ["one", "two words", "and three words", "four words in all"]]
    cfg = GenerationConfig(max_new_tokens=12, batch_size=4)
    model.fp32_linear = "onednn"
    fast = model.generate(convos, cfg)
    model.fp32_linear = "torch"
    assert fast == model.generate(convos, cfg)
