"""alignscope's GCG against nanoGCG (the fastest public implementation) on the embedded default.

    python benchmarks/gcg_vs_nanogcg.py [--behaviours 2] [--steps 10] [--search-width 64] [--topk 256]
                                        [--threads 1] [--out gcg_bench.json]

Both draw candidates with the same seeded calls (torch.rand, then torch.randint), so with exact scoring they
pick the same suffix at every step: the table says whether they did. Same model weights (SmolLM2-135M-Instruct, float32, saved with ``save_pretrained``), same AdvBench behaviours
and targets, same formatted prompt (alignscope's chat formatting, handed to nanoGCG as text), same initial
suffix, search width, top-k and steps. nanoGCG needs transformers<=4.47.1, so it runs in its own virtualenv
(created once under ``$ALIGNSCOPE_CACHE/venvs/nanogcg`` with pip: torch 2.13.0, transformers 4.47.1, nanogcg)
as a subprocess, one behaviour at a time, interleaved with alignscope's runs so load on a shared machine falls
on both alike. Both report the initial suffix's loss from a plain forward pass: equal values show that both
optimise the same problem.

alignscope runs twice: with its defaults (bfloat16 screening where the CPU has native bf16, exact losses
reported) and fully exact (``screen_dtype=None``: only the exact speed-ups: target-only logits, shared
suffix start, no last target token, de-duplication). Time per step is wall-clock (also CPU seconds, steadier
under contention). Prints a markdown table.

On a CPU shared with other work, one thread per process is the default: two OpenMP threads fighting other
processes for two cores spend most of their time waiting at barriers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from alignscope.attacks import gcg as gcg_module
from alignscope.attacks.gcg import NANOGCG_INIT, GCGConfig, run_gcg
from alignscope.cachefs import build_dir
from alignscope.data import load_suite
from alignscope.models import cache_dir, load_model

HERE = Path(__file__).resolve().parent
ADVBENCH = HERE.parent.parent / "shared" / "data" / "advbench" / "harmful_behaviors.csv"
NANOGCG_REQS = ["torch==2.13.0", "transformers==4.47.1", "nanogcg==0.3.0"]


def _has_nanogcg(venv: Path) -> bool:
    py = venv / "bin" / "python"
    return (
        py.exists() and subprocess.run([str(py), "-c", "import nanogcg"], capture_output=True).returncode == 0
    )


def ensure_venv(path: Path) -> Path:
    """The virtualenv's python, creating the environment on first use: in a private directory renamed into
    place under a lock, so concurrent benchmark runs neither build it twice nor use a half-installed one. Only
    ``bin/python`` is used (``python -m pip``, the runner script): a renamed venv's python still finds its
    packages, while its console scripts keep the temporary path in their shebang lines."""

    def create(tmp: Path) -> None:
        print(f"creating the nanoGCG virtualenv in {path} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True)
        subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", *NANOGCG_REQS], check=True)

    return build_dir(path, create, ready=_has_nanogcg) / "bin" / "python"


def saved_model(model: Any) -> Path:
    """The model saved as a plain HF directory that transformers 4.47 can read too (built once, atomically)."""

    def save(out: Path) -> None:
        model.model.save_pretrained(str(out), safe_serialization=True)
        model.tokenizer.save_pretrained(str(out))
        cfg = json.loads((out / "config.json").read_text())
        # transformers 5 writes rope_parameters; 4.47 reads rope_theta (and would silently use 10000)
        rope = (cfg.get("rope_parameters") or {}).get("rope_theta")
        if rope is not None:
            cfg["rope_theta"] = rope
        (out / "config.json").write_text(json.dumps(cfg, indent=2))

    return build_dir(cache_dir() / "bench" / "smollm2-hf", save, ready=lambda p: (p / "config.json").exists())


def run_nanogcg(py: Path, job: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        jf, of = Path(tmp) / "job.json", Path(tmp) / "out.json"
        jf.write_text(json.dumps(job))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run(
            [str(py), str(HERE / "_nanogcg_runner.py"), str(jf), str(of)],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"nanoGCG failed:\n{proc.stderr[-3000:]}")
        return dict(json.loads(of.read_text()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--behaviours", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--search-width", type=int, default=64)
    ap.add_argument("--topk", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=str(ADVBENCH))
    ap.add_argument("--venv", default=str(cache_dir() / "venvs" / "nanogcg"))
    ap.add_argument("--no-exact", action="store_true", help="skip the fully exact alignscope run")
    ap.add_argument("--out", default=None, help="write all measurements as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    py = ensure_venv(Path(args.venv))
    model = load_model("smollm2", dtype="float32")
    model_dir = saved_model(model)
    suite = load_suite(f"advbench:{args.data}")
    behaviours = list(suite)[1 : 1 + args.behaviours]  # row 0's target has no "here is"; take the next ones
    variants = {"alignscope": GCGConfig()} | (
        {} if args.no_exact else {"alignscope (exact)": GCGConfig(screen_dtype=None)}
    )
    results: dict[str, list[dict[str, Any]]] = {"nanoGCG 0.3.0": [], **{k: [] for k in variants}}
    for b in behaviours:
        # nanoGCG gets "{prompt}{optim_str}" with init " x x ...": the same tokens as alignscope's
        # "{prompt} {optim_str}" with init "x x ...", whose leading space belongs to the suffix
        prompt_text = model.format_chat([{"role": "user", "content": b.prompt + "{optim_str}"}])
        job = {
            "model_dir": str(model_dir),
            "prompt": prompt_text,
            "target": b.target,
            "init": " " + NANOGCG_INIT,
            "steps": args.steps,
            "search_width": args.search_width,
            "topk": args.topk,
            "seed": 0,
            "threads": args.threads,
        }
        print(f"[{b.id}] nanoGCG ...", file=sys.stderr)
        ng = run_nanogcg(py, job)
        results["nanoGCG 0.3.0"].append(ng)
        for name, base in variants.items():
            cfg = base.__class__(
                **{
                    **base.to_dict(),
                    "num_steps": args.steps,
                    "search_width": args.search_width,
                    "topk": args.topk,
                    "seed": 0,
                }
            )
            print(f"[{b.id}] {name} ...", file=sys.stderr)
            marks: list[float] = []
            real = gcg_module.token_gradient

            def timed(
                *a: Any, _real: Any = real, _marks: list[float] = marks
            ) -> Any:  # each step starts here
                _marks.append(time.process_time())
                return _real(*a)

            gcg_module.token_gradient = timed
            c0 = time.process_time()
            try:
                res = run_gcg(model, b.prompt, str(b.target), cfg)
            finally:
                gcg_module.token_gradient = real
            marks.append(time.process_time())
            results[name].append(
                {
                    "losses": res.losses,
                    "best_loss": res.best_loss,
                    "best_string": res.best_string,
                    "step_times": res.step_times,
                    "cpu_total": time.process_time() - c0,
                    "step_cpu": [y - x for x, y in itertools.pairwise(marks)],
                    "init_loss": res.init_loss,
                    "candidates": res.n_candidates,
                }
            )
        print(
            f"[{b.id}] init loss: nanoGCG {ng['init_loss']:.4f}, alignscope {results['alignscope'][-1]['init_loss']:.4f}",
            file=sys.stderr,
        )

    def med(rs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(t for r in rs for t in r[key])

    ng = results["nanoGCG 0.3.0"]
    print(
        f"\nGCG on SmolLM2-135M-Instruct (float32, CPU, {args.threads} thread(s)), {len(behaviours)} AdvBench "
        f"behaviours, {args.steps} steps, search width {args.search_width}, top-k {args.topk}, init 20 x's\n"
    )
    print(
        "| implementation | median s/step (wall) | speed-up | median CPU s/step | speed-up (CPU) "
        "| mean loss after last step | mean best loss | same suffix as nanoGCG at every step |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, rs in results.items():
        last = statistics.mean(r["losses"][-1] for r in rs)
        best = statistics.mean(r["best_loss"] for r in rs)
        wall, cpu = med(rs, "step_times"), med(rs, "step_cpu")
        same = all(
            [round(x, 3) for x in a["losses"]] == [round(x, 3) for x in b["losses"]]
            for a, b in zip(rs, ng, strict=True)
        )
        print(
            f"| {name} | {wall:.2f} | {med(ng, 'step_times') / wall:.2f}x | {cpu:.2f} | {med(ng, 'step_cpu') / cpu:.2f}x "
            f"| {last:.3f} | {best:.3f} | {'yes' if same else 'no'} |"
        )
    print(
        "\ninit losses (nanoGCG / alignscope): "
        + ", ".join(
            f"{a['init_loss']:.4f}/{b['init_loss']:.4f}"
            for a, b in zip(ng, results["alignscope"], strict=True)
        )
    )
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
