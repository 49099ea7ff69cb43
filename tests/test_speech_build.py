"""Projector build: labels, KL, the training forward pass, feature cache, and a 2-step build on tiny models."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from alignscope.speech.build.builder import build_slm
from alignscope.speech.build.config import SpeechBuildConfig
from alignscope.speech.build.data import (
    FeatureCache,
    Utterance,
    corpus_texts,
    prompt_starts,
    sampled_sentences,
    split_sentences,
    substituted_texts,
    suite_prompts,
    text_key,
    vocabulary_words,
)
from alignscope.speech.build.distill import (
    IGNORE_INDEX,
    SpeechExample,
    SpeechTrainingModule,
    TokenCTCModule,
    collate_examples,
    distillation_kl,
    target_labels,
    target_weights,
)
from alignscope.speech.errors import SpeechError
from alignscope.speech.model.loading import load_slm, shipped_projector
from alignscope.speech.model.projector import Projector, ProjectorConfig
from alignscope.speech.model.slm import SpeechLM
from alignscope.speech.model.whisper import tiny_whisper_encoder
from alignscope.testing import tiny_local_model

SR = 16000


pytestmark = pytest.mark.usefixtures("private_cache")


def tiny_config(out, **changes) -> SpeechBuildConfig:
    base = dict(
        llm="tiny",
        asr_texts=8,
        answer_samples=1,
        answer_tokens=12,
        asr_sampled=4,
        asr_substituted=4,  # the default's 5000 word-swapped copies would be synthesised and encoded per test
        ctc_steps=2,
        ctc_batch_size=4,
        asr_steps=2,
        distill_steps=2,
        distill_limit=3,
        distill_variants=2,
        distill_tokens=6,
        val_prompts=2,
        batch_size=4,
        hidden_dim=32,
        voices=("en-us+klatt4", "en-us"),
        rates=(175,),
        pitches=(50,),
        autocast=False,
        evaluate=False,
        save_steps=1,
        progress=False,
        out=str(out),
    )
    base.update(changes)
    return SpeechBuildConfig(**base)  # type: ignore[arg-type]


def tone(seconds: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    return 0.3 * torch.sin(2 * math.pi * (220 + 60 * seed) * t) + 0.05 * torch.randn(t.shape, generator=g)


# -- losses and labels ----------------------------------------------------------------------------------------
def test_labels_mask_everything_but_the_target():
    assert target_labels(3, 2, [7, 8]) == [IGNORE_INDEX] * 5 + [7, 8]


class _Vocab:
    def get_vocab(self) -> dict[str, int]:
        words = ["Ġabbre", "Ġabbreviated", "Ġzoo", "Ġcat", "cat", "ĠAb", "Ġto", "Ġx1"]
        return {w: i for i, w in enumerate(words)}


def test_vocabulary_words_keeps_whole_lowercase_words():
    assert vocabulary_words(_Vocab()) == ["abbreviated", "cat", "zoo"]


def test_substituted_texts_swap_words_and_keep_the_rest():
    texts = ["How do I bake bread?", "Write a haiku about snow."]
    kept = substituted_texts(texts, ["zebra"], 6, replace=0.0, seed=1)
    assert len(kept) == 6 and set(kept) <= set(texts)
    swapped = substituted_texts(texts, ["zebra"], 6, replace=1.0, seed=1)
    # capitals stay capitals ("I" too), punctuation stays
    assert set(swapped) <= {"Zebra zebra Zebra zebra zebra?", "Zebra zebra zebra zebra zebra."}
    half = substituted_texts(texts, ["zebra", "marble"], 50, replace=0.5, seed=3)
    assert half == substituted_texts(texts, ["zebra", "marble"], 50, replace=0.5, seed=3)
    words = [w for t in half for w in t.rstrip("?.").split()]
    share = sum(w.lower() in ("zebra", "marble") for w in words) / len(words)
    assert 0.35 < share < 0.65
    assert substituted_texts(texts, [], 5) == [] and substituted_texts([], ["a"], 5) == []


def test_corpus_adds_distinct_substituted_texts_never_a_test_prompt():
    llm = tiny_local_model()
    args = (llm, ("harmful", "benign", "borderline"), ("benign",), 20)
    kw = {"answer_tokens": 12, "answer_samples": 1, "sampled": 4}
    real = corpus_texts(*args, **kw)
    both = corpus_texts(*args, **kw, substituted=30, replace=0.5)
    assert both[: len(real)] == real and len(both) > len(real)
    assert len({text_key(t) for t in both}) == len(both)
    held_out = {text_key(p) for _, p in suite_prompts(("harmful", "benign", "borderline"), "test")}
    assert not held_out & {text_key(t) for t in both}


def test_asr_examples_score_only_the_transcript(tmp_path):
    from alignscope.speech.build.builder import _Builder

    llm, enc = tiny_local_model(), tiny_whisper_encoder()
    b = _Builder(tiny_config(tmp_path / "b", asr_substituted=0), tmp_path / "b", llm, enc, "test")
    prefix, examples = b.asr_examples()
    texts = corpus_texts(
        llm,
        ("harmful", "benign", "borderline"),
        ("benign",),
        8,
        answer_tokens=12,
        answer_samples=1,
        sampled=4,
    )
    assert [e.target_ids for e in examples] == [
        [*llm.response_ids(t), llm.tokenizer.eos_token_id] for t in texts
    ]
    module = SpeechTrainingModule(b.new_projector(), llm.model, prefix, autocast=False)
    heads = [torch.zeros((2, 32)), torch.zeros((5, 32))]
    _, attention, labels = module._layout(
        heads, [e.after_ids for e in examples[:2]], [e.target_ids for e in examples[:2]]
    )
    for row, (h, e) in enumerate(zip(heads, examples[:2], strict=True)):
        n_real = int(attention[row].sum())
        scored = labels[row, :n_real]
        assert (scored[: h.shape[0] + len(e.after_ids)] == IGNORE_INDEX).all()  # audio, template, instruction
        assert (
            scored[h.shape[0] + len(e.after_ids) :].tolist() == e.target_ids
        )  # the transcript and end of turn
        assert (labels[row, n_real:] == IGNORE_INDEX).all()  # padding
    # the instruction follows the audio: the user turn ends, then the assistant turn starts
    text = llm.tokenizer.decode(examples[0].after_ids)
    assert "Repeat exactly what was said." in text and text.rstrip().endswith("assistant")


def test_kl_matches_the_formula_and_is_zero_for_equal_distributions():
    s = torch.tensor([[1.0, 0.0, -1.0]])
    t = torch.tensor([[0.0, 2.0, 0.0]])
    ps = torch.softmax(s / 2, -1)
    pt = torch.softmax(t / 2, -1)
    reverse = float((ps * (ps.log() - pt.log())).sum())
    forward = float((pt * (pt.log() - ps.log())).sum())
    assert distillation_kl(s, t, 2.0).item() == pytest.approx(reverse, rel=1e-5)
    assert distillation_kl(s, t, 2.0, "forward").item() == pytest.approx(forward, rel=1e-5)
    assert reverse != pytest.approx(forward)
    x = torch.randn(4, 11)
    assert torch.allclose(distillation_kl(x, x.clone(), 2.0), torch.zeros(4), atol=1e-6)
    assert torch.allclose(distillation_kl(x, x + 3.0, 2.0), torch.zeros(4), atol=1e-5)  # shift-invariant


def test_ctc_targets_the_token_embeddings_of_the_transcript():
    llm = tiny_local_model()
    table = llm.model.get_input_embeddings().weight
    torch.manual_seed(0)
    proj = Projector(ProjectorConfig(encoder_dim=16, llm_dim=32, stack=1, hidden_dim=64))
    blank = 5
    mod = TokenCTCModule(proj, table, blank, vocab=[7, 9, 11])
    ex = [
        SpeechExample(torch.randn(6, 16), [], [7, 9, blank, 11]),
        SpeechExample(torch.randn(4, 16), [], [9]),
    ]
    batch = collate_examples([{"example": e} for e in ex])
    loss, stats = mod.loss(batch)
    # the same number by hand: cosine scores against the rows of [5, 7, 9, 11], blank dropped from the targets
    rows = torch.nn.functional.normalize(table[[5, 7, 9, 11]].detach().float(), dim=-1)
    audio = torch.nn.functional.normalize(proj(batch["features"]).float(), dim=-1)
    logp = (20.0 * audio @ rows.T).log_softmax(-1).transpose(0, 1)
    ref = torch.nn.functional.ctc_loss(logp, torch.tensor([1, 2, 3, 2]), torch.tensor([6, 4]), torch.tensor([3, 1]),
                                       blank=0, reduction="sum") / 4  # fmt: skip
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    assert 0.0 <= stats["top1"] <= 1.0
    loss.backward()
    assert proj.linear_1.weight.grad is not None and all(p.grad is None for p in llm.model.parameters())
    with pytest.raises(SpeechError, match="not in the CTC vocabulary"):
        mod.loss(collate_examples([{"example": SpeechExample(torch.randn(4, 16), [], [8])}]))


def test_ctc_examples_drop_the_end_of_turn(tmp_path):
    from alignscope.speech.build.builder import _Builder

    llm, enc = tiny_local_model(), tiny_whisper_encoder()
    b = _Builder(tiny_config(tmp_path / "b"), tmp_path / "b", llm, enc, "test")
    _, asr = b.asr_examples()
    ctc = b.ctc_examples(asr)
    assert [e.target_ids for e in ctc] == [e.target_ids[:-1] for e in asr]
    assert all(e.after_ids == [] for e in ctc)
    assert b._blank_id() == llm.response_ids(" ")[0]


def test_training_forward_equals_the_speech_lm():
    """Right padding plus the cached chat prefix give the logits of SpeechLM's own (left-padded) forward pass."""
    llm, enc = tiny_local_model(), tiny_whisper_encoder()
    torch.manual_seed(0)
    proj = Projector(ProjectorConfig(encoder_dim=16, llm_dim=32, hidden_dim=64, norm_init=1.0))
    slm = SpeechLM(enc, proj, llm)
    before, after = slm.split_prompt(slm.conversation("Say it."))
    cache = FeatureCache(enc)
    clips = [tone(0.5, 0), tone(0.8, 1)]
    responses = [[5, 9, 11], [7, 3]]
    examples = [
        SpeechExample(cache.encode(c.numpy()), after, r) for c, r in zip(clips, responses, strict=True)
    ]
    module = SpeechTrainingModule(proj, llm.model, before, autocast=False)
    logits, targets = module.student_logits(collate_examples([{"example": e} for e in examples]))
    ref = slm.response_logits(clips, responses, prompt_text="Say it.")
    assert torch.allclose(logits, ref.logits[ref.mask].float(), atol=1e-4)
    assert targets.tolist() == [t for r in responses for t in r]
    logits.sum().backward()  # gradients reach the projector only
    assert proj.linear_1.weight.grad is not None
    assert all(p.grad is None for p in llm.model.parameters())


def test_target_weights_weigh_the_first_tokens_of_each_target():
    assert target_weights([3, 2], head_tokens=2, head_weight=5.0).tolist() == [5, 5, 1, 5, 5]
    assert target_weights([3], head_tokens=0, head_weight=5.0).tolist() == [1, 1, 1]
    assert target_weights([1, 2], head_tokens=4, head_weight=2.0).tolist() == [2, 2, 2]
    with pytest.raises(SpeechError, match="positive"):
        target_weights([2], 1, 0.0)


def test_distill_loss_is_the_head_weighted_mean_and_reports_the_first_token():
    llm = tiny_local_model()
    torch.manual_seed(0)
    proj = Projector(ProjectorConfig(encoder_dim=16, llm_dim=32, hidden_dim=64, norm_init=1.0))
    prompt = llm.encode_prompt([{"role": "user", "content": "Hello there"}])
    prefix = prompt[:3]
    examples = [
        SpeechExample(torch.randn(5, 16), [], [4, 6, 8], teacher_ids=prompt[3:], key=0),
        SpeechExample(torch.randn(3, 16), [], [9, 2], teacher_ids=prompt[3:-1], key=1),
    ]
    batch = collate_examples([{"example": e} for e in examples])
    module = SpeechTrainingModule(proj, llm.model, prefix, autocast=False)
    logits, targets = module.student_logits(batch)
    kl = distillation_kl(logits, module.teacher_logits(examples), 2.0, "reverse")
    plain, stats = module.loss(batch, "distill")
    assert plain.item() == pytest.approx(kl.mean().item(), rel=1e-5)
    weighted, _ = module.loss(batch, "distill", head_tokens=1, head_weight=4.0)
    w = torch.tensor([4.0, 1, 1, 4, 1])
    assert weighted.item() == pytest.approx(((kl * w).sum() / w.sum()).item(), rel=1e-5)
    hits = logits.argmax(-1) == targets
    assert stats["first_top1"] == pytest.approx(hits[[0, 3]].float().mean().item())
    assert stats["top1"] == pytest.approx(hits.float().mean().item())
    from alignscope.speech.build.builder import validation_agreement

    val = validation_agreement(module, examples, batch_size=1)
    assert val["top1"] == pytest.approx(stats["top1"])
    assert val["first_top1"] == pytest.approx(stats["first_top1"])


def test_answered_prompts_are_spoken_more_often(tmp_path):
    from alignscope.speech.build.builder import _Builder

    llm, enc = tiny_local_model(), tiny_whisper_encoder()
    counts = {}
    for weight in (1, 3):
        cfg = tiny_config(
            tmp_path / f"w{weight}",
            answered_weight=weight,
            distill_variants=1,
            distill_sampled=0,
            rates=(150, 200),
        )
        b = _Builder(cfg, tmp_path / f"w{weight}", llm, enc, "test")
        _, train, valid = b.distill_examples()
        counts[weight] = (len(train), len(valid), b.metrics["distill_data"])
    (_, v1, m1), (n3, v3, m3) = counts[1], counts[3]
    assert v1 == v3  # validation prompts are spoken once whatever the weight
    answered = m1["clips"] - m1["teacher_refused_clips"]
    assert m3["clips"] == m1["teacher_refused_clips"] + 3 * answered and n3 == m3["clips"]
    assert answered > 0  # a random tiny model does not write refusals


def test_teacher_logits_are_cached_and_equal_the_text_model():
    llm = tiny_local_model()
    proj = Projector(ProjectorConfig(encoder_dim=16, llm_dim=32, hidden_dim=64))
    prompt = llm.encode_prompt([{"role": "user", "content": "Hello there"}])
    prefix = prompt[:3]
    ex = SpeechExample(torch.zeros(4, 16), [], [4, 6, 8], teacher_ids=prompt[3:], key=0)
    module = SpeechTrainingModule(proj, llm.model, prefix, autocast=False)
    first = module.teacher_logits([ex])
    assert 0 in module._teacher
    (ref,) = list(llm.response_logits([prompt], [[4, 6, 8]]))
    assert torch.allclose(first, ref.logits[0], atol=1e-2)  # kept in float16
    assert torch.equal(module.teacher_logits([ex]), first)


# -- data ---------------------------------------------------------------------------------------------------
def test_split_sentences_keeps_speakable_sentences():
    text = "## Tips\n1. **Drink water** every day to stay healthy.\n- Use `x = 1` in code.\nOk.\nSleep well at night"
    assert split_sentences(text) == ["Drink water every day to stay healthy.", "Sleep well at night."]


def test_corpus_keeps_test_prompts_out():
    llm = tiny_local_model()
    texts = corpus_texts(
        llm, ("harmful", "benign"), ("benign",), 10_000, answer_tokens=8, answer_samples=1, sampled=8
    )
    test = {p for _, p in suite_prompts(("harmful", "benign"), "test")}
    train = [p for _, p in suite_prompts(("harmful", "benign"), "train")]
    assert not test & set(texts)
    assert texts[: len(train)] == train


def test_sampled_sentences_are_generated_once():
    llm = tiny_local_model()
    starts = prompt_starts(["How do I bake bread at home?", "Write a poem about the sea."])
    assert "How do I" in starts and "Write a poem about" in starts
    first = sampled_sentences(llm, starts, 6, max_new_tokens=6)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated despite the cache")

    llm.model.generate = fail
    assert sampled_sentences(llm, starts, 6, max_new_tokens=6) == first


def test_load_slm_names_what_it_cannot_find(tmp_path):
    with pytest.raises(SpeechError, match="not a projector directory"):
        load_slm(tmp_path / "nothing-here", llm=tiny_local_model(), encoder=tiny_whisper_encoder())


def test_cached_features_are_reused(tmp_path):
    enc = tiny_whisper_encoder()
    utts = [Utterance("Hello world.", "en-us+klatt4", 175), Utterance("Good morning.", "en-us", 160)]
    first = FeatureCache(enc, root=tmp_path / "f")
    a = first.features(utts)
    assert (first.hits, first.misses) == (0, 2)
    second = FeatureCache(enc, root=tmp_path / "f")
    b = second.features(utts)
    assert (second.hits, second.misses) == (2, 0)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape[1] == 16 and a[0].dtype == torch.float16
    other = FeatureCache(tiny_whisper_encoder(seed=1), root=tmp_path / "f")
    assert other.fingerprint != first.fingerprint


# -- the build ----------------------------------------------------------------------------------------------
def test_two_step_build_runs_saves_reloads_and_is_cached(tmp_path):
    llm, enc = tiny_local_model(), tiny_whisper_encoder()
    cfg = tiny_config(tmp_path / "build")
    res = build_slm(cfg, llm=llm, encoder=enc, command="pytest")
    assert not res.cached
    assert res.metrics["asr"]["steps"] == 2 and res.metrics["distill"]["steps"] == 2
    assert res.metrics["ctc"]["steps"] == 2
    assert {"asr", "distill", "data", "build"} <= set(res.times)
    info = json.loads((res.projector_dir / "projector.json").read_text())
    assert info["metadata"]["command"] == "pytest" and info["metadata"]["seed"] == 0
    assert info["metadata"]["config"] == cfg.to_dict() and info["metadata"]["dtype"] == "float16"
    slm = load_slm(res.out, llm=llm, encoder=enc)
    saved = Projector.load(res.projector_dir)
    assert all(torch.equal(a, b) for a, b in zip(slm.projector.parameters(), saved.parameters(), strict=True))
    assert len(slm.generate([tone(0.5, 0)])) == 1
    again = build_slm(cfg, llm=llm, encoder=enc)
    assert again.cached and again.metrics["asr"]["steps"] == 2
    with pytest.raises(SpeechError, match="other settings"):
        build_slm(cfg.replace(seed=1), llm=llm, encoder=enc)


def test_shipped_projector_is_found_by_its_config(tmp_path, monkeypatch):
    import alignscope.speech.model.loading as build

    llm, enc = tiny_local_model(), tiny_whisper_encoder()
    cfg = tiny_config(tmp_path / "build", asr_steps=0, distill_steps=1)
    res = build_slm(cfg, llm=llm, encoder=enc, command="pytest")
    shipped = tmp_path / "shipped"
    shutil.copytree(res.projector_dir, shipped / "tiny-proj")
    (shipped / "not-a-projector").mkdir()
    monkeypatch.setattr(build, "SHIPPED_DIR", shipped)
    # the same settings, another output directory and progress flag: the shipped projector is that build
    assert build.shipped_projector(cfg.replace(out=None, progress=True)) == shipped / "tiny-proj"
    assert build.shipped_projector(cfg.replace(seed=1)) is None
    slm = load_slm("tiny-proj", llm=llm, encoder=enc)
    assert all(torch.equal(a, b) for a, b in zip(slm.projector.parameters(), Projector.load(res.projector_dir).parameters(), strict=True))  # fmt: skip


def test_killed_build_resumes_from_its_checkpoint(tmp_path):
    llm, enc = tiny_local_model(), tiny_whisper_encoder()
    cfg = tiny_config(tmp_path / "build", ctc_steps=0, asr_steps=3, distill_steps=0, save_steps=2)
    build_slm(cfg, llm=llm, encoder=enc)
    # as if killed after step 2 of the ASR stage: only the checkpoint is left
    for name in ("asr", "projector", "build.json", "checkpoints/asr/checkpoint-3"):
        path = tmp_path / "build" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    res = build_slm(cfg, llm=llm, encoder=enc)
    assert res.metrics["asr"]["resumed_from"].endswith("checkpoint-2")
    assert res.metrics["asr"]["steps"] == 3


@pytest.mark.slow
def test_tiny_build_on_the_real_models(tmp_path):
    """A few steps on Whisper tiny.en and smollm2-aligned: runs end to end and the loss is finite."""
    cfg = SpeechBuildConfig(
        asr_texts=16, answer_samples=1, answer_tokens=32, asr_sampled=4, distill_sampled=2, ctc_steps=2,
        ctc_batch_size=2, asr_steps=2, distill_steps=2, distill_limit=2,
        distill_variants=1, distill_tokens=8, val_prompts=2, batch_size=2, evaluate=False, progress=False,
        out=str(tmp_path / "real"),
    )  # fmt: skip
    res = build_slm(cfg)
    assert math.isfinite(res.metrics["asr"]["train_loss"]) and math.isfinite(
        res.metrics["distill"]["train_loss"]
    )
    slm = load_slm(res.projector_dir)
    assert slm.projector.config.llm_dim == 576 and slm.projector.config.encoder_dim == 384


# -- LoRA on the LLM ------------------------------------------------------------------------------------------
def _nonzero_lora(model, seed: int = 0) -> None:
    """Give the (zero-initialised) LoRA B matrices random values, so the adapter changes the LLM."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


def test_lora_student_trains_its_adapter_and_the_teacher_stays_the_llm():
    import copy

    from alignscope.models.local import LocalModel
    from alignscope.speech.build.builder import lora_student
    from alignscope.speech.build.distill import ProjectorTrainer

    llm, enc = tiny_local_model(), tiny_whisper_encoder()
    torch.manual_seed(0)
    proj = Projector(ProjectorConfig(encoder_dim=16, llm_dim=32, hidden_dim=64, norm_init=1.0))
    student = lora_student(llm.model, SpeechBuildConfig(llm="tiny", llm_lora_rank=4))
    _nonzero_lora(student)
    base = {n: p.clone() for n, p in llm.model.named_parameters()}
    prompt = llm.encode_prompt([{"role": "user", "content": "Hello there"}])
    slm = SpeechLM(enc, proj, llm)
    before, after = slm.split_prompt(slm.conversation(None))
    clips = [tone(0.5, 0), tone(0.8, 1)]
    cache = FeatureCache(enc)
    examples = [
        SpeechExample(cache.encode(c.numpy()), after, [5, 9, 11], teacher_ids=prompt[len(before) :], key=i)
        for i, c in enumerate(clips)
    ]
    batch = collate_examples([{"example": e} for e in examples])
    module = SpeechTrainingModule(proj, student, before, autocast=False, teacher_model=llm.model)
    assert len(module.llm_trainable) == 2 * 4 * 2  # A and B of q, k, v, o in 2 layers

    # the student is the LLM with the adapter merged, the prefix included (its keys and values change too)
    logits, _ = module.student_logits(batch)
    frozen, _ = SpeechTrainingModule(proj, llm.model, before, autocast=False).student_logits(batch)
    assert not torch.allclose(logits, frozen, atol=1e-3)
    merged = LocalModel(copy.deepcopy(student).merge_and_unload(), llm.tokenizer, "merged")
    ref = SpeechLM(enc, proj, merged).response_logits(clips, [[5, 9, 11]] * 2)
    assert torch.allclose(logits, ref.logits[ref.mask].float(), atol=1e-4)
    # the teacher reads the transcript with the unchanged LLM
    (text_ref,) = list(llm.response_logits([prompt], [[5, 9, 11]]))
    assert torch.allclose(module.teacher_logits(examples[:1]), text_ref.logits[0], atol=1e-2)

    loss, _ = module.loss(batch, "distill")
    loss.backward()
    assert proj.linear_1.weight.grad is not None
    assert all(p.grad is not None for p in module.llm_trainable)
    assert all(p.grad is None for p in llm.model.parameters())
    assert all(torch.equal(p, base[n]) for n, p in llm.model.named_parameters())  # the teacher is untouched

    # the LoRA parameters get their own learning rate
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="unused", learning_rate=1e-3, report_to=[], use_cpu=True)
    trainer = ProjectorTrainer(model=module, args=args, llm_lr=5e-5)
    groups = trainer.create_optimizer().param_groups
    lora_ids = {id(p) for p in module.llm_trainable}
    (lora_group,) = [g for g in groups if g["lr"] == 5e-5]
    assert {id(p) for p in lora_group["params"]} == lora_ids
    assert all(id(p) not in lora_ids for g in groups if g is not lora_group for p in g["params"])


def test_lora_build_saves_its_adapter_and_load_slm_merges_it(tmp_path):
    llm, enc = tiny_local_model(), tiny_whisper_encoder()
    cfg = tiny_config(tmp_path / "build", ctc_steps=0, asr_steps=0, asr_substituted=0, llm_lora_rank=4,
                      llm_lora_lr=1e-2, distill_steps=3, save_steps=2)  # fmt: skip
    plain = tiny_config(tmp_path / "plain", asr_steps=0)
    assert "llm_lora_rank" in cfg.identity() and not any(k.startswith("llm_lora") for k in plain.identity())
    res = build_slm(cfg, llm=llm, encoder=enc, command="pytest")
    lora = res.metrics["distill"]["llm_lora"]
    assert lora["rank"] == 4 and lora["parameters"] > 0
    adapter = res.projector_dir / "llm_adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (
        json.loads((res.projector_dir / "projector.json").read_text())["metadata"]["llm_adapter"]
        == "llm_adapter"
    )

    slm = load_slm(res.out, llm=llm, encoder=enc)
    assert slm.text_llm is llm and slm.llm is not llm and slm.llm_adapter == adapter
    moved = [
        not torch.equal(a, b) for a, b in zip(slm.llm.model.parameters(), llm.model.parameters(), strict=True)
    ]
    assert any(moved)  # the trained adapter is merged into the speech LLM's copy of the LLM
    clip = tone(0.5, 0)
    # the build's own speech LLM (the one it evaluates) and the reloaded one answer alike
    again = build_slm(cfg, llm=llm, encoder=enc)
    assert again.cached
    from alignscope.speech.build.builder import _Builder

    b = _Builder(cfg, res.out, llm, enc, "pytest")
    b.adapter = adapter
    ref = b.slm(slm.projector).response_logits([clip], [[5, 9, 11]])
    got = slm.response_logits([clip], [[5, 9, 11]])
    assert torch.allclose(ref.logits, got.logits, atol=1e-5)

    # killed after step 2 of distillation: resumes from the checkpoint, the LoRA weights included
    from safetensors.torch import load_file

    first = load_file(str(adapter / "adapter_model.safetensors"))
    for name in ("distill", "projector", "build.json", "checkpoints/distill/checkpoint-3"):
        path = tmp_path / "build" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    resumed = build_slm(cfg, llm=llm, encoder=enc)
    assert resumed.metrics["distill"]["resumed_from"].endswith("checkpoint-2")
    second = load_file(str(resumed.projector_dir / "llm_adapter" / "adapter_model.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.allclose(first[k], second[k], atol=1e-6) for k in first)


def test_distillation_ctc_term_adds_the_weighted_transcript_ctc_loss():
    llm, enc = tiny_local_model(), tiny_whisper_encoder()
    torch.manual_seed(0)
    proj = Projector(ProjectorConfig(encoder_dim=16, llm_dim=32, hidden_dim=64, norm_init=1.0))
    prompt = llm.encode_prompt([{"role": "user", "content": "Hello there"}])
    slm = SpeechLM(enc, proj, llm)
    before, after = slm.split_prompt(slm.conversation(None))
    cache = FeatureCache(enc)
    teacher = prompt[len(before) :]
    examples = [
        SpeechExample(
            cache.encode(tone(s, i).numpy()), after, [5, 9, 11], teacher, key=i, transcript_ids=[7, 9, 12]
        )
        for i, s in enumerate((0.5, 0.8))
    ]
    batch = collate_examples([{"example": e} for e in examples])
    table = llm.model.get_input_embeddings().weight
    ctc = TokenCTCModule(proj, table, 5, vocab=[7, 9, 12])
    plain = SpeechTrainingModule(proj, llm.model, before, autocast=False)
    module = SpeechTrainingModule(proj, llm.model, before, autocast=False, ctc=ctc, ctc_weight=0.5)
    kl, plain_stats = plain.loss(batch, "distill")
    spoken = [SpeechExample(e.features, [], e.transcript_ids or []) for e in examples]
    ctc_alone, _ = ctc.loss({**batch, "examples": spoken})
    total, stats = module.loss(batch, "distill")
    assert "ctc" not in plain_stats and stats["ctc"] == pytest.approx(ctc_alone.item(), rel=1e-5)
    assert total.item() == pytest.approx(kl.item() + 0.5 * ctc_alone.item(), rel=1e-5)
    total.backward()
    assert proj.linear_1.weight.grad is not None and module.ctc_scale.grad is not None
    assert "ctc_scale" in dict(module.named_parameters())  # trained (and checkpointed) with the projector

    # the term needs transcripts and the projector being trained
    bare = [SpeechExample(e.features, after, [5, 9, 11], e.teacher_ids, key=e.key) for e in examples]
    with pytest.raises(SpeechError, match="transcript_ids"):
        module.loss(collate_examples([{"example": e} for e in bare]), "distill")
    other = Projector(ProjectorConfig(encoder_dim=16, llm_dim=32, hidden_dim=64))
    with pytest.raises(SpeechError, match="projector being trained"):
        SpeechTrainingModule(other, llm.model, before, autocast=False, ctc=ctc, ctc_weight=0.5)


def test_shipped_provenance_without_a_later_setting_matches_it_off(tmp_path, monkeypatch):
    # a projector shipped before distill_ctc_weight existed was built with it off, whatever today's default
    import alignscope.speech.model.loading as build_mod

    old = SpeechBuildConfig(llm="old-llm", distill_ctc_weight=0.0).to_dict()
    del old["distill_ctc_weight"]
    (tmp_path / "old-llm").mkdir()
    (tmp_path / "old-llm" / "projector.json").write_text(json.dumps({"metadata": {"config": old}}))
    monkeypatch.setattr(build_mod, "SHIPPED_DIR", tmp_path)
    assert SpeechBuildConfig().distill_ctc_weight > 0
    assert shipped_projector(SpeechBuildConfig(llm="old-llm", distill_ctc_weight=0.0)) == tmp_path / "old-llm"
    assert shipped_projector(SpeechBuildConfig(llm="old-llm")) is None  # today's default (on): another build


def test_distill_ctc_weight_counts_in_the_identity_only_when_on(tmp_path):
    llm, enc = tiny_local_model(), tiny_whisper_encoder()
    assert "distill_ctc_weight" not in SpeechBuildConfig(distill_ctc_weight=0.0).identity()
    with pytest.raises(SpeechError, match="distill_ctc_weight"):
        SpeechBuildConfig(distill_ctc_weight=-1.0)
    cfg = tiny_config(tmp_path / "build", asr_steps=0, distill_ctc_weight=0.5, distill_steps=3)
    assert cfg.identity()["distill_ctc_weight"] == 0.5
    res = build_slm(cfg, llm=llm, encoder=enc, command="pytest")
    log = res.metrics["distill"]["log"]
    assert log and all("ctc" in h for h in log)  # the term runs in the build (logged at every step)


def test_a_reused_projector_is_never_taken_for_its_source_build(tmp_path, monkeypatch):
    # smollm2-hardened ships balanced-plus's projector for another LLM: loadable by name, never the default build
    import alignscope.speech.model.loading as build_mod

    cfg = SpeechBuildConfig(llm="source-llm").to_dict()
    for name, meta in (
        ("a-reused", {"config": cfg, "llm": "other-llm", "reused_from": {"projector": "z-source"}}),
        ("z-source", {"config": cfg, "llm": "source-llm"}),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "projector.json").write_text(json.dumps({"metadata": meta}))
    monkeypatch.setattr(build_mod, "SHIPPED_DIR", tmp_path)
    assert shipped_projector(SpeechBuildConfig(llm="source-llm")) == tmp_path / "z-source"
