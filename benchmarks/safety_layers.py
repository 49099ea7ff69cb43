"""Time and peak memory of the safety-layer cosine scan: alignscope against one forward pass per pair, at several
sizes.

Li et al. (ICLR 2025, arXiv 2408.17003) compute, for each of r random pairs of prompts, the last-prompt-token
hidden states of both prompts in a forward pass and their cosine at every layer ("naive" here: one forward per
pair, the two prompts batched, torch's kernels, what the authors' code and a user without alignscope do).
alignscope (``scan_safety_layers``) reads each prompt's hidden states once, in length-sorted batches, runs the
start all prompts share (the chat template's system turn) once, and forms every pair from the cache (a Gram
matrix per layer). Both use the same prompts and pairs (same seed); the script checks that the cosines agree
(max |difference| over the pairs both computed; tolerance 1e-4, float32 rounding).

Each size and side runs in a fresh process with ``--threads`` torch threads (default 1: on a shared 2-core
machine more threads spend their time waiting at OpenMP barriers). Times are CPU seconds of that process
(wall seconds are printed too). The model is warmed up first; a thread samples the resident set size every 5
ms while the scan runs. **The naive side is bounded**: it runs the first ``--naive-pairs`` pairs of each kind
and its time is scaled to all 3 r pairs (pairs are independent and drawn alike, so the cost is linear in r);
the table says how many it ran. Prints the machine, the load average before and after, and refuses a
speed-up whose two sides ran under different load (rule in ``benchmarks/_machine.py``). About 3 minutes on an
idle 2-core machine with the defaults.

    PYTHONPATH=src python benchmarks/safety_layers.py [--model smollm2] [--sizes 8:25,16:50,32:100]
        [--naive-pairs 15] [--batch-size 16] [--threads 1] [--seed 0]
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

from _machine import Side, load1, machine_line, print_heading, refusal


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
    """One forward pass per pair (the two prompts batched, left-padded, torch's kernels): ``(pairs,
    n_layers)`` cosines."""
    from alignscope.models import user_turn

    out = np.zeros((len(pairs), model.num_layers))
    for d, (i, j) in enumerate(pairs):
        h = model.last_token_hidden_states([user_turn(first[i]), user_turn(second[j])], batch_size=2)
        out[d] = torch.nn.functional.cosine_similarity(h[0].double(), h[1].double(), dim=-1).numpy()
    return out


def _run(job: dict[str, Any], queue: Any) -> None:
    from alignscope.analysis.layer_scan import SafetyLayerScanConfig, draw_pairs, scan_safety_layers
    from alignscope.models import load_model, user_turn

    torch.set_num_threads(job["threads"])
    model = load_model(job["model"])
    model.fp32_linear = "torch" if job["method"] == "naive" else "auto"
    normal, malicious = _prompts(job["n"])
    model.last_token_hidden_states([user_turn("warm-up")])
    l0 = load1()
    with PeakRSS() as mem:
        w0, c0 = time.perf_counter(), time.process_time()
        if job["method"] == "cached":
            config = SafetyLayerScanConfig(draws=job["draws"], seed=job["seed"], batch_size=job["batch"])
            cos = scan_safety_layers(model, normal, malicious, config).cosines
            pairs_run = 3 * job["draws"]
        else:
            pairs = draw_pairs(len(normal), len(malicious), job["draws"], job["seed"])
            groups = {"N-N": (normal, normal), "N-M": (normal, malicious), "M-M": (malicious, malicious)}
            k = min(job["naive_pairs"], job["draws"])
            cos = {g: naive_cosines(model, *groups[g], pairs[g][:k]) for g in groups}
            pairs_run = 3 * k
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    side = Side(job["method"], wall, cpu, torch.get_num_threads(), l0, load1())
    queue.put(
        {
            "side": side.to_dict(),
            "pairs_run": pairs_run,
            "peak_mib": mem.peak,
            "extra_mib": mem.peak - mem.before,
            "cosines": {k: v.tolist() for k, v in cos.items()},
        }
    )


def measure(job: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(job, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return dict(result)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--sizes", default="8:25,16:50,32:100", help="prompts:draws, comma-separated")
    ap.add_argument("--naive-pairs", type=int, default=15, help="pairs of each kind the naive side runs")
    ap.add_argument("--batch-size", type=int, default=16, help="batch size of the cached scan")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = load1()
    print(machine_line(), flush=True)
    rows = []
    for size in args.sizes.split(","):
        n, draws = (int(x) for x in size.split(":"))
        common = {"model": args.model, "n": n, "draws": draws, "seed": args.seed, "threads": args.threads}
        cached = measure({**common, "method": "cached", "batch": args.batch_size, "naive_pairs": 0})
        naive = measure({**common, "method": "naive", "batch": 2, "naive_pairs": args.naive_pairs})
        rows.append((n, draws, cached, naive))
        print(f"  done: {n}+{n} prompts, r={draws}", file=sys.stderr, flush=True)
    load_after = load1()

    print_heading(
        f"\nsafety-layer scan, model={args.model}, built-in benign (N) / harmful (M) prompts, pairs of each kind "
        f"(N-N, N-M, M-M), seed={args.seed}, {args.threads} torch thread(s), CPU seconds of each side's process",
        load_before,
        load_after,
    )
    print(
        "| prompts (N+M) | r | alignscope CPU s | naive pairs run | naive CPU s (scaled to 3r pairs) "
        "| speed-up (CPU) | speed-up (wall) | peak RSS MiB (alignscope / naive) | max abs cosine difference |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, draws, cached, naive in rows:
        a, b = Side.from_dict(cached["side"]), Side.from_dict(naive["side"])
        scale = 3 * draws / naive["pairs_run"]
        k = naive["pairs_run"] // 3
        diff = max(
            float(np.max(np.abs(np.asarray(cached["cosines"][g][:k]) - np.asarray(naive["cosines"][g]))))
            for g in naive["cosines"]
        )
        why = refusal(a, b)
        speed = f"refused: {why}" if why else f"{b.cpu * scale / a.cpu:.1f}x"
        speed_wall = "refused" if why else f"{b.wall * scale / a.wall:.1f}x"
        print(
            f"| {n}+{n} | {draws} | {a.cpu:.1f} | {naive['pairs_run']} of {3 * draws} | {b.cpu * scale:.1f} "
            f"| {speed} | {speed_wall} | {cached['peak_mib']:.0f} / {naive['peak_mib']:.0f} | {diff:.1e} |"
        )
    print("\nsides (load = mean 1-minute load average; share = CPU-s / (wall-s x threads)):")
    for n, draws, cached, naive in rows:
        for name, r in (("alignscope", cached), ("naive", naive)):
            sd = r["side"]
            print(
                f"  {n}+{n}, r={draws}, {name:<10} CPU {sd['cpu']:6.1f} s, wall {sd['wall']:6.1f} s, "
                f"load {sd['load']:.2f}, share {sd['share']:.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
