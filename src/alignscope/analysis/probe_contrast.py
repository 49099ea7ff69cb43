"""The probe guard's default fit: contrastive prompt pairs, a threshold set on a validation split for a stated
false-positive rate, and held-out rates with Wilson intervals.

Fitted on harmful vs benign prompts alone, the probe learns alarming words as much as intent: measured on
public prompts, that guard flagged 25 % of held-out harmless prompts and 48 % of XSTest's safe ones (issue 29).
The default fit adds contrastive twins, alarming-but-safe prompts (``safe-alarming``) as negatives and their
unsafe twins (``unsafe-contrast``) as positives, so the probe has to separate intent, not vocabulary.

Four roles, each a suite split by :meth:`~alignscope.data.types.Suite.split` (``test_fraction``,
``split_seed``: the same split the training recipes train on and evaluations hold out), whose train half is
carved once more into a fitting part and a validation part (:func:`~alignscope.analysis.probe.split_indices`,
``validation_fraction``, ``seed``):

=========  ====================  =========
role       default suite         class
=========  ====================  =========
harmful    ``harmful``           positive
unsafe     ``unsafe-contrast``   positive
benign     ``benign``            negative
safe       ``safe-alarming``     negative
=========  ====================  =========

* the probe of each layer is fitted on the ``train`` parts, each role weighted equally;
* the guard's layer (highest validation AUROC) and its threshold are chosen on the ``validation`` parts: the
  smallest threshold that flags at most ``target_fpr`` of *each* negative role's validation prompts, moved up
  to midway towards the next validation score above it (:func:`~alignscope.analysis.probe.centred_threshold`:
  the validation rates stay the same, but on a few dozen prompts the smallest such threshold sits right on
  the highest allowed negative, and held-out negatives just above it would be flagged);
* the ``test`` halves are read only at the end, for the held-out false-positive rates (benign, safe) and
  true-positive rates (harmful, unsafe), each with a Wilson interval.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from alignscope.analysis.layer_scan import prompt_hidden_states
from alignscope.analysis.probe import (
    LinearProbe,
    ProbeConfig,
    ProbeFit,
    _auroc,
    choose_layer,
    fit_layer_probe,
    guard_at,
    score_layer,
    split_indices,
)
from alignscope.data.types import Label, Sample, Suite
from alignscope.models.local import LocalModel
from alignscope.stats import wilson

log = logging.getLogger("alignscope.analysis")

POSITIVE_ROLES: tuple[str, ...] = ("harmful", "unsafe")
"""Roles whose prompts the guard should flag."""
NEGATIVE_ROLES: tuple[str, ...] = ("benign", "safe")
"""Roles whose prompts the guard should let through (``safe``: alarming words, harmless intent)."""
ROLES: tuple[str, ...] = POSITIVE_ROLES + NEGATIVE_ROLES
PARTS: tuple[str, ...] = ("train", "validation", "test")
DEFAULT_SOURCES: dict[str, str] = {
    "harmful": "harmful",
    "unsafe": "unsafe-contrast",
    "benign": "benign",
    "safe": "safe-alarming",
}
"""The built-in suite of each role."""
FIT_NAME = "contrast"


@dataclass(frozen=True)
class GuardSplit:
    """One role's prompts in three disjoint parts: ``train`` fits the probe, ``validation`` sets the layer and
    threshold (both from the suite's train half), ``test`` is the suite's held-out half."""

    role: str
    suite: str
    train: Suite
    validation: Suite
    test: Suite

    def part(self, name: str) -> Suite:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]

    def counts(self) -> dict[str, Any]:
        return {"suite": self.suite, **{f"n_{p}": len(self.part(p)) for p in PARTS}}

    def ids(self) -> dict[str, list[str]]:
        return {p: [s.id for s in self.part(p)] for p in PARTS}


def as_suite(source: str | Suite | Sequence[str], role: str) -> Suite:
    """A suite for ``role``: a suite spec (:func:`alignscope.data.load_suite`), a loaded suite, or a prompt list
    (ids ``<role>-NNNN``)."""
    if isinstance(source, Suite):
        return source
    if isinstance(source, str):
        from alignscope.data import load_suite

        return load_suite(source)
    label: Label = "harmful" if role in POSITIVE_ROLES else ("borderline" if role == "safe" else "benign")
    prompts = list(source)
    samples = [Sample(f"{role}-{i:04d}", p, "custom", label) for i, p in enumerate(prompts)]
    return Suite.of(f"custom[{len(prompts)}]", samples, "custom")


def guard_splits(
    sources: Mapping[str, str | Suite | Sequence[str]] | None = None,
    *,
    test_fraction: float = 0.5,
    split_seed: int = 0,
    validation_fraction: float = 0.3,
    seed: int = 0,
) -> dict[str, GuardSplit]:
    """Split each role's suite (``sources``: role -> suite spec, suite or prompt list; missing roles take
    :data:`DEFAULT_SOURCES`) into train / validation / test.

    The test half is ``suite.split(test_fraction, split_seed)[1]``; the train half is split again with
    :func:`split_indices` (``validation_fraction``, seed ``seed + i`` for the i-th role of :data:`ROLES`).
    """
    given = {**DEFAULT_SOURCES, **(sources or {})}
    unknown = sorted(set(given) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown guard role(s) {unknown}; roles are {', '.join(ROLES)}")
    out: dict[str, GuardSplit] = {}
    for i, role in enumerate(ROLES):
        suite = as_suite(given[role], role)
        half, test = suite.split(test_fraction, split_seed)
        if len(half) < 2:
            raise ValueError(
                f"guard role {role!r} ({suite.name}): the train half holds {len(half)} prompt(s); the fit "
                "needs at least 2 to carve a validation split (give more prompts, or guard_contrast=False)"
            )
        if not len(test):
            log.warning("guard role %s (%s): the held-out half is empty", role, suite.name)
        fit_idx, val_idx = split_indices(len(half), validation_fraction, seed + i)
        out[role] = GuardSplit(
            role,
            suite.name,
            Suite(f"{half.name}-fit", tuple(half.samples[j] for j in fit_idx), suite.source),
            Suite(f"{half.name}-validation", tuple(half.samples[j] for j in val_idx), suite.source),
            test,
        )
    return out


def split_states(
    model: LocalModel,
    splits: Mapping[str, GuardSplit],
    template: str = "chat",
    batch_size: int = 16,
    system_prompt: str | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """``states[role][part]``: ``(n, n_layers, hidden)`` last-prompt-token states, read in one pass over all
    prompts (so batches sort by length across roles)."""
    keys = [(r, p) for r in ROLES for p in PARTS]
    prompts = [s.prompt for r, p in keys for s in splits[r].part(p)]
    hidden = prompt_hidden_states(model, prompts, template, batch_size, system_prompt)
    out: dict[str, dict[str, torch.Tensor]] = {r: {} for r in ROLES}
    start = 0
    for r, p in keys:
        n = len(splits[r].part(p))
        out[r][p] = hidden[start : start + n]
        start += n
    return out


def _role_weights(sizes: Sequence[int]) -> np.ndarray:
    """Per-example weights giving each role the same total weight (mean weight 1)."""
    total = sum(sizes)
    return np.concatenate([np.full(n, total / (len(sizes) * n)) for n in sizes if n])


def _stack(
    states: Mapping[str, Mapping[str, torch.Tensor]], roles: Sequence[str], part: str, layer: int
) -> np.ndarray:
    return torch.cat([states[r][part][:, layer] for r in roles]).numpy()


def role_rates(
    probe: LinearProbe, threshold: float, states: Mapping[str, Mapping[str, torch.Tensor]], part: str
) -> dict[str, Any]:
    """Flagged shares of ``part`` at ``threshold``, with Wilson intervals: ``false_positive_rate`` per negative
    role and over both (``all``), ``true_positive_rate`` per positive role and over both; ``auroc`` (all
    positives vs all negatives) and ``auroc_unsafe_vs_safe`` (the contrastive twins) where both sides have
    prompts."""
    logits = {r: probe.logits(states[r][part][:, probe.layer]) for r in ROLES}

    def rates(roles: Sequence[str]) -> dict[str, Any]:
        per = {r: wilson(int((logits[r] > threshold).sum()), len(logits[r])).to_dict() for r in roles}
        every = np.concatenate([logits[r] for r in roles])
        return {**per, "all": wilson(int((every > threshold).sum()), len(every)).to_dict()}

    out: dict[str, Any] = {
        "false_positive_rate": rates(NEGATIVE_ROLES),
        "true_positive_rate": rates(POSITIVE_ROLES),
    }
    pos = np.concatenate([logits[r] for r in POSITIVE_ROLES])
    neg = np.concatenate([logits[r] for r in NEGATIVE_ROLES])
    out["auroc"] = _auroc(pos, neg) if len(pos) and len(neg) else None
    pair = len(logits["unsafe"]) and len(logits["safe"])
    out["auroc_unsafe_vs_safe"] = _auroc(logits["unsafe"], logits["safe"]) if pair else None
    return out


def fit_contrast_probes(
    states: Mapping[str, Mapping[str, torch.Tensor]],
    splits: Mapping[str, GuardSplit],
    borderline: torch.Tensor | None = None,
    *,
    layers: Sequence[int] | None = None,
    guard_layers: Sequence[int] | None = None,
    config: ProbeConfig | None = None,
    model: LocalModel | None = None,
    split_settings: Mapping[str, Any] | None = None,
) -> ProbeFit:
    """Fit one probe per layer on the ``train`` parts, choose the guard's layer and threshold on the
    ``validation`` parts, and measure it on the ``test`` parts.

    Args:
        states: ``states[role][part]``, ``(n, n_layers, hidden)`` (:func:`split_states`).
        splits: the splits the states were read from (recorded: suites, counts, ids).
        borderline: ``(n_o, n_layers, hidden)`` borderline-safe prompts: false refusals per layer, reported only.
        layers, guard_layers, model: as in :func:`alignscope.analysis.probe.fit_probes`.
        split_settings: how ``splits`` were made (test_fraction, split_seed, ...), recorded with the guard.
    """
    config = config or ProbeConfig()
    n_layers = int(states["harmful"]["train"].shape[1])
    layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    weights = _role_weights([len(states[r]["train"]) for r in ROLES])
    probes: dict[int, LinearProbe] = {}
    scores = []
    for layer in layers:
        probe = fit_layer_probe(
            _stack(states, POSITIVE_ROLES, "train", layer),
            _stack(states, NEGATIVE_ROLES, "train", layer),
            layer,
            config,
            sample_weight=weights,
        )
        probes[layer] = probe
        negatives = [states[r]["validation"][:, layer] for r in NEGATIVE_ROLES]
        positives = _stack(states, POSITIVE_ROLES, "validation", layer)
        scores.append(score_layer(probe, positives, negatives, borderline, config.target_fpr, centred=True))
    best = choose_layer(scores, layers, guard_layers)
    probe = probes[best.layer]
    validation = role_rates(probe, best.threshold, states, "validation")
    held_out = role_rates(probe, best.threshold, states, "test")
    data = {r: splits[r].counts() for r in ROLES}
    settings = dict(split_settings or {})
    settings.setdefault("validation_fraction", config.validation_fraction)
    settings.setdefault("seed", config.seed)
    extra = {"validation": validation, "held_out": held_out, "data": data, "split": settings}
    guard = guard_at(best, probe, config, n_layers, model, FIT_NAME, **extra)
    details = {
        "fit": FIT_NAME,
        "target_fpr": config.target_fpr,
        "threshold": best.threshold,
        **extra,
        "ids": {r: splits[r].ids() for r in ROLES},
        "n_borderline": None if borderline is None else int(borderline.shape[0]),
    }
    return ProbeFit(probes, scores, best.layer, config, guard, details)


def fit_contrast_guard(
    model: LocalModel,
    sources: Mapping[str, str | Suite | Sequence[str]] | None = None,
    borderline_prompts: Sequence[str] | None = None,
    *,
    test_fraction: float = 0.5,
    split_seed: int = 0,
    layers: Sequence[int] | None = None,
    guard_layers: Sequence[int] | None = None,
    config: ProbeConfig | None = None,
    system_prompt: str | None = None,
) -> ProbeFit:
    """The default guard fit on ``model``: :func:`guard_splits` of ``sources`` (role -> suite; defaults
    :data:`DEFAULT_SOURCES`), hidden states read once, then :func:`fit_contrast_probes` (the guard is bound to
    ``model``)."""
    config = config or ProbeConfig()
    splits = guard_splits(
        sources,
        test_fraction=test_fraction,
        split_seed=split_seed,
        validation_fraction=config.validation_fraction,
        seed=config.seed,
    )
    states = split_states(model, splits, config.template, config.batch_size, system_prompt)
    border = (
        prompt_hidden_states(model, borderline_prompts, config.template, config.batch_size, system_prompt)
        if borderline_prompts
        else None
    )
    return fit_contrast_probes(
        states,
        splits,
        border,
        layers=layers,
        guard_layers=guard_layers,
        config=config,
        model=model,
        split_settings={"test_fraction": test_fraction, "split_seed": split_seed},
    )
