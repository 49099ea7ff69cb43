"""Safety-partial-parameter fine-tuning (SPPFT): keep the safety layers fixed while fine-tuning the rest.

Li et al., "Safety Layers in Aligned Large Language Models" (ICLR 2025, arXiv 2408.17003), section 4: freezing
the attention and MLP weights (q, k, v, o, gate, up, down) of the safety layers during fine-tuning keeps the
harmful rate close to the aligned model's (normal data: +3.5 points vs +25.5 for full fine-tuning), while
freezing layers before or after the range does not protect.

Layer indices here are 0-based decoder layers (``model.model.layers[i]`` for Llama-style models), the same
numbering :mod:`alignscope.analysis.layer_scan` reports. Ranges are inclusive at both ends, as in the paper
("layers [6, 12]").

Two ways to use it:

* full fine-tuning: :func:`freeze_layers` sets ``requires_grad=False`` on the safety layers' weights
  before the optimizer is built (Trainer only optimises parameters that require grad);
* LoRA: :func:`lora_layer_config` gives ``target_modules`` and ``layers_to_transform`` for
  :class:`peft.LoraConfig` so no adapter is placed on a frozen layer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from alignscope.analysis.layer_access import (
    LAYER_WEIGHTS,
    LayerAccessError,
    decoder_layers,
    layer_indices,
    layer_weights,
    unwrap_model,
)

__all__ = [
    "LAYER_WEIGHTS",
    "FrozenLayers",
    "LayerAccessError",
    "decoder_layers",
    "freeze_layers",
    "layer_indices",
    "layer_weights",
    "lora_layer_config",
    "unfreeze_layers",
    "unwrap_model",
]

log = logging.getLogger("alignscope.training")


@dataclass(frozen=True)
class FrozenLayers:
    """What :func:`freeze_layers` froze: the layer indices and the parameter count, for logs and run
    configs."""

    layers: tuple[int, ...]
    modules: tuple[str, ...]
    frozen_parameters: int
    trainable_parameters: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "modules": list(self.modules),
            "frozen_parameters": self.frozen_parameters,
            "trainable_parameters": self.trainable_parameters,
        }


def freeze_layers(
    model: Any, layers: Iterable[int] | tuple[int, int] | range, modules: Sequence[str] = LAYER_WEIGHTS
) -> FrozenLayers:
    """SPPFT (Li et al. 2024): set ``requires_grad=False`` on the attention and MLP weights of ``layers``.

    Call it before the optimizer is built: ``transformers.Trainer`` leaves parameters that do not require grad
    out of the optimizer, so neither gradients nor weight decay can move them. Norms, embeddings and the other
    layers stay trainable. Returns what was frozen.
    """
    stack = decoder_layers(model)
    chosen = layer_indices(layers, len(stack))
    frozen = 0
    for _, weight in layer_weights(model, chosen, modules):
        weight.requires_grad_(False)
        frozen += weight.numel()
    trainable = sum(p.numel() for p in unwrap_model(model).parameters() if p.requires_grad)
    log.info("SPPFT: froze %s of layers %s (%d parameters)", ",".join(modules), _fmt_layers(chosen), frozen)
    return FrozenLayers(tuple(chosen), tuple(modules), frozen, trainable)


def unfreeze_layers(
    model: Any, layers: Iterable[int] | tuple[int, int] | range, modules: Sequence[str] = LAYER_WEIGHTS
) -> None:
    """Undo :func:`freeze_layers` (``requires_grad=True`` again)."""
    for _, weight in layer_weights(model, layers, modules):
        weight.requires_grad_(True)


def lora_layer_config(
    model: Any,
    frozen: Iterable[int] | tuple[int, int] | range,
    target_modules: Sequence[str] = LAYER_WEIGHTS,
) -> dict[str, Any]:
    """Keyword arguments for :class:`peft.LoraConfig` that put adapters on every decoder layer except the
    frozen safety layers (SPPFT with LoRA, Li et al. 2024).

    Returns ``{"target_modules": [...], "layers_to_transform": [...], "layers_pattern": "layers"}``; use as
    ``LoraConfig(r=8, **lora_layer_config(model, (6, 12)))``. Raises :class:`LayerAccessError` when every
    layer would be frozen (peft would then adapt all layers, the opposite of what was asked).
    """
    n = len(decoder_layers(model))
    skip = set(layer_indices(frozen, n))
    keep = [i for i in range(n) if i not in skip]
    if not keep:
        raise LayerAccessError("every decoder layer is frozen: there is nothing left for LoRA to adapt")
    return {"target_modules": list(target_modules), "layers_to_transform": keep, "layers_pattern": "layers"}


def _fmt_layers(layers: Sequence[int]) -> str:
    if layers and list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"[{layers[0]}, {layers[-1]}]"
    return str(list(layers))
