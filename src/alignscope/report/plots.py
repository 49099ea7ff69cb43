"""Figures for reports: lines with confidence bands and bars with error bars, saved as PNG and SVG."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


@dataclass(frozen=True)
class Series:
    """One line: y against x with an optional band (low, high)."""

    label: str
    x: Sequence[float]
    y: Sequence[float | None]
    low: Sequence[float | None] | None = None
    high: Sequence[float | None] | None = None


def _f(v: Sequence[float | None]) -> list[float]:
    return [float("nan") if x is None else float(x) for x in v]


def line_plot(
    path: Path,
    series: Sequence[Series],
    title: str,
    xlabel: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
    span: tuple[float, float] | None = None,
    span_label: str = "",
) -> Path:
    """Lines with shaded bands; ``span`` shades an x-range (e.g. detected safety layers). Writes ``path``
    (PNG) and the same name with ``.svg``; returns the PNG path."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    for s in series:
        (line,) = ax.plot(list(s.x), _f(s.y), marker="o", markersize=3, label=s.label)
        if s.low is not None and s.high is not None:
            ax.fill_between(list(s.x), _f(s.low), _f(s.high), alpha=0.2, color=line.get_color())
    if span is not None:
        ax.axvspan(span[0], span[1], color="tab:red", alpha=0.12, label=span_label or None)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if len(series) > 1 or span is not None:
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def bar_plot(
    path: Path,
    labels: Sequence[str],
    values: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = (0, 100),
) -> Path:
    """Bars with asymmetric error bars (e.g. rates with Wilson intervals, in percent)."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(labels) + 2), 3.8), dpi=110)
    err = [
        [max(0.0, v - lo) for v, lo in zip(values, lows, strict=True)],
        [max(0.0, hi - v) for v, hi in zip(values, highs, strict=True)],
    ]
    ax.bar(range(len(labels)), values, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(
        labels, rotation=35 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center", fontsize=8
    )
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Save ``fig`` as ``path`` with ``.png`` and with ``.svg`` (making the folder) and close it; the png path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"))
    fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)
    return path.with_suffix(".png")
