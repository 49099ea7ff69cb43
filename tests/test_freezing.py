"""SPPFT freezing utility (Li et al. 2024): frozen safety-layer weights do not move, the rest does."""

from __future__ import annotations

import pytest
import torch

from alignscope.testing import tiny_llama
from alignscope.training.freezing import (
    LAYER_WEIGHTS,
    LayerAccessError,
    decoder_layers,
    freeze_layers,
    layer_indices,
    lora_layer_config,
    unfreeze_layers,
)

FROZEN = (1, 2)


def _is_frozen_weight(name: str) -> bool:
    return any(f"layers.{i}." in name for i in range(FROZEN[0], FROZEN[1] + 1)) and any(
        f"{m}.weight" in name for m in LAYER_WEIGHTS
    )


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("all_params_in_optimizer", [False, True])
def test_frozen_weights_do_not_change_after_an_optimizer_step(all_params_in_optimizer: bool):
    model = tiny_llama(vocab_size=64, layers=4).train()
    info = freeze_layers(model, FROZEN)
    assert info.layers == (1, 2) and info.frozen_parameters > 0
    assert info.trainable_parameters == sum(p.numel() for p in model.parameters() if p.requires_grad)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    params = (
        model.parameters() if all_params_in_optimizer else (p for p in model.parameters() if p.requires_grad)
    )
    # weight decay would move a frozen weight if the optimizer touched it; AdamW skips params without grad
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    _step(model, optimizer)
    frozen = [k for k in before if _is_frozen_weight(k)]
    assert len(frozen) == 2 * len(LAYER_WEIGHTS)
    for name, param in model.named_parameters():
        if _is_frozen_weight(name):
            assert torch.equal(param, before[name]), name
            assert not param.requires_grad
        else:
            assert not torch.equal(param, before[name]), f"{name} should have been trained"


def test_frozen_layers_with_transformers_trainer(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = tiny_llama(vocab_size=64, layers=4)
    freeze_layers(model, FROZEN)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(0, 64, (10,), generator=g).tolist()} for _ in range(4)]
    data = Dataset.from_list([{**r, "labels": r["input_ids"]} for r in rows])
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        weight_decay=0.1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_strategy="no",
    )
    Trainer(model=model, args=args, train_dataset=data).train()
    for name, param in model.named_parameters():
        if _is_frozen_weight(name):
            assert torch.equal(param.detach(), before[name]), name
    assert not torch.equal(
        model.model.layers[0].self_attn.q_proj.weight.detach(),
        before["model.layers.0.self_attn.q_proj.weight"],
    )


def test_unfreeze_restores_requires_grad():
    model = tiny_llama(vocab_size=64, layers=3)
    freeze_layers(model, [0, 2])
    assert not model.model.layers[2].mlp.down_proj.weight.requires_grad
    assert model.model.layers[1].mlp.down_proj.weight.requires_grad
    unfreeze_layers(model, [0, 2])
    assert all(p.requires_grad for p in model.parameters())


def test_lora_config_skips_frozen_layers():
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(vocab_size=64, layers=4)
    kwargs = lora_layer_config(model, FROZEN)
    assert kwargs["layers_to_transform"] == [0, 3]
    assert kwargs["target_modules"] == list(LAYER_WEIGHTS)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, **kwargs))
    adapted = {n.split(".layers.")[1].split(".")[0] for n, _ in peft_model.named_parameters() if "lora_" in n}
    assert adapted == {"0", "3"}
    # the layer helpers see through the PEFT wrapper
    assert len(decoder_layers(peft_model)) == 4
    before = {k: v.detach().clone() for k, v in peft_model.named_parameters()}
    optimizer = torch.optim.AdamW((p for p in peft_model.parameters() if p.requires_grad), lr=1e-2)
    ids = torch.randint(0, 64, (2, 12))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert not any(f"layers.{i}." in n for n in changed for i in (1, 2))
    with pytest.raises(LayerAccessError, match="nothing left"):
        lora_layer_config(model, (0, 3))


def test_layer_indices():
    assert layer_indices((2, 4), 10) == [2, 3, 4]
    assert layer_indices([5, 1, 1], 10) == [1, 5]
    assert layer_indices((-3, -1), 10) == [7, 8, 9]
    assert layer_indices(range(3), 10) == [0, 1, 2]
    with pytest.raises(LayerAccessError, match="out of range"):
        layer_indices((8, 12), 10)
    with pytest.raises(LayerAccessError, match="empty"):
        layer_indices((4, 2), 10)
