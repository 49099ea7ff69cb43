"""Throughput and latency of ``alignscope serve``, batched against serial, at 1, 8 and 32 concurrent clients.

Two servers of the same loaded model run side by side in one process, each uvicorn in a background thread on a
loopback port as ``alignscope serve`` runs it: the **serial** server (``max_batch_size=1``: one request at a
time, as before batching) and the **batched** server (``--max-batch-size``, default 32, micro-batching with
``--batch-wait-ms`` / ``--max-batch-wait-ms`` as ``alignscope serve`` takes them). At every concurrency level,
the same requests (greedy chat completions of ``--max-tokens`` tokens on prompts from the built-in benign and
harmful suites) are sent to the serial server and then to the batched one by a pool of client threads (closed
loop: each client sends its next request when the last is answered). The table gives requests/s and p50/p95 latency per server and level and the batched/serial
throughput ratio; the script checks that both servers gave the same greedy answers, and prints the machine
(cores, torch threads) and the load average before and after, since other work on the machine slows both.

Optionally (``--guard-cost``) the probe guard (:class:`alignscope.analysis.probe.ProbeGuard` on the safety
layers, fitted on the built-in suites or read from ``--probe``) is served with policy ``allow`` at concurrency 1,
and its server-side cost (``alignscope.timing_ms``) is reported.

    PYTHONPATH=src python benchmarks/serve_load.py [--model smollm2] [--requests 64] [--max-tokens 16]
        [--concurrency 1,8,32] [--threads 2] [--max-batch-size 32] [--out serve_load.json]
    PYTHONPATH=src python benchmarks/serve_load.py --model tiny --requests 8   # a quick check of the script
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx


def drive(
    base_url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int, timeout: float = 1800
) -> dict[str, Any]:
    """Send one request per prompt with ``concurrency`` clients; latencies in seconds, answers by prompt."""
    latencies: list[float] = []
    errors: list[str] = []
    guard_ms: list[float] = []
    generate_ms: list[float] = []
    batch_rows: list[int] = []
    answers: dict[int, str] = {}
    lock = threading.Lock()
    url = f"{base_url}/chat/completions"
    with httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=concurrency)) as http:

        def one(i: int) -> None:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": prompts[i]}],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            t0 = time.perf_counter()
            data: dict[str, Any] = {}
            try:
                r = http.post(url, json=body)
                problem = None if r.status_code == 200 else f"HTTP {r.status_code}: {r.text[:200]}"
                if problem is None:
                    data = r.json()
            except httpx.HTTPError as e:
                problem = f"{type(e).__name__}: {e}"
            with lock:
                latencies.append(time.perf_counter() - t0)
                if problem:
                    errors.append(problem)
                if data:
                    answers[i] = data["choices"][0]["message"]["content"]
                    meta = data["alignscope"]
                    guard_ms.append(meta["timing_ms"]["guards"])
                    generate_ms.append(meta["timing_ms"]["generate"])
                    batch_rows.append(meta["batch_rows"])

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(one, range(len(prompts))))
        wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    return {
        "concurrency": concurrency,
        "requests": len(prompts),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": wall,
        "rps": len(prompts) / wall,
        "p50": statistics.median(latencies),
        "p95": q[18],
        "mean_batch_rows": statistics.mean(batch_rows) if batch_rows else float("nan"),
        "guard_ms": statistics.mean(guard_ms) if guard_ms else float("nan"),
        "generate_ms": statistics.mean(generate_ms) if generate_ms else float("nan"),
        "answers": answers,
    }


def machine(torch: Any) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def load_model_for_bench(spec: str) -> Any:
    if spec == "tiny":  # a tiny random model: checks the script end to end in seconds
        from alignscope.testing import tiny_local_model

        return tiny_local_model(seed=0)
    from alignscope.models import load_model

    return load_model(spec)


def fit_probe(model: Any, n: int) -> Any:
    from alignscope.analysis.probe import fit_probe_guard
    from alignscope.data import load_suite

    harmful = [s.prompt for s in load_suite("harmful").take(n, 0)]
    benign = [s.prompt for s in load_suite("benign").take(n, 0)]
    # the guard's layer is chosen among the middle layers, where Li et al. find the safety layers
    layers = model.num_layers
    middle = range(layers // 4, layers // 2 + 1)
    return fit_probe_guard(model, harmful, benign, guard_layers=middle).guard


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="a model spec, or 'tiny' (a tiny random model)")
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level and server")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--max-batch-size", type=int, default=32, help="the batched server's batch size")
    ap.add_argument("--batch-wait-ms", type=float, default=5.0, help="the batched server's quiet gap")
    ap.add_argument(
        "--max-batch-wait-ms", type=float, default=100.0, help="the batched server's longest wait"
    )
    ap.add_argument("--guard-cost", action="store_true", help="also measure the probe guard's cost")
    ap.add_argument("--probe", default=None, help="a saved probe guard (default: fit one on built-in suites)")
    ap.add_argument("--probe-prompts", type=int, default=32, help="prompts per class when fitting the probe")
    ap.add_argument("--out", default=None, help="write every measurement as JSON here")
    args = ap.parse_args(argv)

    import torch

    from alignscope.data import load_suite
    from alignscope.server import BackgroundServer, ServerSettings, create_app

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    model = load_model_for_bench(args.model)
    benign = [s.prompt for s in load_suite("benign").take(args.requests, 1)]
    harmful = [s.prompt for s in load_suite("harmful").take(args.requests, 1)]
    mixed = [p for pair in zip(benign, harmful, strict=False) for p in pair]
    prompts = [mixed[i % len(mixed)] for i in range(args.requests)]
    levels = [int(c) for c in args.concurrency.split(",")]
    serial_settings = ServerSettings(max_batch_size=1, max_tokens_limit=max(2048, args.max_tokens))
    batched_settings = ServerSettings(
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_batch_wait_ms=args.max_batch_wait_ms,
        max_tokens_limit=max(2048, args.max_tokens),
    )

    rows: list[dict[str, Any]] = []
    mismatches: list[int] = []
    with (
        BackgroundServer(create_app(model, settings=serial_settings)) as serial,
        BackgroundServer(create_app(model, settings=batched_settings)) as batched,
    ):
        for server in (serial, batched):  # warm-up
            drive(server.base_url, model.name, prompts[:2], 1, args.max_tokens)
        for c in levels:
            # serial then batched at each level, so a change of load on the machine falls on both alike
            s = drive(serial.base_url, model.name, prompts, c, args.max_tokens)
            b = drive(batched.base_url, model.name, prompts, c, args.max_tokens)
            rows += [{"server": "serial", **s}, {"server": f"batched ({args.max_batch_size})", **b}]
            mismatches += [
                i for i in s["answers"] if i in b["answers"] and s["answers"][i] != b["answers"][i]
            ]
            print(
                f"concurrency {c}: serial {s['rps']:.2f} req/s, batched {b['rps']:.2f} req/s "
                f"({b['rps'] / s['rps']:.2f}x)",
                flush=True,
            )

    guard_line = None
    if args.guard_cost:
        from alignscope.analysis.probe import ProbeGuard
        from alignscope.server import ProbeInputGuard

        probe = ProbeGuard.load(args.probe, model) if args.probe else fit_probe(model, args.probe_prompts)
        guard = ProbeInputGuard(probe, "allow")
        with BackgroundServer(create_app(model, [guard], settings=serial_settings)) as server:
            drive(server.base_url, model.name, prompts[:2], 1, args.max_tokens)
            guarded = drive(server.base_url, model.name, prompts, 1, args.max_tokens)
        share = guarded["guard_ms"] / (guarded["guard_ms"] + guarded["generate_ms"]) * 100
        guard_line = (
            f"probe guard (layer {probe.layer} of {model.num_layers}, policy allow, concurrency 1): "
            f"{guarded['guard_ms']:.1f} ms server-side per request ({share:.1f}% of guard + generation), "
            f"p50 {guarded['p50'] * 1000:.0f} ms, errors {guarded['errors']}"
        )
    load_after = os.getloadavg()

    info = machine(torch)
    print(
        f"\n`alignscope serve` under load: model {model.name}, greedy, max_tokens={args.max_tokens}, "
        f"{args.requests} requests per level and server, batched server max_batch_size={args.max_batch_size} "
        f"batch_wait_ms={args.batch_wait_ms:g} max_batch_wait_ms={args.max_batch_wait_ms:g}"
    )
    print(
        f"machine: {info['cpu']}; {info['cpu_count']} CPUs ({info['usable_cores']} usable), torch "
        f"{info['torch']} with {info['torch_threads']} threads, Python {info['python']}"
    )
    print(
        "load average (1/5/15 min): before "
        + "/".join(f"{x:.2f}" for x in load_before)
        + ", after "
        + "/".join(f"{x:.2f}" for x in load_after)
        + "\n"
    )
    print(
        "| clients | server | requests | errors | requests/s | p50 latency (ms) | p95 latency (ms) "
        "| mean batch | throughput vs serial |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    by_level = {(r["concurrency"], r["server"] == "serial"): r for r in rows}
    for r in rows:
        base = by_level[(r["concurrency"], True)]
        print(
            f"| {r['concurrency']} | {r['server']} | {r['requests']} | {r['errors']} | {r['rps']:.2f} "
            f"| {r['p50'] * 1000:.0f} | {r['p95'] * 1000:.0f} | {r['mean_batch_rows']:.1f} "
            f"| {r['rps'] / base['rps']:.2f}x |"
        )
    top = max(levels)
    ratio = by_level[(top, False)]["rps"] / by_level[(top, True)]["rps"]
    print(f"\nbatched / serial throughput at {top} clients: {ratio:.2f}x (target >= 4x)")
    compared = sum(len(r["answers"]) for r in rows if r["server"] == "serial")
    print(
        f"greedy answers that differ between the serial and batched servers: {len(mismatches)} of {compared}"
    )
    errors = [r["first_error"] for r in rows if r["first_error"]]
    if errors:
        print(f"first error: {errors[0]}")
    if guard_line:
        print(guard_line)
    if args.out:
        report = {
            "args": vars(args),
            "machine": info,
            "load_before": load_before,
            "load_after": load_after,
            "rows": [{k: v for k, v in r.items() if k != "answers"} for r in rows],
            "ratio_at_max_clients": ratio,
            "answer_mismatches": len(mismatches),
            "guard": guard_line,
        }
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 1 if errors or mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
