"""The layer-wise cosine scan: where an aligned model starts telling malicious prompts from normal ones.

Method: Li et al., "Safety Layers in Aligned Large Language Models" (ICLR 2025, arXiv 2408.17003), section 3.

* For every prompt, the hidden state of the last prompt token (the one that predicts the first response token)
  at the output of every decoder layer, embeddings excluded: a cache of shape ``(n_prompts, n_layers,
  hidden)``, computed once per prompt (the authors' code ran one forward pass per pair).
* ``r`` random pairs of each kind, drawn with a recorded seed: N-N (two different normal prompts), N-M (a
  normal and a malicious prompt), M-M (two different malicious prompts). Per layer, the mean and standard
  deviation of the cosine similarity over the draws.
* The gap curve ``angle(N-M) - angle(N-N)`` in degrees, each angle the arccos of the mean cosine (as the
  authors took it). It is near zero in early layers, opens in the middle layers, rises fastest, then
  flattens; the layers from where it opens to where it first flattens are the initial safety-layer range.
  Unaligned base models show no such gap: the control.

Where the paper marked the range by eye, :func:`detect_safety_range` applies a documented deterministic rule.
The range is then refined by over-rejection (:mod:`alignscope.analysis.overrejection`).

Layers are 0-based decoder-layer indices (``model.model.layers[i]``); as in transformers, the last layer's
hidden state is taken after the final norm.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from alignscope.config_io import ConfigIO
from alignscope.models import LocalModel, user_turn
from alignscope.models.fast_linear import fp32_linears
from alignscope.validation import FieldChecks

log = logging.getLogger("alignscope.analysis")

PAIR_KINDS: tuple[str, ...] = ("N-N", "N-M", "M-M")
"""Pair kinds, in plotting order: normal-normal, normal-malicious, malicious-malicious."""


@dataclass(frozen=True)
class SafetyLayerScanConfig(ConfigIO):
    """Settings of the layer-wise cosine scan (Li et al. 2024, section 3.2).

    Attributes:
        draws: r, random pairs drawn for each kind (N-N, N-M, M-M); the authors used 500 from 100 + 100
        prompts.
        seed: seed of the pair draws (numpy ``default_rng``); recorded with the result.
        template: ``"chat"`` formats prompts with the model's own chat template, ``"plain"`` with alignscope's
            plain instruction template (:data:`alignscope.models.PLAIN_TEMPLATE`).
        batch_size: prompts per forward pass when reading hidden states.
        system_prompt: system message for every prompt (None: the template's default, if any).
    """

    draws: int = 500
    seed: int = 0
    template: Literal["chat", "plain"] = "chat"
    batch_size: int = 16
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.at_least(1, "draws", "batch_size")
        check.one_of("template", ("chat", "plain"))


@dataclass(frozen=True)
class SafetyLayerScan:
    """Result of :func:`scan_safety_layers`.

    Attributes:
        model: the model's name (spec).
        template: which chat template formatted the prompts.
        n_normal, n_malicious: prompts of each kind.
        config: the scan settings (draws, seed, ...).
        pairs: per kind, the drawn prompt-index pairs, ``(draws, 2)`` int arrays; column 0 indexes the first
            group (normal for N-N and N-M, malicious for M-M), column 1 the second (malicious for N-M).
        cosines: per kind, the cosine of every draw at every layer, ``(draws, n_layers)``.
        mean, std: per kind, ``(n_layers,)`` mean and standard deviation (ddof=0) of the cosines over draws.
        angle: per kind, ``(n_layers,)`` arccos of the mean cosine, in degrees.
        gap: ``(n_layers,)`` ``angle["N-M"] - angle["N-N"]`` in degrees.
    """

    model: str
    template: str
    n_normal: int
    n_malicious: int
    config: SafetyLayerScanConfig
    pairs: dict[str, np.ndarray]
    cosines: dict[str, np.ndarray]
    mean: dict[str, np.ndarray] = field(repr=False)
    std: dict[str, np.ndarray] = field(repr=False)
    angle: dict[str, np.ndarray] = field(repr=False)
    gap: np.ndarray = field(repr=False)

    @property
    def n_layers(self) -> int:
        return int(self.gap.shape[0])

    def to_dict(self, include_draws: bool = False) -> dict[str, Any]:
        """JSON-able summary: per-layer curves (and, on request, every pair and cosine)."""
        out: dict[str, Any] = {
            "model": self.model,
            "template": self.template,
            "n_normal": self.n_normal,
            "n_malicious": self.n_malicious,
            "config": asdict(self.config),
            "n_layers": self.n_layers,
            "mean_cosine": {k: _floats(v) for k, v in self.mean.items()},
            "std_cosine": {k: _floats(v) for k, v in self.std.items()},
            "angle_deg": {k: _floats(v) for k, v in self.angle.items()},
            "gap_deg": _floats(self.gap),
        }
        if include_draws:
            out["pairs"] = {k: v.tolist() for k, v in self.pairs.items()}
            out["cosines"] = {k: v.tolist() for k, v in self.cosines.items()}
        return out


def with_template(model: LocalModel, template: str) -> LocalModel:
    """The same weights behind a :class:`LocalModel` that formats prompts with ``template`` (no copy)."""
    if model.template == template:
        return model
    return LocalModel(model.model, model.tokenizer, name=model.name, template=template)


def prompt_hidden_states(
    model: LocalModel,
    prompts: Sequence[str],
    template: str = "chat",
    batch_size: int = 16,
    system_prompt: str | None = None,
) -> torch.Tensor:
    """Last-prompt-token hidden states of ``prompts`` (single user turns): ``(n, n_layers, hidden)``
    float32 (see :func:`last_token_states`)."""
    view = with_template(model, template)
    conversations = [user_turn(p, system_prompt) for p in prompts]
    return last_token_states(view, conversations, batch_size=batch_size)


MIN_SHARED_PREFIX = 8
""":func:`last_token_states` runs the start all prompts share once when it is at least this many tokens."""


@torch.inference_mode()
def last_token_states(model: LocalModel, conversations: Sequence[Any], batch_size: int = 16) -> torch.Tensor:
    """:meth:`LocalModel.last_token_hidden_states` for a whole prompt set, with the same numbers (to float32
    rounding) in less time: ``(n_prompts, n_layers, hidden)`` float32 on CPU.

    * prompts are batched by length, so batches hold little padding;
    * the tokens every prompt starts with (the chat template's system turn, 24 of SmolLM2's ~35-45) run
      once; each batch continues from a copy of their KV cache, its own tokens left-padded after them with
      positions taken from the attention mask, so every real token keeps its position;
    * float32 linear layers run through oneDNN where that beats torch's BLAS
      (:mod:`alignscope.models.fast_linear`).
    """
    encoded = [model.encode_prompt(c) for c in conversations]
    n_layers, hidden = model.num_layers, int(model.model.config.hidden_size)
    out = torch.zeros((len(encoded), n_layers, hidden))
    if not encoded:
        return out
    net = model.model
    params = inspect.signature(net.forward).parameters
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    shared = _shared_start(encoded) if _plain_cache(net) else 0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    with fp32_linears(net, model.fp32_linear):
        prefix_cache = None
        if shared:
            ids = torch.tensor([encoded[0][:shared]], device=model.device)
            prefix_cache = _cache_of(net(input_ids=ids, use_cache=True, **extra))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = model.left_pad([encoded[i][shared:] for i in idx])
            kwargs: dict[str, Any] = {"attention_mask": mask}
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(idx))
                kwargs = {
                    "cache" if "cache" in params else "past_key_values": cache,
                    "attention_mask": torch.cat([mask.new_ones(len(idx), shared), mask], dim=1),
                    "position_ids": (shared + mask.cumsum(-1) - 1).clamp(min=shared),
                }
            hs = net(input_ids=ids, output_hidden_states=True, **kwargs, **extra).hidden_states
            out[idx] = torch.stack([h[:, -1, :] for h in hs[1:]], dim=1).float().cpu()
    return out


def _shared_start(encoded: list[list[int]]) -> int:
    """Leading tokens all prompts share (each keeps at least one of its own); 0 when below
    :data:`MIN_SHARED_PREFIX` or for a single prompt."""
    if len(encoded) < 2:
        return 0
    n = min(len(x) for x in encoded) - 1
    first = encoded[0]
    for x in encoded[1:]:
        n = next((i for i in range(n) if x[i] != first[i]), n)
    return n if n >= MIN_SHARED_PREFIX else 0


def _plain_cache(net: Any) -> bool:
    """A plain per-layer KV cache (no sliding windows or recurrent layers) that a prefix can be copied into."""
    cfg = getattr(net, "config", None)
    if cfg is None or getattr(cfg, "sliding_window", None) or getattr(cfg, "use_sliding_window", False):
        return False
    return set(getattr(cfg, "layer_types", None) or ["full_attention"]) == {"full_attention"}


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def draw_pairs(n_normal: int, n_malicious: int, draws: int, seed: int) -> dict[str, np.ndarray]:
    """The random pairs of each kind, ``(draws, 2)`` int64 arrays, from one seeded generator.

    N-N and M-M pairs are two different prompts (drawn uniformly among ordered pairs with i != j); N-M pairs
    are a uniformly drawn normal and malicious prompt. Draws are independent (with replacement across draws),
    as in the authors' random sampling. Needs at least two prompts of each kind.
    """
    if n_normal < 2 or n_malicious < 2:
        raise ValueError(f"need at least 2 normal and 2 malicious prompts, got {n_normal} and {n_malicious}")
    rng = np.random.default_rng(seed)

    def distinct(n: int) -> np.ndarray:
        first = rng.integers(0, n, size=draws)
        # a second index uniform over the other n - 1 prompts
        second = (first + rng.integers(1, n, size=draws)) % n
        return np.stack([first, second], axis=1).astype(np.int64)

    nn_pairs = distinct(n_normal)
    nm_pairs = np.stack(
        [rng.integers(0, n_normal, size=draws), rng.integers(0, n_malicious, size=draws)], axis=1
    ).astype(np.int64)
    mm_pairs = distinct(n_malicious)
    return {"N-N": nn_pairs, "N-M": nm_pairs, "M-M": mm_pairs}


def pair_cosines(first: torch.Tensor, second: torch.Tensor, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair at every layer from cached hidden states.

    Args:
        first: ``(n_a, n_layers, hidden)`` hidden states of the group column 0 indexes.
        second: ``(n_b, n_layers, hidden)`` hidden states of the group column 1 indexes.
        pairs: ``(draws, 2)`` indices into ``first`` and ``second``.

    Returns:
        ``(draws, n_layers)`` float64 cosines. Computed from the per-layer Gram matrix of unit vectors
        (``(n_layers, n_a, n_b)``), so the cost grows with the number of prompts, not the number of draws.
    """
    a = _unit(first)
    b = _unit(second)
    gram = torch.einsum("ilh,jlh->lij", a, b)  # (n_layers, n_a, n_b)
    i = torch.as_tensor(pairs[:, 0])
    j = torch.as_tensor(pairs[:, 1])
    return gram[:, i, j].T.contiguous().numpy()


def _unit(h: torch.Tensor) -> torch.Tensor:
    h = h.to(torch.float64)
    return h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def scan_from_hidden(
    normal: torch.Tensor,
    malicious: torch.Tensor,
    config: SafetyLayerScanConfig | None = None,
    model_name: str = "",
    template: str = "",
) -> SafetyLayerScan:
    """The cosine scan from precomputed hidden states (Li et al. 2024).

    Args:
        normal: ``(n_normal, n_layers, hidden)`` last-prompt-token hidden states of normal prompts.
        malicious: ``(n_malicious, n_layers, hidden)`` the same for malicious prompts.
        config: draws and seed (the template and batch size fields are not used here).
    """
    config = config or SafetyLayerScanConfig()
    if normal.ndim != 3 or malicious.ndim != 3 or normal.shape[1:] != malicious.shape[1:]:
        raise ValueError(
            f"hidden states must be (n, layers, hidden) with matching layers and width, "
            f"got {tuple(normal.shape)} and {tuple(malicious.shape)}"
        )
    pairs = draw_pairs(normal.shape[0], malicious.shape[0], config.draws, config.seed)
    groups = {"N-N": (normal, normal), "N-M": (normal, malicious), "M-M": (malicious, malicious)}
    cosines = {k: pair_cosines(*groups[k], pairs[k]) for k in PAIR_KINDS}
    mean = {k: v.mean(axis=0) for k, v in cosines.items()}
    std = {k: v.std(axis=0) for k, v in cosines.items()}
    angle = {k: mean_cosine_angle(v) for k, v in mean.items()}
    return SafetyLayerScan(
        model=model_name,
        template=template,
        n_normal=int(normal.shape[0]),
        n_malicious=int(malicious.shape[0]),
        config=config,
        pairs=pairs,
        cosines=cosines,
        mean=mean,
        std=std,
        angle=angle,
        gap=angle["N-M"] - angle["N-N"],
    )


def mean_cosine_angle(mean_cosine: np.ndarray) -> np.ndarray:
    """``arccos`` of mean cosines, in degrees (clipped to [-1, 1] against rounding)."""
    return np.degrees(np.arccos(np.clip(mean_cosine, -1.0, 1.0)))


def scan_safety_layers(
    model: LocalModel,
    normal_prompts: Sequence[str],
    malicious_prompts: Sequence[str],
    config: SafetyLayerScanConfig | None = None,
) -> SafetyLayerScan:
    """Layer-wise cosine scan of Li et al. (2024): hidden states once per prompt, pairs drawn from the cache.

    Args:
        model: a local model (white-box access).
        normal_prompts: benign instructions (N).
        malicious_prompts: harmful instructions (M).
        config: draws, seed, template, batch size; see :class:`SafetyLayerScanConfig`.

    Returns:
        a :class:`SafetyLayerScan` with ``(n_layers,)`` mean/std cosine curves per pair kind and the gap
        curve.
    """
    config = config or SafetyLayerScanConfig()
    view = with_template(model, config.template)
    normal = prompt_hidden_states(
        view, normal_prompts, config.template, config.batch_size, config.system_prompt
    )
    malicious = prompt_hidden_states(
        view, malicious_prompts, config.template, config.batch_size, config.system_prompt
    )
    return scan_from_hidden(normal, malicious, config, model_name=model.name, template=view.template_name)


# -- range detection -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SafetyRange:
    """An inclusive range of decoder layers read off a gap curve, with the numbers the rule used.

    Attributes:
        start, end: first and last layer of the range (0-based, inclusive).
        steepest: the layer where the gap rises fastest (``gap[l] - gap[l-1]`` largest).
        rise_deg: how far the gap rises from its floor to its peak, in degrees.
        baseline_deg: the floor, the smallest gap at or before the peak.
    """

    start: int
    end: int
    steepest: int
    rise_deg: float
    baseline_deg: float

    def as_tuple(self) -> tuple[int, int]:
        return (self.start, self.end)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"[{self.start}, {self.end}]"


@dataclass(frozen=True)
class RangeRule(ConfigIO):
    """Thresholds of :func:`detect_safety_range` (the rule is documented there).

    Attributes:
        min_rise_deg: smallest rise of the gap (degrees, floor to peak) that counts as a range.
        open_fraction: the range starts where the gap exceeds the floor by this share of the rise.
        flat_fraction: the range ends where the next increment falls below this share of the steepest one.
        smooth: layers in the centred moving average applied to the gap first (1: none).
    """

    min_rise_deg: float = 2.0
    open_fraction: float = 0.1
    flat_fraction: float = 0.25
    smooth: int = 3


def smooth_curve(curve: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` layers; at the edges, the mean of the layers available."""
    g = np.asarray(curve, dtype=np.float64)
    if window <= 1:
        return g.copy()
    kernel = np.ones(window)
    return np.asarray(np.convolve(g, kernel, mode="same") / np.convolve(np.ones_like(g), kernel, mode="same"))


def detect_safety_range(
    gap: Sequence[float] | np.ndarray,
    *,
    min_rise_deg: float = RangeRule.min_rise_deg,
    open_fraction: float = RangeRule.open_fraction,
    flat_fraction: float = RangeRule.flat_fraction,
    smooth: int = RangeRule.smooth,
) -> SafetyRange | None:
    """Read the initial safety-layer range off a gap curve with a fixed rule (Li et al. 2024, section 3.3,
    where the authors marked it by eye).

    Rule, on the gap ``g`` (``(n_layers,)`` degrees) after a centred moving average over ``smooth`` layers
    (1 = none; 3 by default, because a scan of a few dozen prompts has per-layer noise of a few tenths of a
    degree and single-layer increments would chase it):

    1. ``peak`` = the layer of the largest gap (the first on ties); ``floor`` = the smallest gap at or before
       ``peak``; ``rise = g[peak] - floor``. If ``rise < min_rise_deg`` there is no range: return None. This
       is the unaligned control's case: harmful and benign prompts differ in topic, so a base model's gap is
       not exactly zero, but it stays small. Measured on SmolLM2-135M-Instruct (no refusal training) with
       16-32 prompts per side: rises of 0.2 (chat template) to 1.4 degrees (plain template); a 16-step
       refusal LoRA of it: 6.5 degrees.
    2. Increments ``d[l] = g[l] - g[l-1]``; ``steepest`` = the layer after the floor and up to ``peak`` with
       the largest increment.
    3. ``start`` = the first layer at or after the floor whose gap exceeds ``floor + open_fraction * rise``
       (where the gap opens), capped at ``steepest``.
    4. ``end`` = the first layer ``l >= steepest`` whose next increment ``d[l+1]`` falls below
       ``flat_fraction * d[steepest]`` (where the rise first flattens), or ``peak`` if none does first.

    Deterministic: the same curve always gives the same range. ``rise_deg`` and ``baseline_deg`` of the
    result are on the smoothed curve.
    """
    raw = np.asarray(gap, dtype=np.float64)
    if raw.ndim != 1 or raw.size < 2:
        raise ValueError(f"gap must be a 1-D curve over at least 2 layers, got shape {raw.shape}")
    if not np.all(np.isfinite(raw)):
        raise ValueError("gap curve contains NaN or infinite values")
    if smooth < 1:
        raise ValueError(f"smooth must be at least 1, got {smooth}")
    if not 0.0 <= open_fraction < 1.0 or not 0.0 <= flat_fraction < 1.0:
        raise ValueError("open_fraction and flat_fraction must lie in [0, 1)")
    g = smooth_curve(raw, smooth)
    peak = int(np.argmax(g))
    floor_layer = int(np.argmin(g[: peak + 1]))
    floor = float(g[floor_layer])
    rise = float(g[peak] - floor)
    if rise < min_rise_deg or peak == floor_layer:
        return None
    d = np.diff(g, prepend=g[0])  # d[l] = g[l] - g[l-1], d[0] = 0
    steepest = floor_layer + 1 + int(np.argmax(d[floor_layer + 1 : peak + 1]))
    threshold = floor + open_fraction * rise
    start = min(next(layer for layer in range(floor_layer, peak + 1) if g[layer] > threshold), steepest)
    end = next((layer for layer in range(steepest, peak) if d[layer + 1] < flat_fraction * d[steepest]), peak)
    return SafetyRange(start=start, end=end, steepest=steepest, rise_deg=rise, baseline_deg=floor)


# -- plotting ------------------------------------------------------------------------------------------------


def plot_safety_layer_scan(
    scan: SafetyLayerScan,
    path: str | os.PathLike[str],
    safety_range: SafetyRange | tuple[int, int] | None = None,
    control: SafetyLayerScan | None = None,
    control_range: SafetyRange | tuple[int, int] | None = None,
    title: str | None = None,
) -> Path:
    """Two panels: mean cosine per layer for N-N, N-M, M-M (shaded +-1 std), and the angle-gap curve with the
    safety-layer range shaded; a control model's gap is drawn dashed. The format follows the suffix of
    ``path`` (``.png`` or ``.svg``). Returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    layers = np.arange(scan.n_layers)
    fig, (ax_cos, ax_gap) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"N-N": "tab:blue", "N-M": "tab:red", "M-M": "tab:orange"}
    for kind in PAIR_KINDS:
        m, s = scan.mean[kind], scan.std[kind]
        ax_cos.plot(layers, m, label=kind, color=colors[kind])
        ax_cos.fill_between(layers, m - s, m + s, color=colors[kind], alpha=0.15)
    ax_cos.set_xlabel("decoder layer")
    ax_cos.set_ylabel("cosine similarity (mean ± std)")
    ax_cos.set_title(f"last-prompt-token cosine, r={scan.config.draws}")
    ax_cos.legend()
    ax_gap.plot(layers, scan.gap, color="tab:red", marker=".", label=scan.model or "model")
    rng = _as_range(safety_range)
    if rng is not None:
        ax_gap.axvspan(
            rng[0] - 0.5, rng[1] + 0.5, color="tab:green", alpha=0.2, label=f"safety layers {list(rng)}"
        )
    if control is not None:
        ax_gap.plot(
            np.arange(control.n_layers),
            control.gap,
            color="tab:gray",
            linestyle="--",
            marker=".",
            label=f"control: {control.model or 'control'}",
        )
        crng = _as_range(control_range)
        if crng is not None:
            ax_gap.axvspan(crng[0] - 0.5, crng[1] + 0.5, color="tab:gray", alpha=0.1)
    ax_gap.axhline(0.0, color="black", linewidth=0.5)
    ax_gap.set_xlabel("decoder layer")
    ax_gap.set_ylabel("angle(N-M) - angle(N-N) [deg]")
    ax_gap.set_title("angle gap" + ("" if rng is not None else " (no safety-layer range found)"))
    ax_gap.legend(fontsize=8)
    fig.suptitle(title or f"Safety layers (Li et al. 2024): {scan.model}, {scan.template}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _as_range(r: SafetyRange | tuple[int, int] | None) -> tuple[int, int] | None:
    if r is None:
        return None
    return r.as_tuple() if isinstance(r, SafetyRange) else (int(r[0]), int(r[1]))


def _floats(a: np.ndarray) -> list[float | None]:
    return [float(x) if math.isfinite(float(x)) else None for x in np.asarray(a).ravel()]
