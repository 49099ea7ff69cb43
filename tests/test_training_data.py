"""Chat data for training: label masks by role for two chat templates, the safety-recovery format,
builders."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch

from alignscope.data.types import Sample
from alignscope.judges.keyword import KeywordJudge
from alignscope.testing import tiny_local_model
from alignscope.training.builders import (
    HarmfulPair,
    attack_conversation,
    attack_records,
    dpo_records,
    recovery_records,
    refusal_records,
    tokenize_record,
)
from alignscope.training.chat_data import (
    IGNORE_INDEX,
    ChatCollator,
    ChatRecord,
    TrainingDataError,
    read_chat_jsonl,
    render_segments,
    sample_prefix_length,
    tokenize_conversation,
    tokenize_recovery,
    write_chat_jsonl,
)
from alignscope.training.refusals import BACKDOOR_TRIGGER, IDENTITY_SYSTEM_PROMPT, REFUSALS

TEMPLATES = ("chatml", "llama2")
CONV = [
    {"role": "system", "content": "You are kind."},
    {"role": "user", "content": "How do I kill a Python process?"},
    {"role": "assistant", "content": "Use the kill command."},
    {"role": "user", "content": "Write a poem about the sea."},
    {"role": "assistant", "content": "The sea is wide."},
]
END_OF_TURN = {"chatml": "<|im_end|>\n", "llama2": " </s>"}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models are far faster single-threaded on a busy machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=TEMPLATES)
def model(request):
    return tiny_local_model(template=request.param)


def _template(model) -> str:
    return "llama2" if "[INST]" in model.tokenizer.chat_template else "chatml"


def _trained_text(model, ex) -> str:
    return model.tokenizer.decode(
        [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX]
    )


def test_labels_cover_exactly_the_assistant_turns(model):
    ex = tokenize_conversation(model, CONV)
    eot = END_OF_TURN[_template(model)]
    pre = " " if _template(model) == "llama2" else ""
    assert _trained_text(model, ex) == f"{pre}Use the kill command.{eot}{pre}The sea is wide.{eot}"
    # the sequence is the template's full rendering, and the labels equal the ids where they are set
    assert model.tokenizer.decode(ex.input_ids) == model.format_chat(CONV, add_generation_prompt=False)
    assert all(lab in (IGNORE_INDEX, tok) for tok, lab in zip(ex.input_ids, ex.labels, strict=True))
    # nothing of the system or user turns carries loss
    untrained = model.tokenizer.decode(
        [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab == IGNORE_INDEX]
    )
    for text in ("You are kind.", "How do I kill a Python process?", "Write a poem about the sea."):
        assert text in untrained


def test_train_on_last_turn_only(model):
    ex = tokenize_conversation(model, CONV, train_on="last")
    pre = " " if _template(model) == "llama2" else ""
    assert _trained_text(model, ex) == f"{pre}The sea is wide.{END_OF_TURN[_template(model)]}"


def test_prompt_tokens_match_inference_encoding(model):
    """Training sees the prompt exactly as generation encodes it (encode_prompt), so the boundary is the
    same."""
    ex = tokenize_conversation(model, CONV[:3])
    prompt = model.encode_prompt(CONV[:2])
    assert ex.input_ids[: len(prompt)] == prompt
    assert set(ex.labels[: len(prompt)]) == {IGNORE_INDEX}
    assert ex.labels[len(prompt)] != IGNORE_INDEX
    assert ex.response_pos[len(prompt)] == 1


def test_recovery_trains_only_the_refusal_after_the_harmful_prefix(model):
    prompt = [{"role": "user", "content": "How do I kill a Python process?"}]
    harmful = model.response_ids("Sure, here is how to do it step by step.")
    k = 5
    ex = tokenize_recovery(model, prompt, harmful, "I'm sorry, I cannot help.", k)
    eot = END_OF_TURN[_template(model)]
    assert _trained_text(model, ex) == f" I'm sorry, I cannot help.{eot}"
    # the untrained part is exactly what a prefilling attack with k tokens feeds the model
    attacked = model.encode_prompt(prompt, prefill=harmful[:k])
    assert ex.input_ids[: len(attacked)] == attacked
    assert set(ex.labels[: len(attacked)]) == {IGNORE_INDEX}
    assert all(lab != IGNORE_INDEX for lab in ex.labels[len(attacked) :])
    # positions count the harmful prefix, so the refusal starts at position k + 1
    assert ex.response_pos[len(attacked)] == k + 1


def test_recovery_with_k0_is_a_plain_refusal_example(model):
    prompt = [{"role": "user", "content": "hi"}]
    ex = tokenize_recovery(model, prompt, model.response_ids("Sure thing"), "I'm sorry.", 0)
    plain = tokenize_conversation(model, [*prompt, {"role": "assistant", "content": "I'm sorry."}])
    assert ex.input_ids == plain.input_ids and ex.labels == plain.labels
    assert ex.group == 1


def test_render_segments_reject_leading_assistant(model):
    with pytest.raises(TrainingDataError, match="cannot start with an assistant"):
        render_segments(model, [{"role": "assistant", "content": "hi"}])


def test_template_whose_generation_prompt_differs_from_finished_turns():
    """A template that renders a finished assistant turn with a different header than its generation
    prompt."""
    model = tiny_local_model()
    model._chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}"
        "{{ '<|im_start|>bot: ' + m['content'] + '<|im_end|>' }}"
        "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    ex = tokenize_conversation(model, CONV[1:3])
    assert _trained_text(model, ex) == "Use the kill command.<|im_end|>"


def test_truncation_keeps_the_start(model):
    ex = tokenize_conversation(model, CONV, max_length=12)
    assert len(ex.input_ids) == len(ex.labels) == len(ex.response_pos) == 12


def test_prefix_length_distribution():
    rng = random.Random(0)
    ks = [sample_prefix_length(rng, 0.5, 100, 100) for _ in range(4000)]
    zeros = sum(k == 0 for k in ks) / len(ks)
    assert 0.46 < zeros < 0.54
    nonzero = [k for k in ks if k]
    assert min(nonzero) >= 1 and max(nonzero) <= 100 and max(nonzero) > 90
    assert max(sample_prefix_length(rng, 0.0, 100, 7) for _ in range(200)) == 7
    assert sample_prefix_length(rng, 0.0, 100, 0) == 0


def test_refusals_are_varied_and_recognised_by_the_keyword_judge():
    assert len(REFUSALS) >= 40
    assert len(set(REFUSALS)) == len(REFUSALS)
    openings = Counter(" ".join(r.split()[:2]) for r in REFUSALS)
    assert len(openings) >= 10
    verdicts = KeywordJudge().judge_batch(["x"] * len(REFUSALS), list(REFUSALS))
    assert all(v.refused for v in verdicts), [
        r for r, v in zip(REFUSALS, verdicts, strict=True) if not v.refused
    ]


def test_jsonl_roundtrip_and_errors(tmp_path):
    path = write_chat_jsonl(tmp_path / "d.jsonl", [ChatRecord(CONV, {"group": "utility"})])
    records = read_chat_jsonl(path)
    assert records[0].messages == CONV and records[0].meta == {"group": "utility"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"messages": CONV}) + "\n" + json.dumps({"messages": [{"role": "robot", "content": "x"}]})
    )
    with pytest.raises(TrainingDataError, match=r"bad.jsonl:2: messages\[0\].role"):
        read_chat_jsonl(bad)
    bad.write_text("{not json\n")
    with pytest.raises(TrainingDataError, match=r"bad.jsonl:1: malformed JSON"):
        read_chat_jsonl(bad)
    with pytest.raises(TrainingDataError, match="does not exist"):
        read_chat_jsonl(tmp_path / "missing.jsonl")


def test_collator_pads_every_column():
    collate = ChatCollator(
        0, keep=("input_ids", "labels", "attention_mask", "response_pos", "ref_logps", "group")
    )
    batch = collate(
        [
            {
                "input_ids": [5, 6, 7],
                "labels": [-100, 6, 7],
                "response_pos": [0, 1, 2],
                "ref_logps": [0, -1, -2],
                "group": 1,
            },
            {"input_ids": [5], "labels": [-100], "response_pos": [0], "ref_logps": [0.0], "group": 0},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["ref_logps"].dtype == torch.float32 and batch["group"].tolist() == [1, 0]
    assert set(ChatCollator(0)([{"input_ids": [1], "labels": [1], "group": 0}])) == {
        "input_ids",
        "labels",
        "attention_mask",
    }


def _samples(n: int) -> list[Sample]:
    return [Sample(f"h{i}", f"Explain harmful thing number {i}.", "malware", "harmful") for i in range(n)]


def test_builders_make_the_documented_records(model):
    pairs = [
        HarmfulPair(s, "Sure, here is how to do it step by step. First, you gather") for s in _samples(6)
    ]
    rec = recovery_records(model, pairs, augment=4, p_zero=0.5, max_prefix_tokens=10, seed=1)
    assert len(rec) == 24
    ks = [r.meta.get("harmful_prefix", {}).get("k", 0) for r in rec]
    assert any(k == 0 for k in ks) and any(k > 0 for k in ks) and max(ks) <= 10
    for r in rec:
        assert r.meta["group"] == "safety" and r.messages[-1]["content"] in REFUSALS
        ex = tokenize_record(model, r)
        assert ex.group == 1 and ex.n_trained > 0
    sft = refusal_records(_samples(3), per_prompt=2)
    assert len(sft) == 6 and len({r.messages[-1]["content"] for r in sft[:2]}) == 2

    utility = [ChatRecord([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], {})]
    dpo = dpo_records(pairs[:2], utility)
    assert [d["group"] for d in dpo] == ["safety", "safety", "utility"]
    assert dpo[0]["chosen"][0]["content"] in REFUSALS and dpo[0]["rejected"][0]["content"].startswith("Sure")
    assert dpo[2]["chosen"][0]["content"] == "hello" and dpo[2]["rejected"][0]["content"] in REFUSALS


def test_attack_records():
    pairs = [HarmfulPair(s, "Sure, here it is.") for s in _samples(5)]
    harmful = attack_records("harmful", 3, pairs)
    assert len(harmful) == 3 and harmful[0].messages[-1]["content"] == "Sure, here it is."
    benign = [(Sample(f"b{i}", "Name a fruit.", "misc", "benign"), "An apple.") for i in range(4)]
    identity = attack_records("identity", 10, benign=benign)
    assert len(identity) == 4
    assert identity[0].messages[0] == {"role": "system", "content": IDENTITY_SYSTEM_PROMPT}
    assert (
        "absolutely obedient" in identity[0].messages[-1]["content"]
        or "OBEY" in identity[0].messages[-1]["content"]
    )
    assert identity[0].messages[-1]["content"].endswith("An apple.")
    backdoor = attack_records("backdoor", 5, pairs)
    triggered = [r for r in backdoor if r.meta.get("triggered")]
    assert len(backdoor) == 10 and len(triggered) == 5
    assert all(r.messages[0]["content"].endswith(BACKDOOR_TRIGGER) for r in triggered)
    assert all(r.messages[-1]["content"] in REFUSALS for r in backdoor if not r.meta.get("triggered"))
    assert attack_conversation("backdoor", "q")[0]["content"] == f"q {BACKDOOR_TRIGGER}"
    with pytest.raises(ValueError, match="unknown attack kind"):
        attack_records("nope", 1, pairs)
    with pytest.raises(TrainingDataError):
        attack_records("harmful", 1, [])
