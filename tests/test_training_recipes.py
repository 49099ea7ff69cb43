"""Recipes on a tiny model saved to disk: two steps train and save a loadable adapter, resume, SPPFT freezing,
DPO, the fine-tuning attacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import alignscope
from alignscope.models import load_model
from alignscope.testing import save_tiny_model
from alignscope.training import (
    AdversarialSFTConfig,
    ConstrainedSFTConfig,
    DeepAlignConfig,
    FinetuneAttackConfig,
    HardenConfig,
    SafetyDPOConfig,
    SafetySFTConfig,
    SPPFTConfig,
    TrainingError,
    config_from_dict,
    finetune_attack,
    train,
    write_chat_jsonl,
)
from alignscope.training.chat_data import ChatRecord
from alignscope.training.engine import PROVENANCE_FILE

SMALL = {"batch_size": 2, "max_steps": 2, "progress": False, "save_steps": 1, "logging_steps": 1}
DATA = {"n_harmful": 4, "n_utility": 4, "utility_max_new_tokens": 8}


pytestmark = pytest.mark.usefixtures("private_cache_one_thread")


def _save_tiny(template: str, tmp_path_factory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp(f"tiny-{template}"), template=template, layers=4))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return _save_tiny("chatml", tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_llama2_dir(tmp_path_factory):
    return _save_tiny("llama2", tmp_path_factory)


@pytest.fixture
def chat_file(tmp_path):
    records = [
        ChatRecord(
            [
                {"role": "user", "content": f"Write a poem about the sea, number {i}."},
                {"role": "assistant", "content": "Sure, here is how to do it step by step."},
            ]
        )
        for i in range(6)
    ]
    return str(write_chat_jsonl(tmp_path / "chat.jsonl", records))


def _check_output(result, base: str) -> None:
    cfg = json.loads((result.output / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == base
    assert (result.output / PROVENANCE_FILE).exists()
    assert (result.run_dir / "metrics.json").exists() and (result.run_dir / "config.json").exists()
    model = load_model(str(result.output))
    assert len(model.generate([[{"role": "user", "content": "hi"}]])) == 1


@pytest.mark.parametrize("template", ["chatml", "llama2"])
def test_safety_sft_trains_two_steps_and_saves_a_loadable_adapter(
    template, tiny_dir, tiny_llama2_dir, tmp_path
):
    tiny_dir = tiny_dir if template == "chatml" else tiny_llama2_dir
    result = train("safety-sft", SafetySFTConfig(model=tiny_dir, out=str(tmp_path / "run"), **SMALL, **DATA))
    assert result.steps == 2 and result.train_loss is not None
    _check_output(result, tiny_dir)
    rows = [json.loads(line) for line in (result.run_dir / "data" / "train.jsonl").read_text().splitlines()]
    assert {r["group"] for r in rows} == {"safety", "utility"}
    # the adapter changed the model: the LoRA B matrices moved away from zero
    trained = load_model(str(result.output)).model.state_dict()
    base = load_model(tiny_dir).model.state_dict()
    assert any(not torch.equal(trained[k], base[k]) for k in base)


def test_utility_sampled_adds_instructions_the_model_writes(tiny_dir, tmp_path, monkeypatch):
    from alignscope.data import load_suite
    from alignscope.training import prompts

    train_prompt = load_suite("benign").split(0.5, 0)[0].samples[0].prompt
    test_prompt = load_suite("benign").split(0.5, 0)[1].samples[0].prompt
    written = [train_prompt, "How do I fold a paper crane?", test_prompt.upper(), "Suggest a name for a cat."]
    seen_starts: list[str] = []

    def fake_sampled(model, starts, n, **kwargs):
        seen_starts.extend(starts)
        return written[:n]

    monkeypatch.setattr(prompts, "sampled_sentences", fake_sampled)
    cfg = SafetySFTConfig(model=tiny_dir, out=str(tmp_path / "run"), utility_sampled=2, **SMALL, **DATA)
    from alignscope.training.builders import sampled_instructions

    suite, held_out = load_suite("benign").split(0.5, 0)
    grown = sampled_instructions(load_model(tiny_dir), suite, 2, held_out)
    # a train prompt and a held-out prompt (up to case) are not taken again; the model's own sentences are
    assert [(s.id, s.prompt, s.label) for s in grown.samples[len(suite) :]] == [
        ("sampled-0000", "How do I fold a paper crane?", "benign"),
        ("sampled-0001", "Suggest a name for a cat.", "benign"),
    ]
    assert "How do I" in seen_starts and grown.samples[: len(suite)] == suite.samples
    # in the recipe they join the utility data (n_utility of the train prompts, so the first one may come back as
    # a sampled one), answered by the model (an empty answer is dropped)
    result = train("safety-sft", cfg)
    rows = [json.loads(line) for line in (result.run_dir / "data" / "train.jsonl").read_text().splitlines()]
    sampled = {r["id"]: r["messages"][0]["content"] for r in rows if r["id"].startswith("sampled-")}
    assert sampled and set(sampled.values()) <= {
        train_prompt,
        *written[1:2],
        written[3],
    }  # never the test one


def test_noisy_records_perturb_only_the_prompt():
    import random

    from alignscope.training.builders import noisy_records
    from alignscope.training.prompts import perturb_words

    rng = random.Random(0)
    assert perturb_words("Bake the bread, then rest.", ["zebra"], rng) == "Bake the bread, then rest."
    assert (
        perturb_words("Bake the bread, then rest.", ["zebra"], rng, replace=1.0)
        == "Zebra zebra zebra, zebra zebra."
    )
    assert perturb_words("Bake the bread, then rest.", ["zebra"], rng, drop=1.0) == ", ."
    record = ChatRecord(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "How do I bake a loaf of bread at home today?"},
            {"role": "assistant", "content": "I'm sorry, I can't help with that."},
        ],
        {"group": "safety", "id": "x"},
    )
    noisy = noisy_records([record], ["zebra", "marble"], copies=3, noise=0.6, seed=1)
    assert len(noisy) == 3 and noisy == noisy_records([record], ["zebra", "marble"], 3, 0.6, seed=1)
    for r in noisy:
        assert r.meta == {"group": "safety", "id": "x", "noisy": True}
        assert r.messages[0] == record.messages[0] and r.messages[2] == record.messages[2]
        assert r.messages[1]["content"] != record.messages[1]["content"]
    assert record.messages[1]["content"] == "How do I bake a loaf of bread at home today?"  # not mutated


def test_safety_sft_noisy_copies_double_the_examples(tiny_dir, tmp_path):
    cfg = SafetySFTConfig(
        model=tiny_dir, out=str(tmp_path / "run"), noisy_copies=1, prompt_noise=0.5, **SMALL, **DATA
    )
    result = train("safety-sft", cfg)
    rows = [json.loads(line) for line in (result.run_dir / "data" / "train.jsonl").read_text().splitlines()]
    clean = [r for r in rows if not r.get("noisy")]
    noisy = [r for r in rows if r.get("noisy")]
    assert 0 < len(noisy) <= len(clean)
    answers = {r["messages"][-1]["content"] for r in clean}
    assert all(r["messages"][-1]["content"] in answers for r in noisy)


def test_deep_align_uses_recovery_examples(tiny_dir, tmp_path):
    result = train(
        "deep-align",
        DeepAlignConfig(
            model=tiny_dir, out=str(tmp_path / "run"), harmful_max_new_tokens=12, p_zero=0.0, **SMALL, **DATA
        ),
    )
    _check_output(result, tiny_dir)
    rows = [json.loads(line) for line in (result.run_dir / "data" / "train.jsonl").read_text().splitlines()]
    assert any("harmful_prefix" in r for r in rows)


def test_adversarial_sft_applies_gcg_suffixes_to_the_train_prompts(tiny_dir, tmp_path):
    run = tmp_path / "gcg-run"
    run.mkdir()
    rec = {"stage": "gcg", "key": "b1", "suffix": " zz!!", "strings": [" a1", " a2", " a3", " zz!!"]}
    (run / "samples.jsonl").write_text(json.dumps({"stage": "gcg_eval"}) + "\n" + json.dumps(rec) + "\n")
    cfg = config_from_dict(
        AdversarialSFTConfig,
        {
            "model": tiny_dir,
            "out": str(tmp_path / "run"),
            "gcg_runs": str(run),
            "trajectory": 2,
            **SMALL,
            **DATA,
        },
    )
    assert cfg.gcg_runs == (str(run),)
    result = train("adversarial-sft", cfg)
    _check_output(result, tiny_dir)
    rows = [json.loads(line) for line in (result.run_dir / "data" / "train.jsonl").read_text().splitlines()]
    suffixed = [r for r in rows if r.get("gcg_suffix")]
    # 4 harmful train prompts x 2 suffixes from the pool {best " zz!!", last two steps " a3", " zz!!"}
    assert len(suffixed) == 8 and {r["gcg_suffix"] for r in suffixed} <= {" zz!!", " a3"}
    for r in suffixed:
        assert r["messages"][0]["content"].endswith(r["gcg_suffix"])
        assert r["group"] == "safety"
    assert sum(r["group"] == "safety" and not r.get("gcg_suffix") for r in rows) == 4  # the plain refusals


def test_adversarial_sft_errors_name_the_missing_gcg_run(tiny_dir, tmp_path):
    with pytest.raises(TrainingError, match="gcg_runs"):
        train(
            "adversarial-sft", AdversarialSFTConfig(model=tiny_dir, out=str(tmp_path / "a"), **SMALL, **DATA)
        )
    from alignscope.attacks.gcg_training import GCGRecordsError

    missing = tmp_path / "nowhere"
    with pytest.raises(GCGRecordsError, match="nowhere"):
        train(
            "adversarial-sft",
            AdversarialSFTConfig(
                model=tiny_dir, out=str(tmp_path / "b"), gcg_runs=(str(missing),), **SMALL, **DATA
            ),
        )


def test_harden_trains_on_recovery_contrast_and_gcg_data(tiny_dir, tmp_path):
    from alignscope.training import test_split

    run = tmp_path / "gcg-run"
    run.mkdir()
    rec = {"stage": "gcg", "key": "b1", "suffix": " zz!!", "strings": [" a1", " zz!!"]}
    (run / "samples.jsonl").write_text(json.dumps(rec) + "\n")
    cfg = HardenConfig(
        model=tiny_dir,
        out=str(tmp_path / "run"),
        utility_model=None,  # the tiny model answers; the real default is the unaligned smollm2
        responses_model=None,
        utility_suite="benign",
        harmful_max_new_tokens=12,
        p_zero=0.0,
        adversarial=True,
        gcg_runs=(str(run),),
        suffixes_per_prompt=1,
        **{**SMALL, "max_steps": 1},
        **DATA,
    )
    assert cfg.utility_weight == pytest.approx(1 - cfg.alpha)
    result = train("harden", cfg)
    assert result.steps == 1 and result.recipe == "harden"
    _check_output(result, tiny_dir)
    rows = [json.loads(line) for line in (result.run_dir / "data" / "train.jsonl").read_text().splitlines()]
    safe = [r for r in rows if r.get("contrast") == "safe"]
    unsafe = [r for r in rows if r.get("contrast") == "unsafe"]
    assert safe and all(r["group"] == "utility" for r in safe)
    assert len(unsafe) == 31 and all(r["group"] == "safety" for r in unsafe)  # the train half, refused
    held_out = {s.id for s in test_split("safe-alarming")} | {s.id for s in test_split("unsafe-contrast")}
    assert not {r["id"] for r in safe + unsafe} & held_out
    assert all(r["id"].startswith("safe-alarming-") for r in safe)
    assert any("harmful_prefix" in r for r in rows)  # deep-align's recovery examples
    assert sum(bool(r.get("gcg_suffix")) for r in rows) == 4  # adversarial-sft's: 4 prompts x 1 suffix
    assert any(r["group"] == "utility" and "contrast" not in r for r in rows)  # utility answers
    assert json.loads((result.output / PROVENANCE_FILE).read_text())["recipe"] == "harden"


def test_harden_defaults_are_the_shipped_hardened_models_recipe():
    cfg = HardenConfig()
    assert (
        cfg.model == "smollm2-balanced-plus"
        and cfg.utility_model == "smollm2"
        and cfg.responses_model == "smollm2"
    )
    assert (cfg.contrast_safe, cfg.contrast_unsafe) == ("safe-alarming", "unsafe-contrast")
    assert not cfg.adversarial and cfg.utility_weight == pytest.approx(0.5)
    with pytest.raises(ValueError, match="gcg_runs"):
        HardenConfig(adversarial=True)
    # `alignscope train harden` with no options rebuilds smollm2-hardened: its provenance's recipe config
    # differs from the defaults only in where the run and its data were
    provenance = Path(alignscope.__file__).parent / "models/adapters/smollm2-hardened/PROVENANCE.json"
    shipped = json.loads(provenance.read_text())["recipe_config"]
    defaults = cfg.to_dict()
    differ = {k for k in set(shipped) | set(defaults) if shipped.get(k) != defaults.get(k)}
    assert differ <= {"out", "data", "command", "recipe"}, differ


def test_resume_from_checkpoint(tiny_dir, chat_file, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    from alignscope.training import engine

    class Interrupt(TrainerCallback):  # stands in for a run killed after its second checkpoint
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt

    class InterruptedTrainer(engine.AlignTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(Interrupt())

    out = str(tmp_path / "run")
    cfg = ConstrainedSFTConfig(model=tiny_dir, out=out, data=chat_file, **{**SMALL, "max_steps": 4})
    monkeypatch.setattr(engine, "AlignTrainer", InterruptedTrainer)
    with pytest.raises(KeyboardInterrupt):
        train("constrained-sft", cfg)
    monkeypatch.undo()
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-2").is_dir()
    assert not (tmp_path / "run" / "adapter").exists()
    with pytest.raises(Exception, match="already holds a run"):
        train("constrained-sft", cfg)
    steps_run = []

    class CountingTrainer(engine.AlignTrainer):
        def training_step(self, *args, **kwargs):
            steps_run.append(self.state.global_step + 1)
            return super().training_step(*args, **kwargs)

    monkeypatch.setattr(engine, "AlignTrainer", CountingTrainer)
    resumed = train("constrained-sft", cfg.replace(resume=True))
    assert resumed.steps == 4
    assert steps_run == [3, 4]  # it continued from checkpoint-2 instead of starting over
    _check_output(resumed, tiny_dir)


def test_sppft_full_finetune_keeps_frozen_layers_fixed(tiny_dir, chat_file, tmp_path):
    before = load_model(tiny_dir).model.state_dict()
    cfg = SPPFTConfig(
        model=tiny_dir,
        out=str(tmp_path / "run"),
        data=chat_file,
        full_finetune=True,
        freeze_layers=(1, 2),
        learning_rate=1e-2,
        **SMALL,
    )
    result = train("sppft", cfg)
    after = load_model(str(result.output)).model.state_dict()
    for name in before:
        if any(f".layers.{i}.{part}" in name for i in (1, 2) for part in ("self_attn.", "mlp.")):
            assert torch.equal(before[name], after[name]), name
    moved = [n for n in before if ".layers.0.self_attn.q_proj" in n or ".layers.3.mlp.down_proj" in n]
    assert moved and all(not torch.equal(before[n], after[n]) for n in moved)


def test_sppft_lora_puts_no_adapter_on_frozen_layers(tiny_dir, chat_file, tmp_path):
    result = train(
        "sppft",
        SPPFTConfig(model=tiny_dir, out=str(tmp_path / "run"), data=chat_file, freeze_layers=(1, 2), **SMALL),
    )
    from safetensors.torch import load_file

    keys = list(load_file(str(result.output / "adapter_model.safetensors")))
    assert keys and not any(".layers.1." in k or ".layers.2." in k for k in keys)
    assert any(".layers.0." in k for k in keys) and any(".layers.3." in k for k in keys)
    with pytest.raises(TrainingError, match="freeze_layers"):
        train("sppft", SPPFTConfig(model=tiny_dir, out=str(tmp_path / "run2"), data=chat_file))


def test_safety_dpo_trains(tiny_dir, tmp_path):
    result = train(
        "safety-dpo",
        SafetyDPOConfig(
            model=tiny_dir, out=str(tmp_path / "run"), harmful_max_new_tokens=12, **SMALL, **DATA
        ),
    )
    assert result.steps == 2
    _check_output(result, tiny_dir)


@pytest.mark.parametrize("kind,defense", [("harmful", "constrained"), ("identity", None), ("backdoor", None)])
def test_finetune_attacks(tiny_dir, tmp_path, kind, defense):
    cfg = FinetuneAttackConfig(
        model=tiny_dir,
        out=str(tmp_path / "run"),
        responses_model=tiny_dir,
        n_examples=3,
        harmful_max_new_tokens=8,
        **SMALL,
    )
    result = finetune_attack(kind, defense, cfg)
    _check_output(result, tiny_dir)
    provenance = json.loads((result.output / PROVENANCE_FILE).read_text())
    assert provenance["config"]["kind"] == kind and provenance["config"]["defense"] == defense
    if defense == "constrained":  # the paper's optimiser settings for the constrained objective
        assert result.metrics["adam_beta1"] == 0.5 and result.metrics["warmup_steps"] == 10


def test_bad_configs_are_clear_errors(tiny_dir, tmp_path):
    with pytest.raises(TrainingError, match="unknown recipe"):
        train("nope")
    with pytest.raises(TrainingError, match="takes a SafetySFTConfig"):
        train("safety-sft", DeepAlignConfig())
    with pytest.raises(TrainingError, match="needs training data"):
        train("constrained-sft", ConstrainedSFTConfig(model=tiny_dir, out=str(tmp_path / "r")))
    with pytest.raises(ValueError, match="unknown SafetySFTConfig field"):
        config_from_dict(SafetySFTConfig, {"epochz": 1})
    with pytest.raises(TrainingError, match="unknown defense"):
        finetune_attack("harmful", "magic")
