"""Locating the safety layers precisely by over-rejection.

Method: Li et al., "Safety Layers in Aligned Large Language Models" (ICLR 2025, arXiv 2408.17003), section
3.4. Scaling the attention and MLP weights (q, k, v, o, gate, up, down) of the safety layers by ``alpha > 1``
strengthens the model's "this is malicious" signal, so it refuses more benign prompts that merely sound
alarming ("How do I kill a Python process?"); ``alpha < 1`` weakens it (the authors needed ``alpha < 1`` for
Phi-3). Starting from the initial range read off the gap curve, fix the lower bound and sweep the upper bound,
keeping the upper bound with the most refusals ``R_o``; then fix that upper bound and sweep the lower bound
likewise. The range with the largest ``R_o`` (smallest for ``alpha < 1``) is the safety-layer range. Reported
alphas: Llama-2 1.15, Llama-3 1.2, Gemma 1.1, Phi-3 0.8.

Scaling happens in place inside :func:`scale_layers`, a context manager that restores the exact original
tensors on exit (also on errors), so the user's model is never left modified.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignscope.analysis.layer_access import LAYER_WEIGHTS, decoder_layers, layer_indices, layer_weights
from alignscope.judges import Judge, KeywordJudge
from alignscope.models import GenerationConfig, LocalModel, user_turn
from alignscope.runs import RunDir
from alignscope.stats import wilson

log = logging.getLogger("alignscope.analysis")

STAGE = "over-rejection"
"""RunDir stage of one R_o evaluation (one candidate range)."""

DEFAULT_ALPHA = 1.15
"""Li et al.'s scaling factor for Llama-2 (the family closest to the embedded Llama-architecture default)."""


@contextlib.contextmanager
def scale_layers(
    model: Any,
    layers: Sequence[int] | tuple[int, int] | range,
    alpha: float,
    modules: Sequence[str] = LAYER_WEIGHTS,
) -> Iterator[None]:
    """Multiply the ``modules`` weights of ``layers`` by ``alpha`` for the duration of a ``with`` block.

    ``layers`` is an inclusive ``(start, end)`` tuple or an explicit list of 0-based decoder layers; ``model``
    a :class:`~alignscope.models.LocalModel` or a torch module. The original tensors are copied first and
    copied back on exit, bit for bit (dividing by ``alpha`` would not be exact in floating point), even when
    the block raises. Nested use on overlapping layers is safe: each level restores what it saw.
    """
    weights = layer_weights(model, layers, modules)
    saved: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for _, w in weights:
                saved.append((w, w.detach().clone()))
                w.mul_(alpha)
        yield
    finally:
        with torch.no_grad():
            for w, original in saved:
                w.copy_(original)


@dataclass(frozen=True)
class RangeScore:
    """R_o of one candidate range. ``phase`` is ``"baseline"`` (no scaling), ``"initial"``, ``"upper"`` (lower
    bound fixed, upper swept) or ``"lower"`` (upper bound fixed, lower swept)."""

    start: int
    end: int
    phase: str
    refusals: int
    total: int

    @property
    def rate(self) -> float:
        return self.refusals / self.total if self.total else float("nan")

    def to_dict(self) -> dict[str, Any]:
        ci = wilson(self.refusals, self.total)
        return {**asdict(self), "rate": self.rate, "ci_low": ci.low, "ci_high": ci.high}


@dataclass(frozen=True)
class OverRejectionResult:
    """The over-rejection localisation: the table of R_o per candidate range and the chosen range.

    Attributes:
        alpha: the scaling factor; ``> 1`` maximises R_o, ``< 1`` minimises it.
        initial: the range the sweep started from (e.g. from :func:`detect_safety_range`).
        chosen: the range with the best R_o after both sweeps.
        baseline: R_o of the unscaled model (``start = end = -1``).
        table: every evaluated candidate, in evaluation order.
        details: how R_o was counted (suite, judge, decoding), stated next to the numbers in reports.
    """

    alpha: float
    initial: tuple[int, int]
    chosen: tuple[int, int]
    baseline: RangeScore | None
    table: list[RangeScore]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "objective": "maximise" if self.alpha > 1 else "minimise",
            "initial": list(self.initial),
            "chosen": list(self.chosen),
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "table": [r.to_dict() for r in self.table],
            **self.details,
        }


def sweep_candidates(initial: tuple[int, int], n_layers: int, radius: int) -> tuple[list[int], list[int]]:
    """Candidate bounds around ``initial = (lo, hi)``: uppers ``lo..min(hi + radius, n_layers - 1)`` clipped
    to ``>= max(lo, hi - radius)``, and lowers ``max(lo - radius, 0)..min(lo + radius, hi)``."""
    lo, hi = initial
    uppers = list(range(max(lo, hi - radius), min(hi + radius, n_layers - 1) + 1))
    lowers = list(range(max(lo - radius, 0), min(lo + radius, hi) + 1))
    return uppers, lowers


def sweep_range(
    count: Callable[[int, int], int],
    initial: tuple[int, int],
    n_layers: int,
    alpha: float,
    radius: int = 3,
    upper_candidates: Sequence[int] | None = None,
    lower_candidates: Sequence[int] | None = None,
) -> tuple[tuple[int, int], list[tuple[int, int, str, int]]]:
    """The two-step sweep of Li et al. (2024), independent of how refusals are counted.

    ``count(start, end)`` returns R_o with layers ``[start, end]`` scaled. First the lower bound is fixed at
    ``initial[0]`` and the upper bound swept over ``upper_candidates`` (default: see
    :func:`sweep_candidates`); the best upper bound is kept; then it is fixed and the lower bound swept over
    ``lower_candidates`` (only bounds ``<=`` the chosen upper). Best = most refusals for ``alpha > 1``, fewest
    for ``alpha < 1``; ties go to the range closest to ``initial`` (a bound only moves when R_o improves),
    then the narrower range, then the lower start. Each range is counted once.

    Returns the chosen ``(start, end)`` and the evaluations ``(start, end, phase, R_o)`` in order.
    """
    if alpha == 1.0:
        raise ValueError("alpha = 1 scales nothing; use alpha > 1 (maximise R_o) or alpha < 1 (minimise)")
    lo, hi = initial
    if not 0 <= lo <= hi < n_layers:
        raise ValueError(f"initial range {list(initial)} is not within layers 0..{n_layers - 1}")
    default_up, default_low = sweep_candidates(initial, n_layers, radius)
    uppers = sorted(set(upper_candidates if upper_candidates is not None else default_up) | {hi})
    sign = 1 if alpha > 1 else -1
    seen: dict[tuple[int, int], int] = {}
    log_rows: list[tuple[int, int, str, int]] = []

    def evaluate(start: int, end: int, phase: str) -> int:
        if (start, end) not in seen:
            seen[(start, end)] = int(count(start, end))
            log_rows.append((start, end, phase, seen[(start, end)]))
        return seen[(start, end)]

    def best(ranges: list[tuple[int, int]]) -> tuple[int, int]:
        return min(
            ranges, key=lambda r: (-sign * seen[r], abs(r[0] - lo) + abs(r[1] - hi), r[1] - r[0], r[0])
        )

    evaluate(lo, hi, "initial")
    ups = [(lo, u) for u in uppers if u >= lo and u < n_layers]
    for r in ups:
        evaluate(*r, "upper")
    _, best_hi = best(ups)
    lows = sorted(set(lower_candidates if lower_candidates is not None else default_low) | {lo})
    downs = [(low, best_hi) for low in lows if 0 <= low <= best_hi]
    for r in downs:
        evaluate(*r, "lower")
    return best(downs), log_rows


def localize_safety_layers(
    model: LocalModel,
    prompts: Sequence[str],
    initial: tuple[int, int],
    alpha: float = DEFAULT_ALPHA,
    *,
    judge: Judge | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    radius: int = 3,
    upper_candidates: Sequence[int] | None = None,
    lower_candidates: Sequence[int] | None = None,
    out: RunDir | None = None,
    system_prompt: str | None = None,
    progress: bool = False,
) -> OverRejectionResult:
    """Over-rejection localisation (Li et al. 2024, section 3.4) of the safety layers of ``model``.

    Args:
        model: a local model; its weights are scaled in place inside :func:`scale_layers` and always restored.
        prompts: the over-rejection set: benign prompts with alarming words (alignscope's borderline suite).
        initial: the initial range ``(start, end)``, inclusive, e.g. from :func:`detect_safety_range`.
        alpha: weight scale; ``> 1`` maximises refusals, ``< 1`` minimises them.
        judge: an :class:`alignscope.judges.Judge` deciding refusals (default: the keyword judge).
        max_new_tokens: greedy tokens per response (~16 suffice to see a refusal start).
        radius: how far the default candidate bounds reach around ``initial``.
        out: a run directory; each candidate's responses, verdicts and R_o are appended under stage
            ``"over-rejection"`` and reused on resume, so a killed sweep continues where it stopped.

    Returns:
        an :class:`OverRejectionResult` with the R_o table (baseline first) and the chosen range.
    """
    judge_: Judge = judge if judge is not None else KeywordJudge()
    n_layers = len(decoder_layers(model))
    layer_indices(initial, n_layers)  # validates the range
    gen = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    conversations = [user_turn(p, system_prompt) for p in prompts]
    done = out.done(STAGE) if out is not None else {}

    def run(start: int, end: int) -> int:
        key = _key(start, end, alpha)
        if key in done and done[key].get("total") == len(prompts):
            return int(done[key]["refusals"])
        if start < 0:
            responses = model.generate(conversations, gen, progress=progress)
        else:
            with scale_layers(model, (start, end), alpha):
                responses = model.generate(conversations, gen, progress=progress)
        verdicts = judge_.judge_batch(list(prompts), responses)
        refused = [bool(v.refused) for v in verdicts]
        record = {
            "stage": STAGE,
            "key": key,
            "start": start,
            "end": end,
            "alpha": alpha,
            "refusals": sum(refused),
            "total": len(prompts),
            "judge": judge_.name,
            "responses": [
                {"prompt": p, "response": r, "refused": f, "raw": v.raw}
                for p, r, f, v in zip(prompts, responses, refused, verdicts, strict=True)
            ],
        }
        if out is not None:
            out.append(record)
        done[key] = record
        log.info("R_o with layers [%d, %d] x %g: %d / %d", start, end, alpha, sum(refused), len(prompts))
        return sum(refused)

    baseline = RangeScore(-1, -1, "baseline", run(-1, -1), len(prompts))
    chosen, rows = sweep_range(run, initial, n_layers, alpha, radius, upper_candidates, lower_candidates)
    table = [RangeScore(s, e, phase, r, len(prompts)) for s, e, phase, r in rows]
    details = {
        "model": model.name,
        "template": model.template_name,
        "judge": judge_.name,
        "decoding": gen.describe(),
        "n_prompts": len(prompts),
        "modules": list(LAYER_WEIGHTS),
    }
    return OverRejectionResult(alpha, tuple(initial), chosen, baseline, table, details)  # type: ignore[arg-type]


def _key(start: int, end: int, alpha: float) -> str:
    return "baseline" if start < 0 else f"alpha={alpha:g}:layers={start}-{end}"


def plot_overrejection(result: OverRejectionResult, path: str | os.PathLike[str]) -> Path:
    """R_o against the swept upper bound (lower fixed) and against the swept lower bound (upper fixed), the
    unscaled baseline as a dashed line and the chosen range marked. Format from the suffix of ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    up = sorted(
        [r for r in result.table if r.phase in ("upper", "initial") and r.start == result.initial[0]],
        key=lambda r: r.end,
    )
    low = sorted([r for r in result.table if r.end == result.chosen[1]], key=lambda r: r.start)
    panels = [
        (axes[0], [r.end for r in up], up, f"upper bound (lower = {result.initial[0]})", result.chosen[1]),
        (axes[1], [r.start for r in low], low, f"lower bound (upper = {result.chosen[1]})", result.chosen[0]),
    ]
    for ax, xs, rows, label, mark in panels:
        ax.plot(xs, [100 * r.rate for r in rows], marker="o")
        if result.baseline is not None:
            ax.axhline(100 * result.baseline.rate, color="tab:gray", linestyle="--", label="unscaled")
        ax.axvline(mark, color="tab:green", alpha=0.5, label=f"chosen {list(result.chosen)}")
        ax.set_xlabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    axes[0].set_ylabel("over-rejection R_o [% refused]")
    fig.suptitle(
        f"Over-rejection localisation (Li et al. 2024), alpha={result.alpha:g}: "
        f"{result.details.get('model', '')}, {result.details.get('judge', '')}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
