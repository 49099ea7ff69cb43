"""Throughput and latency of ``alignscope serve`` at concurrency 1, 4 and 8, and the probe guard's added latency.

The model is served on a loopback port (uvicorn in a background thread, one generation worker, as
``alignscope serve`` runs it) and driven over HTTP by a thread pool; every request is a greedy chat completion
of ``--max-tokens`` tokens on a prompt from the built-in benign and harmful suites. Generation is serialised per
model (torch is not re-entrant for one model), so throughput rises with concurrency only through overlapping
HTTP and request handling, while latency grows with the queue.

The probe guard (:class:`alignscope.analysis.probe.ProbeGuard` on the safety layers) is fitted on the built-in
harmful/benign suites (or read from ``--probe PATH``) and served with policy ``allow``, so every request is
both checked and generated. Its cost is the server-side time of the check, which every response reports in
``alignscope.timing_ms`` (robust to queueing and to other load on the machine), next to the p50 latency with
and without the guard at concurrency 1.

    PYTHONPATH=src python benchmarks/serve_load.py [--model smollm2] [--requests 24] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx


def drive(base_url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int) -> dict[str, Any]:
    """Send one request per prompt with ``concurrency`` in flight; latencies in seconds."""
    latencies: list[float] = []
    errors: list[str] = []
    guard_ms: list[float] = []
    generate_ms: list[float] = []
    lock = threading.Lock()
    url = f"{base_url}/chat/completions"
    with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as http:

        def one(prompt: str) -> None:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            t0 = time.perf_counter()
            timing: dict[str, float] = {}
            try:
                r = http.post(url, json=body)
                problem = None if r.status_code == 200 else f"HTTP {r.status_code}"
                if problem is None:
                    timing = r.json()["alignscope"]["timing_ms"]
            except httpx.HTTPError as e:
                problem = type(e).__name__
            with lock:
                latencies.append(time.perf_counter() - t0)
                if problem:
                    errors.append(problem)
                if timing:
                    guard_ms.append(timing["guards"])
                    generate_ms.append(timing["generate"])

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(one, prompts))
        wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    return {
        "concurrency": concurrency,
        "requests": len(prompts),
        "errors": len(errors),
        "rps": len(prompts) / wall,
        "p50": statistics.median(latencies),
        "p95": q[18],
        "guard_ms": statistics.mean(guard_ms) if guard_ms else float("nan"),
        "generate_ms": statistics.mean(generate_ms) if generate_ms else float("nan"),
    }


def fit_probe(model: Any, n: int) -> Any:
    from alignscope.analysis.probe import fit_probe_guard
    from alignscope.data import load_suite

    harmful = [s.prompt for s in load_suite("harmful").take(n, 0)]
    benign = [s.prompt for s in load_suite("benign").take(n, 0)]
    # the guard's layer is chosen among the middle layers, where Li et al. find the safety layers; the check
    # then stops the forward pass there
    layers = model.num_layers
    middle = range(layers // 4, layers // 2 + 1)
    return fit_probe_guard(model, harmful, benign, guard_layers=middle).guard


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (0: torch's default; 1 suits a shared CPU)",
    )
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--probe", default=None, help="a saved probe guard (default: fit one on built-in suites)")
    ap.add_argument("--probe-prompts", type=int, default=32, help="prompts per class when fitting the probe")
    args = ap.parse_args(argv)

    import torch

    from alignscope.data import load_suite
    from alignscope.models import load_model
    from alignscope.server import BackgroundServer, ProbeInputGuard, create_app

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    mixed = [s.prompt for s in load_suite("benign").take(args.requests, 1)]
    mixed += [s.prompt for s in load_suite("harmful").take(args.requests, 1)]
    prompts = [mixed[i % len(mixed)] for i in range(0, 2 * args.requests, 2)][: args.requests]
    levels = [int(c) for c in args.concurrency.split(",")]

    rows = []
    with BackgroundServer(create_app(model)) as server:
        drive(server.base_url, model.name, prompts[:2], 1, args.max_tokens)  # warm-up
        for c in levels:
            rows.append(drive(server.base_url, model.name, prompts, c, args.max_tokens))

    guard_rows: list[str] = []
    if importlib.util.find_spec("alignscope.analysis.probe") is None:
        guard_rows.append("probe guard not available (alignscope.analysis.probe is missing)")
    else:
        from alignscope.analysis.probe import ProbeGuard

        probe = ProbeGuard.load(args.probe, model) if args.probe else fit_probe(model, args.probe_prompts)
        guard = ProbeInputGuard(probe, "allow")
        with BackgroundServer(create_app(model, [guard])) as server:
            drive(server.base_url, model.name, prompts[:2], 1, args.max_tokens)
            guarded = drive(server.base_url, model.name, prompts, 1, args.max_tokens)
        base = rows[levels.index(1)] if 1 in levels else None
        without = f"{base['p50'] * 1000:.0f}" if base else "n/a"
        share = guarded["guard_ms"] / (guarded["guard_ms"] + guarded["generate_ms"]) * 100
        guard_rows.append(
            f"| probe (layer {probe.layer} of {model.num_layers}, policy allow) | {without} "
            f"| {guarded['p50'] * 1000:.0f} | {guarded['guard_ms']:.1f} | {guarded['generate_ms']:.0f} "
            f"| {share:.1f}% | {guarded['errors']} |"
        )

    print(
        f"\n`alignscope serve` load: model {model.name}, greedy, max_tokens={args.max_tokens}, "
        f"{args.requests} requests per level, torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end\n"
    )
    print("| concurrency | requests | errors | requests/s | p50 latency (ms) | p95 latency (ms) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['concurrency']} | {r['requests']} | {r['errors']} | {r['rps']:.2f} "
            f"| {r['p50'] * 1000:.0f} | {r['p95'] * 1000:.0f} |"
        )
    print()
    if guard_rows and guard_rows[0].startswith("|"):
        print(
            "| guard (concurrency 1) | p50 without (ms) | p50 with (ms) | guard check, server-side mean (ms) "
            "| generation, server-side mean (ms) | guard share | errors |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
    for line in guard_rows:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
