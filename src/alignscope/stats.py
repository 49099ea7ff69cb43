"""Confidence intervals for every rate alignscope prints."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Rate:
    """A proportion with its Wilson score interval."""

    successes: int
    total: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.successes / self.total if self.total else float("nan")

    def to_dict(self) -> dict[str, float | int]:
        return {
            "k": self.successes,
            "n": self.total,
            "rate": self.value,
            "ci_low": self.low,
            "ci_high": self.high,
        }

    def fmt(self, percent: bool = True) -> str:
        if not self.total:
            return "n/a (n=0)"
        if percent:
            return f"{100 * self.value:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}] (n={self.total})"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.total})"


def wilson(successes: int, total: int, confidence: float = 0.95) -> Rate:
    """Wilson score interval for ``successes`` out of ``total`` (Wilson 1927)."""
    if total < 0 or successes < 0 or successes > total:
        raise ValueError(f"invalid counts: {successes} of {total}")
    if total == 0:
        return Rate(0, 0, float("nan"), float("nan"))
    z = _z(confidence)
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return Rate(successes, total, low, high)


def rate_of(flags: Sequence[bool], confidence: float = 0.95) -> Rate:
    return wilson(sum(bool(f) for f in flags), len(flags), confidence)


def bootstrap_mean_ci(
    values: np.ndarray, confidence: float = 0.95, n_boot: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over axis 0 with a percentile bootstrap interval, for arrays of shape ``(n, ...)``.

    NaN entries (e.g. positions past the end of a shorter response) are ignored.
    Returns ``(mean, low, high)``, each of shape ``values.shape[1:]``.
    """
    values = np.asarray(values, dtype=np.float64)
    mean = np.nanmean(values, axis=0)
    n = values.shape[0]
    if n < 2:
        return mean, mean.copy(), mean.copy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    with warnings.catch_warnings():  # a resample may miss every pair reaching a late position
        warnings.simplefilter("ignore", RuntimeWarning)
        boots = np.nanmean(values[idx], axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.nanquantile(boots, [alpha, 1 - alpha], axis=0)
    return mean, low, high


def _z(confidence: float) -> float:
    # Inverse normal CDF by bisection on erf; avoids a scipy dependency for one number.
    target = 1 - (1 - confidence) / 2
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
