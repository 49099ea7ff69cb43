"""A linear probe on the safety layers as a guard that runs before any token is generated.

Li et al., "Safety Layers in Aligned Large Language Models" (ICLR 2025, arXiv 2408.17003) show that the
last-prompt-token hidden states of the middle ("safety") layers separate malicious from normal prompts. Beyond
the paper, a logistic regression on those states is a cheap detector (compare the refusal direction of Arditi
et al. 2024, the difference of mean activations of harmful and harmless prompts): one partial forward pass
over the prompt, no generation.

:func:`fit_probes` fits one probe per layer on a training split and reads, on a validation split, its AUROC
and an operating point (the threshold that keeps the false-positive rate on benign validation prompts at or
below ``target_fpr``); with borderline-safe prompts it also reports each layer's false-refusal rate there. The
guard (:class:`ProbeGuard`) keeps the best layer's probe and is saved as a small JSON file.

That is the harmful-vs-benign fit. The default fit of the safety-layers experiment adds contrastive pairs
(alarming-but-safe prompts vs their unsafe twins) and reports held-out rates:
:mod:`alignscope.analysis.probe_contrast`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignscope.analysis.layer_access import decoder_layers
from alignscope.analysis.layer_scan import prompt_hidden_states, with_template
from alignscope.models import Conversation, LocalModel, ModelError, user_turn
from alignscope.stats import wilson

log = logging.getLogger("alignscope.analysis")

FORMAT = "alignscope-probe-guard"
FORMAT_VERSION = 1
REFUSAL_TEXT = "I'm sorry, but I can't help with that request."
"""What a guarded endpoint answers instead of generating when the probe flags a prompt."""


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of the probe fit.

    Attributes:
        C: inverse L2 regularisation strength of the logistic regression (scikit-learn's ``C``).
        validation_fraction: share of each class held out to measure AUROC and set the threshold.
        target_fpr: operating point: the threshold is the smallest that flags at most this share of the benign
            validation prompts (in the contrastive fit: of each negative group's validation prompts, benign and
            alarming-but-safe).
        seed: seed of the train/validation split.
        max_iter: iteration cap of the lbfgs solver.
        template: ``"chat"`` or ``"plain"``, as in
        :class:`~alignscope.analysis.layer_scan.SafetyLayerScanConfig`.
        batch_size: prompts per forward pass when reading hidden states.
    """

    C: float = 1.0
    validation_fraction: float = 0.3
    target_fpr: float = 0.05
    seed: int = 0
    max_iter: int = 2000
    template: str = "chat"
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must lie in (0, 1), got {self.validation_fraction}")
        if not 0.0 <= self.target_fpr < 1.0:
            raise ValueError(f"target_fpr must lie in [0, 1), got {self.target_fpr}")


@dataclass(frozen=True)
class LinearProbe:
    """Logistic regression on one layer's standardised hidden states.

    ``logit(h) = ((h - mean) / scale) @ coef + intercept``; positive means harmful. ``coef``, ``mean`` and
    ``scale`` are ``(hidden,)`` float arrays.
    """

    layer: int
    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray

    def logits(self, hidden: np.ndarray | torch.Tensor) -> np.ndarray:
        """``(n, hidden)`` hidden states of this probe's layer -> ``(n,)`` log-odds of harmful."""
        h = np.asarray(hidden, dtype=np.float64)
        return np.asarray(((h - self.mean) / self.scale) @ self.coef + self.intercept)


@dataclass(frozen=True)
class LayerProbeScore:
    """One layer's probe on the validation split (and on borderline prompts when given).

    ``separation`` is d' = (mean harmful log-odds - mean benign log-odds) / pooled std on the validation split.
    ``threshold`` is on the log-odds scale; ``tpr``/``fpr`` are the harmful/benign validation shares flagged
    at it; ``false_refusals``/``n_borderline`` count borderline-safe prompts it would refuse."""

    layer: int
    auroc: float
    separation: float
    threshold: float
    tpr: float
    fpr: float
    false_refusals: int | None = None
    n_borderline: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.false_refusals is not None and self.n_borderline:
            d["false_refusal_rate"] = wilson(self.false_refusals, self.n_borderline).to_dict()
        return d


def _auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    return float(roc_auc_score(y, np.r_[positive, negative]))


def _separation(positive: np.ndarray, negative: np.ndarray) -> float:
    pooled = math.sqrt((float(np.var(positive)) + float(np.var(negative))) / 2)
    return float((np.mean(positive) - np.mean(negative)) / max(pooled, 1e-12))


def operating_threshold(benign_logits: np.ndarray, target_fpr: float) -> float:
    """The smallest threshold ``t`` such that the share of ``benign_logits > t`` is at most ``target_fpr``."""
    s = np.sort(np.asarray(benign_logits, dtype=np.float64))
    n = len(s)
    allowed = math.floor(target_fpr * n + 1e-9)  # benign prompts that may lie above the threshold
    return float(s[n - allowed - 1]) if allowed < n else float(s[0]) - 1.0


def centred_threshold(threshold: float, logits: np.ndarray) -> float:
    """Move ``threshold`` up to midway between it and the lowest of ``logits`` above it: every validation
    prompt stays on the same side (the validation rates do not change), but a held-out prompt scoring just
    above the highest allowed negative is no longer flagged. Unchanged when nothing lies above it."""
    above = np.asarray(logits, dtype=np.float64)
    above = above[above > threshold]
    return float((threshold + above.min()) / 2) if len(above) else float(threshold)


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded (train, validation) split of ``range(n)`` with at least one item on each side."""
    if n < 2:
        raise ValueError(f"need at least 2 prompts per class to split, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, round(fraction * n)), n - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def fit_layer_probe(
    harmful: np.ndarray,
    benign: np.ndarray,
    layer: int,
    config: ProbeConfig,
    sample_weight: np.ndarray | None = None,
) -> LinearProbe:
    """Fit the logistic regression on ``(n_h, hidden)`` harmful and ``(n_b, hidden)`` benign states of a
    layer. The classes are weighted to balance; ``sample_weight`` (``(n_h + n_b,)``, harmful first) replaces
    that weighting when given."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([harmful, benign]).astype(np.float64)
    y = np.r_[np.ones(len(harmful)), np.zeros(len(benign))]
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-8] = 1.0
    balance = "balanced" if sample_weight is None else None
    clf = LogisticRegression(C=config.C, max_iter=config.max_iter, class_weight=balance)
    clf.fit((x - mean) / scale, y, sample_weight=sample_weight)
    return LinearProbe(layer, clf.coef_[0].copy(), float(clf.intercept_[0]), mean, scale)


@dataclass
class ProbeFit:
    """Per-layer probes and their validation scores; ``guard`` uses the chosen layer."""

    probes: dict[int, LinearProbe]
    scores: list[LayerProbeScore]
    chosen_layer: int
    config: ProbeConfig
    guard: ProbeGuard
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen_layer": self.chosen_layer,
            "config": asdict(self.config),
            "per_layer": [s.to_dict() for s in self.scores],
            **self.details,
        }


def fit_probes(
    harmful: torch.Tensor,
    benign: torch.Tensor,
    borderline: torch.Tensor | None = None,
    *,
    layers: Sequence[int] | None = None,
    guard_layers: Sequence[int] | None = None,
    config: ProbeConfig | None = None,
    model: LocalModel | None = None,
) -> ProbeFit:
    """Fit one probe per layer from cached hidden states and pick the guard's layer.

    Args:
        harmful: ``(n_h, n_layers, hidden)`` last-prompt-token hidden states of harmful prompts.
        benign: ``(n_b, n_layers, hidden)`` the same for benign prompts.
        borderline: ``(n_o, n_layers, hidden)`` borderline-safe prompts (alarming words, harmless intent), for
            the false-refusal rate at each layer's operating point; optional.
        layers: layers to fit (default: all).
        guard_layers: layers the guard may use, e.g. the safety-layer range (default: ``layers``). The guard
            takes the one with the highest validation AUROC, on ties the one with the largest validation
            separation d'; borderline prompts are only reported, never used to choose.
        model: bound to the returned guard, so ``fit.guard.check(...)`` works at once.
    """
    config = config or ProbeConfig()
    n_layers = harmful.shape[1]
    layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    h_train, h_val = split_indices(harmful.shape[0], config.validation_fraction, config.seed)
    b_train, b_val = split_indices(benign.shape[0], config.validation_fraction, config.seed + 1)
    probes: dict[int, LinearProbe] = {}
    scores: list[LayerProbeScore] = []
    for layer in layers:
        probe = fit_layer_probe(
            harmful[h_train, layer].numpy(), benign[b_train, layer].numpy(), layer, config
        )
        probes[layer] = probe
        scores.append(
            score_layer(probe, harmful[h_val, layer], [benign[b_val, layer]], borderline, config.target_fpr)
        )
    best = choose_layer(scores, layers, guard_layers)
    details = {
        "fit": "harmful-vs-benign",
        "n_train": {"harmful": len(h_train), "benign": len(b_train)},
        "n_validation": {"harmful": len(h_val), "benign": len(b_val)},
        "n_borderline": None if borderline is None else int(borderline.shape[0]),
    }
    guard = guard_at(best, probes[best.layer], config, n_layers, model, "harmful-vs-benign")
    return ProbeFit(probes, scores, best.layer, config, guard, details)


def score_layer(
    probe: LinearProbe,
    positive: np.ndarray | torch.Tensor,
    negative_groups: Sequence[np.ndarray | torch.Tensor],
    borderline: torch.Tensor | None,
    target_fpr: float,
    centred: bool = False,
) -> LayerProbeScore:
    """Score one layer's probe on validation states: ``positive`` is ``(n_p, hidden)``, each negative group
    ``(n_g, hidden)``. The threshold keeps every negative group's false-positive rate at or below
    ``target_fpr`` (the largest of the groups' :func:`operating_threshold`; ``centred``: then moved by
    :func:`centred_threshold`); ``fpr`` is over all negatives. ``borderline`` is ``(n_o, n_layers, hidden)``
    (all layers), only counted, never used to set anything."""
    pos = probe.logits(positive)
    groups = [probe.logits(g) for g in negative_groups if len(g)]
    if not groups or not len(pos):
        raise ValueError("a validation split needs at least one positive and one negative prompt")
    t = max(operating_threshold(g, target_fpr) for g in groups)
    neg = np.concatenate(groups)
    if centred:
        t = centred_threshold(t, np.concatenate([pos, neg]))
    fr = n_o = None
    if borderline is not None:
        n_o = int(borderline.shape[0])
        fr = int((probe.logits(borderline[:, probe.layer]) > t).sum())
    return LayerProbeScore(
        layer=probe.layer,
        auroc=_auroc(pos, neg),
        separation=_separation(pos, neg),
        threshold=t,
        tpr=float((pos > t).mean()),
        fpr=float((neg > t).mean()),
        false_refusals=fr,
        n_borderline=n_o,
    )


def choose_layer(
    scores: Sequence[LayerProbeScore], layers: Sequence[int], guard_layers: Sequence[int] | None
) -> LayerProbeScore:
    """The guard's layer among ``guard_layers`` (None: all fitted ``layers``): the highest validation AUROC,
    on ties the largest separation d', then the lowest layer."""
    allowed = set(layers if guard_layers is None else guard_layers) & set(layers)
    if not allowed:
        raise ValueError(f"guard_layers {list(guard_layers or [])} share no layer with the fitted layers")
    return min(
        (s for s in scores if s.layer in allowed),
        key=lambda s: (-s.auroc, -s.separation, s.layer),
    )


def guard_at(
    best: LayerProbeScore,
    probe: LinearProbe,
    config: ProbeConfig,
    n_layers: int,
    model: LocalModel | None,
    fit: str,
    **metrics: Any,
) -> ProbeGuard:
    """The guard of a fit: ``probe`` (the one at ``best.layer``) at ``best.threshold``, its metrics naming the
    ``fit`` and ``best``'s validation scores, then ``metrics``."""
    return ProbeGuard(
        probe,
        best.threshold,
        model=model,
        template=config.template,
        model_name=model.name if model is not None else "",
        n_layers=n_layers,
        metrics={
            "fit": fit,
            "target_fpr": config.target_fpr,
            "validation_auroc": best.auroc,
            "validation_tpr": best.tpr,
            "validation_fpr": best.fpr,
            **metrics,
        },
    )


def fit_probe_guard(
    model: LocalModel,
    harmful_prompts: Sequence[str],
    benign_prompts: Sequence[str],
    borderline_prompts: Sequence[str] | None = None,
    *,
    layers: Sequence[int] | None = None,
    guard_layers: Sequence[int] | None = None,
    config: ProbeConfig | None = None,
) -> ProbeFit:
    """Read hidden states of the prompts once and :func:`fit_probes` (the guard is bound to ``model``)."""
    config = config or ProbeConfig()

    def states(prompts: Sequence[str]) -> torch.Tensor:
        return prompt_hidden_states(model, prompts, config.template, config.batch_size)

    border = states(borderline_prompts) if borderline_prompts else None
    return fit_probes(
        states(harmful_prompts),
        states(benign_prompts),
        border,
        layers=layers,
        guard_layers=guard_layers,
        config=config,
        model=model,
    )


class _StopForward(Exception):
    pass


class ProbeGuard:
    """Refuse before generation when a linear probe on a safety layer calls the prompt harmful.

    ``check(conversations)`` formats each conversation with the guard's template, runs the model only up to
    the probe's layer (a forward hook stops the pass there) and returns True for prompts to refuse. ``scores``
    gives the log-odds instead. Save with :meth:`save`, load with :meth:`load` (a JSON file of a few tens of
    kB).
    """

    def __init__(
        self,
        probe: LinearProbe,
        threshold: float,
        model: LocalModel | None = None,
        *,
        template: str = "chat",
        model_name: str = "",
        n_layers: int | None = None,
        metrics: dict[str, Any] | None = None,
        batch_size: int = 16,
    ) -> None:
        self.probe = probe
        self.threshold = float(threshold)
        self.template = template
        self.model_name = model_name
        self.n_layers = n_layers
        self.metrics = dict(metrics or {})
        self.batch_size = batch_size
        self.refusal_text = REFUSAL_TEXT
        self.model: LocalModel | None = None
        if model is not None:
            self.bind(model)

    @property
    def layer(self) -> int:
        return self.probe.layer

    def bind(self, model: LocalModel) -> ProbeGuard:
        """Attach the model whose hidden states the probe reads; checks the layer count and width."""
        width = int(model.model.config.hidden_size)
        if width != self.probe.coef.shape[0]:
            raise ModelError(
                f"probe guard was fitted on hidden size {self.probe.coef.shape[0]}, "
                f"but {model.name} has hidden size {width}"
            )
        n = len(decoder_layers(model))
        if self.n_layers is not None and n != self.n_layers:
            raise ModelError(f"probe guard was fitted on a {self.n_layers}-layer model, {model.name} has {n}")
        if self.model_name and model.name != self.model_name:
            log.warning("probe guard was fitted on %s, now used with %s", self.model_name, model.name)
        self.model = with_template(model, self.template)
        return self

    def hidden(self, conversations: Sequence[Conversation]) -> torch.Tensor:
        """``(n, hidden)`` last-prompt-token states at the probe's layer (early exit past that layer)."""
        if self.model is None:
            raise ModelError(
                "probe guard has no model: load it with ProbeGuard.load(path, model) or bind(model)"
            )
        model = self.model
        n_layers = len(decoder_layers(model))
        if self.layer == n_layers - 1:  # the last entry is taken after the final norm
            return model.last_token_hidden_states(conversations, self.batch_size)[:, self.layer]
        out = torch.zeros((len(conversations), int(model.model.config.hidden_size)))
        captured: dict[str, torch.Tensor] = {}

        def hook(_mod: Any, _args: Any, output: Any) -> None:
            captured["h"] = output[0] if isinstance(output, tuple) else output
            raise _StopForward

        handle = decoder_layers(model)[self.layer].register_forward_hook(hook)
        try:
            encoded = [model.encode_prompt(c) for c in conversations]
            for start in range(0, len(encoded), self.batch_size):
                ids, mask = model.left_pad(encoded[start : start + self.batch_size])
                with torch.inference_mode(), contextlib.suppress(_StopForward):
                    model.model(input_ids=ids, attention_mask=mask)
                out[start : start + ids.shape[0]] = captured["h"][:, -1, :].float().cpu()
        finally:
            handle.remove()
        return out

    def scores(self, conversations: Sequence[Conversation]) -> list[float]:
        """Log-odds that each conversation's last user turn is harmful."""
        if not conversations:
            return []
        return [float(x) for x in self.probe.logits(self.hidden(conversations))]

    def check(self, conversations: Sequence[Conversation]) -> list[bool]:
        """True for each conversation the guard refuses (log-odds above the operating threshold)."""
        return [s > self.threshold for s in self.scores(conversations)]

    def check_prompts(self, prompts: Sequence[str]) -> list[bool]:
        return self.check([user_turn(p) for p in prompts])

    # -- persistence -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "method": "logistic regression on the last-prompt-token hidden state of one decoder layer "
            "(safety layers, Li et al. 2024)",
            "model": self.model_name,
            "template": self.template,
            "layer": self.layer,
            "n_layers": self.n_layers,
            "hidden_size": int(self.probe.coef.shape[0]),
            "threshold": self.threshold,
            "intercept": self.probe.intercept,
            "coef": self.probe.coef.tolist(),
            "mean": self.probe.mean.tolist(),
            "scale": self.probe.scale.tolist(),
            "metrics": self.metrics,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict()), encoding="utf-8")
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: LocalModel | None = None) -> ProbeGuard:
        """Read a guard saved by :meth:`save`; errors name the file and the bad field."""
        file = Path(path)
        try:
            d = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ModelError(f"probe guard file {file} does not exist") from e
        except json.JSONDecodeError as e:
            raise ModelError(f"probe guard file {file}: malformed JSON at line {e.lineno} ({e.msg})") from e
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ModelError(f"{file} is not an alignscope probe guard (field 'format' != {FORMAT!r})")
        try:
            coef = np.asarray(d["coef"], dtype=np.float64)
            probe = LinearProbe(
                int(d["layer"]),
                coef,
                float(d["intercept"]),
                np.asarray(d["mean"], dtype=np.float64),
                np.asarray(d["scale"], dtype=np.float64),
            )
            threshold = float(d["threshold"])
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"probe guard file {file}: missing or malformed field ({e})") from e
        if not (coef.shape == probe.mean.shape == probe.scale.shape) or coef.ndim != 1:
            raise ModelError(f"probe guard file {file}: coef, mean and scale must be vectors of equal length")
        return cls(
            probe,
            threshold,
            model,
            template=str(d.get("template", "chat")),
            model_name=str(d.get("model", "")),
            n_layers=d.get("n_layers"),
            metrics=d.get("metrics") or {},
        )

    def __repr__(self) -> str:
        return f"ProbeGuard(layer={self.layer}, threshold={self.threshold:.3g}, model={self.model_name!r})"


def evaluate_guard(
    guard: ProbeGuard,
    harmful_prompts: Sequence[str],
    benign_prompts: Sequence[str],
    borderline_prompts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Held-out scores of a bound guard: AUROC (harmful vs benign), and at its threshold the share of harmful
    prompts flagged, of benign prompts flagged and of borderline-safe prompts falsely refused (Wilson CIs)."""
    pos = np.asarray(guard.scores([user_turn(p) for p in harmful_prompts]))
    neg = np.asarray(guard.scores([user_turn(p) for p in benign_prompts]))
    out: dict[str, Any] = {
        "layer": guard.layer,
        "threshold": guard.threshold,
        "auroc": _auroc(pos, neg),
        "harmful_flagged": wilson(int((pos > guard.threshold).sum()), len(pos)).to_dict(),
        "benign_flagged": wilson(int((neg > guard.threshold).sum()), len(neg)).to_dict(),
    }
    if borderline_prompts:
        border = np.asarray(guard.scores([user_turn(p) for p in borderline_prompts]))
        out["borderline_false_refusals"] = wilson(
            int((border > guard.threshold).sum()), len(border)
        ).to_dict()
    return out
