"""Finding the decoder layers of Llama-style causal LMs and their projection weights, shared by the
safety-layer analyses and SPPFT.

Li et al., "Safety Layers in Aligned Large Language Models" (ICLR 2025, arXiv 2408.17003) scale
(over-rejection) and freeze (SPPFT) the attention and MLP projections of a range of decoder layers. Layer
indices are 0-based (``model.model.layers[i]``); a 2-tuple ``(start, end)`` is an inclusive range, as the
paper writes ``[6, 12]``.

This module only needs torch, so the probe guard and the analyses load without the training stack.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

LAYER_WEIGHTS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The projections Li et al. scale (over-rejection) and freeze (SPPFT): attention q, k, v, o and MLP gate, up,
down."""

_CONTAINERS = ("self_attn", "mlp")


class LayerAccessError(ValueError):
    """The model has no Llama-style decoder-layer stack, or a layer index is out of range."""


def unwrap_model(model: Any) -> nn.Module:
    """The ``torch.nn.Module`` behind an alignscope :class:`~alignscope.models.LocalModel` or a plain
    module."""
    inner = getattr(model, "model", None)
    if not isinstance(model, nn.Module) and isinstance(inner, nn.Module):
        return inner
    if isinstance(model, nn.Module):
        return model
    raise LayerAccessError(f"expected a torch module or a LocalModel, got {type(model).__name__}")


def decoder_layers(model: Any) -> nn.ModuleList:
    """The decoder-layer stack of a Llama-style causal LM (``model.model.layers``), also through a PEFT
    wrapper (``base_model.model.model.layers``) or a :class:`~alignscope.models.LocalModel`."""
    module = unwrap_model(model)
    candidates = [
        ("model", "layers"),
        ("base_model", "model", "model", "layers"),
        ("model", "model", "layers"),
        ("layers",),
    ]
    for path in candidates:
        obj: Any = module
        for attr in path:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise LayerAccessError(
        f"{type(module).__name__} has no Llama-style decoder layers (looked for model.layers, "
        "base_model.model.model.layers); safety-layer tools support Llama, Mistral, Qwen, Gemma and "
        "SmolLM style models"
    )


def layer_indices(layers: Iterable[int] | tuple[int, int] | range, n_layers: int) -> list[int]:
    """Normalise a layer selection to a sorted list of indices.

    A 2-tuple ``(start, end)`` is an inclusive range (the paper's ``[6, 12]``); any other iterable lists the
    layers. Negative indices count from the end. Raises :class:`LayerAccessError` on an out-of-range index.
    """
    if isinstance(layers, tuple) and len(layers) == 2 and not isinstance(layers, range):
        start, end = (int(x) for x in layers)
        start, end = (start + n_layers if start < 0 else start), (end + n_layers if end < 0 else end)
        if start > end:
            raise LayerAccessError(f"layer range [{start}, {end}] is empty (start > end)")
        chosen = list(range(start, end + 1))
    else:
        chosen = [int(i) + n_layers if int(i) < 0 else int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < n_layers]
    if bad:
        raise LayerAccessError(
            f"layer index {bad[0]} is out of range for a model with {n_layers} decoder layers"
        )
    return sorted(set(chosen))


def layer_weights(
    model: Any, layers: Iterable[int] | tuple[int, int] | range, modules: Sequence[str] = LAYER_WEIGHTS
) -> list[tuple[str, nn.Parameter]]:
    """``(qualified name, weight)`` of the ``modules`` projections in the chosen decoder layers.

    Only ``.weight`` tensors are returned (Li et al. scale and freeze weights; Llama-style models have no
    projection biases). Raises :class:`LayerAccessError` when a layer lacks one of the modules.
    """
    stack = decoder_layers(model)
    out: list[tuple[str, nn.Parameter]] = []
    for i in layer_indices(layers, len(stack)):
        layer = stack[i]
        for name in modules:
            proj = _find_projection(layer, name)
            if proj is None:
                raise LayerAccessError(f"decoder layer {i} has no {name!r} under self_attn or mlp")
            weight = proj.weight
            # a PEFT LoRA layer wraps the original Linear; its ``weight`` is the frozen base weight
            out.append((f"layers.{i}.{name}.weight", weight))
    return out


def _find_projection(layer: nn.Module, name: str) -> Any:
    for container in _CONTAINERS:
        parent = getattr(layer, container, None)
        proj = getattr(parent, name, None) if parent is not None else None
        if proj is not None and isinstance(getattr(proj, "weight", None), torch.Tensor):
            return proj
    return None
