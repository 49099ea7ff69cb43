"""Wall time and peak memory of the safety-layer cosine scan: cached (alignscope) vs one forward pass per pair.

Li et al. (ICLR 2025, arXiv 2408.17003) compute, for each of r random pairs of prompts, the last-prompt-token
hidden states of both prompts in a forward pass and their cosine at every layer. alignscope reads each
prompt's hidden states once and forms every pair from the cache (a Gram matrix per layer). Both runs here use
the same prompts and the same pairs (same seed), and the script checks that they give the same cosines.

Each implementation runs in a fresh process. The model is warmed up first (one forward pass: safetensors
weights are memory-mapped and only count as resident once touched), then a thread samples the resident set
size every 5 ms while the scan runs; the table shows that peak and its increase over the warmed-up model.

    PYTHONPATH=src python benchmarks/safety_layers.py [--model smollm2] [--prompts 32] [--draws 100]
        [--batch-sizes 16,2] [--no-naive]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import threading
import time
from typing import Any

import numpy as np
import torch


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Samples VmRSS in a thread while the ``with`` block runs; ``peak`` and ``before`` in MiB."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.before = self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mib())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.before = self.peak = _rss_mib()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


def _prompts(n: int) -> tuple[list[str], list[str]]:
    from alignscope.data import load_suite

    return load_suite("benign").take(n).prompts, load_suite("harmful").take(n).prompts


def naive_cosines(model: Any, first: list[str], second: list[str], pairs: np.ndarray) -> np.ndarray:
    """One forward pass per pair (the two prompts batched, left-padded): ``(draws, n_layers)`` cosines."""
    from alignscope.models import user_turn

    out = np.zeros((len(pairs), model.num_layers))
    for d, (i, j) in enumerate(pairs):
        h = model.last_token_hidden_states([user_turn(first[i]), user_turn(second[j])], batch_size=2)
        out[d] = torch.nn.functional.cosine_similarity(h[0].double(), h[1].double(), dim=-1).numpy()
    return out


def _run(method: str, spec: str, n: int, draws: int, seed: int, batch: int, queue: Any) -> None:
    from alignscope.analysis.safety_layers import SafetyLayerScanConfig, draw_pairs, scan_safety_layers
    from alignscope.models import load_model, user_turn

    model = load_model(spec)
    normal, malicious = _prompts(n)
    model.last_token_hidden_states([user_turn("warm-up")])
    with PeakRSS() as mem:
        start = time.perf_counter()
        if method == "cached":
            config = SafetyLayerScanConfig(draws=draws, seed=seed, batch_size=batch)
            scan = scan_safety_layers(model, normal, malicious, config)
            cos = scan.cosines
            passes = -(-len(normal) // batch) + -(-len(malicious) // batch)
        else:
            pairs = draw_pairs(len(normal), len(malicious), draws, seed)
            groups = {"N-N": (normal, normal), "N-M": (normal, malicious), "M-M": (malicious, malicious)}
            cos = {k: naive_cosines(model, *groups[k], pairs[k]) for k in groups}
            passes = 3 * draws
        seconds = time.perf_counter() - start
    queue.put(
        {
            "method": method,
            "batch": batch if method == "cached" else 2,
            "seconds": seconds,
            "peak_mib": mem.peak,
            "extra_mib": mem.peak - mem.before,
            "forward_passes": passes,
            "cosines": {k: v.tolist() for k, v in cos.items()},
            "threads": torch.get_num_threads(),
        }
    )


def measure(method: str, spec: str, n: int, draws: int, seed: int, batch: int = 16) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(method, spec, n, draws, seed, batch, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return dict(result)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompts", type=int, default=32, help="normal and malicious prompts, each")
    ap.add_argument("--draws", type=int, default=100, help="pairs of each kind (r)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-sizes", default="16", help="comma-separated batch sizes of the cached scan")
    ap.add_argument("--no-naive", action="store_true", help="time only the cached scan")
    args = ap.parse_args(argv)

    runs = [
        (
            f"alignscope (cached, batch {b})",
            measure("cached", args.model, args.prompts, args.draws, args.seed, b),
        )
        for b in (int(x) for x in args.batch_sizes.split(","))
    ]
    cached = runs[0][1]
    naive = None
    if not args.no_naive:
        naive = measure("naive", args.model, args.prompts, args.draws, args.seed)
        runs.append(("naive (1 pass per pair)", naive))
    print(
        f"safety-layer scan, model={args.model}, {args.prompts}+{args.prompts} prompts (builtin benign/harmful), "
        f"r={args.draws} pairs per kind (N-N, N-M, M-M), seed={args.seed}, torch threads={cached['threads']}, "
        f"CPU"
    )
    header = (
        f"{'implementation':<28}{'forward passes':>16}{'wall s':>10}{'peak RSS MiB':>14}{'+ over model':>14}"
    )
    print(header)
    print("-" * len(header))
    for name, r in runs:
        print(
            f"{name:<28}{r['forward_passes']:>16}{r['seconds']:>10.1f}{r['peak_mib']:>14.0f}{r['extra_mib']:>14.0f}"
        )
    if naive is None:
        return 0
    for name, r in runs[:-1]:
        diff = max(
            float(np.max(np.abs(np.asarray(r["cosines"][k]) - np.asarray(naive["cosines"][k]))))
            for k in r["cosines"]
        )
        print(
            f"{name}: speed-up (naive / cached wall time) {naive['seconds'] / r['seconds']:.1f}x; "
            f"peak-RSS ratio (naive / cached) {naive['peak_mib'] / r['peak_mib']:.2f}; increase over the "
            f"model (naive / cached) {naive['extra_mib'] / max(r['extra_mib'], 1e-9):.2f}; "
            f"max |cosine difference| over all pairs and layers {diff:.2e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
