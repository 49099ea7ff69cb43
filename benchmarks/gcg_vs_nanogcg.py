"""alignscope's GCG against nanoGCG (the fastest public implementation) on the embedded default, in one run.

    python benchmarks/gcg_vs_nanogcg.py            # 3 AdvBench behaviours x 50 steps (+ 4 exact steps each)
    python benchmarks/gcg_vs_nanogcg.py --quick    # 3 behaviours x 15 steps (+ 3 exact steps each)
        [--behaviours N] [--steps N] [--exact-steps N] [--search-width 64] [--topk 256] [--jobs 2]
        [--data PATH] [--venv PATH] [--out DIR]

Two measurements:

1. **Per step at identical trajectories.** alignscope exact (``GCGConfig.exact()``: every candidate loss and
   the gradient in float32 with torch's own kernels) and alignscope float32/oneDNN (the same but float32
   linears through oneDNN where it beats torch's BLAS, see :mod:`alignscope.models.fast_linear`) run the first
   ``--exact-steps`` steps of each behaviour. Both draw candidates with the same seeded calls as nanoGCG
   (torch.rand, then torch.randint), so they must choose nanoGCG's suffix at every step: the table says
   whether they did (losses equal to 3 decimals). Median CPU and wall seconds per step.
2. **Best loss against CPU time** for alignscope's defaults (bfloat16 gradient and candidate screening where
   the CPU has native bf16, exact re-scoring of the best few, float32/oneDNN) against nanoGCG, ``--steps``
   steps each. Its trajectory may differ from nanoGCG's, so it is judged by loss reached against CPU time:
   for each behaviour, the CPU seconds nanoGCG took to reach its final best loss, the CPU seconds alignscope
   took to reach the same loss, and their ratio (target: alignscope <= 1/3). Curves start at the initial
   suffix's loss and include each side's set-up (prefix cache, masks, the bfloat16 copy). Plot (PNG) and
   table.

Same model weights (SmolLM2-135M-Instruct, float32, saved with ``save_pretrained``), same AdvBench behaviours
(rows 1.., row 0's target has no "here is") and targets, same formatted prompt (alignscope's chat formatting,
handed to nanoGCG as text), same initial suffix (20 x's), search width, top-k, seed. nanoGCG needs
transformers<=4.47.1, so it runs in its own virtualenv (created once under ``$ALIGNSCOPE_CACHE/venvs/nanogcg``).

Every run is its own single-threaded process and the runs are spread over ``--jobs`` worker slots (default 2,
one per core on the 2-core reference machine): the first nanoGCG run beside alignscope's default runs, then
the other nanoGCG runs beside each other, then the short exact runs, so every run shares the machine with one
other run; CPU seconds are those of the run's own process. The machine, the load average before and
after, and each run's load and CPU share are printed, and a ratio whose two sides ran under different load is
refused (the rule is in ``benchmarks/_machine.py``). Expected duration on an idle 2-core machine: about two
50-step nanoGCG runs back to back plus ~1 min (~14-15 min at ~8 CPU-s per nanoGCG step) for the defaults,
~5 min for ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from _machine import RULE, Side, load1, machine_info, machine_line, print_heading, refusal
from alignscope.attacks.gcg import NANOGCG_INIT, GCGConfig, run_gcg
from alignscope.cachefs import build_dir
from alignscope.data import load_suite
from alignscope.models import cache_dir, load_model

HERE = Path(__file__).resolve().parent
ADVBENCH = HERE.parent.parent / "shared" / "data" / "advbench" / "harmful_behaviors.csv"
NANOGCG_REQS = ["torch==2.13.0", "transformers==4.47.1", "nanogcg==0.3.0"]
NANOGCG = "nanoGCG 0.3.0"
DEFAULT = "alignscope (defaults)"
EXACT = "alignscope exact"
EXACT_ONEDNN = "alignscope float32/oneDNN"


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


# -- one run, in its own process ------------------------------------------------------------------------------
def alignscope_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run alignscope's GCG for one behaviour (the worker side of ``--job``)."""
    torch.set_num_threads(1)
    model = load_model("smollm2", dtype="float32")
    settings = {
        "num_steps": job["steps"],
        "search_width": job["search_width"],
        "topk": job["topk"],
        "seed": 0,
    }
    variant = job["variant"]
    if variant == EXACT:
        cfg = GCGConfig.exact(**settings)
    elif variant == EXACT_ONEDNN:
        cfg = GCGConfig.exact(fp32_linear="auto", **settings)
    else:
        cfg = GCGConfig(**settings)
    l0, w0, c0 = load1(), time.perf_counter(), time.process_time()
    res = run_gcg(model, job["prompt"], job["target"], cfg)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {
        "losses": res.losses,
        "best_loss": res.best_loss,
        "best_string": res.best_string,
        "init_loss": res.init_loss,
        "step_cpu": res.step_cpu_times,
        "step_wall": res.step_times,
        "setup_cpu": cpu - sum(res.step_cpu_times),
        "candidates": res.n_candidates,
        "side": Side(variant, wall, cpu, 1, l0, load1()).to_dict(),
        "config": cfg.to_dict(),
    }


def run_job(job: dict[str, Any], venv_python: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        jf, of = Path(tmp) / "job.json", Path(tmp) / "out.json"
        jf.write_text(json.dumps(job))
        if job["variant"] == NANOGCG:
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            cmd = [str(venv_python), str(HERE / "_nanogcg_runner.py"), str(jf), str(of)]
        else:
            env = dict(os.environ)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--job", str(jf), str(of)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{job['variant']} on {job['id']} failed:\n{proc.stderr[-3000:]}")
        out = dict(json.loads(of.read_text()))
    out["variant"], out["id"] = job["variant"], job["id"]
    print(
        f"  done: {job['variant']:<28} {job['id']}  {len(out['losses'])} steps, best {out['best_loss']:.4f}, "
        f"CPU {out['side']['cpu']:.0f} s, load {out['side']['load']:.2f}, CPU share {out['side']['share']:.2f}",
        file=sys.stderr,
        flush=True,
    )
    return out


# -- analysis -------------------------------------------------------------------------------------------------
@dataclass
class Curve:
    """Best loss so far against cumulative CPU seconds (point 0: the initial loss after set-up)."""

    cpu: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, run: dict[str, Any]) -> Curve:
        t, best = float(run["setup_cpu"]), float(run["init_loss"])
        c = cls([t], [best])
        for loss, dt in zip(run["losses"], run["step_cpu"], strict=True):
            t += dt
            best = min(best, float(loss))
            c.cpu.append(t)
            c.best.append(best)
        return c

    def time_to(self, loss: float, tol: float = 1e-4) -> float | None:
        """CPU seconds until the best loss first reached ``loss`` (within ``tol``), None if never."""
        return next((t for t, b in zip(self.cpu, self.best, strict=True) if b <= loss + tol), None)


def per_step_table(runs: list[dict[str, Any]], exact_steps: int) -> list[str]:
    lines = [
        f"Per step, first {exact_steps} steps of each behaviour (identical trajectories expected for the exact "
        "variants)\n",
        "| implementation | median CPU s/step | speed-up (CPU) | median wall s/step | speed-up (wall) "
        "| same suffix as nanoGCG at every step |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    ng = {r["id"]: r for r in runs if r["variant"] == NANOGCG}

    def first(r: dict[str, Any], key: str) -> list[float]:
        return list(r[key][:exact_steps])

    ng_cpu = statistics.median(t for r in ng.values() for t in first(r, "step_cpu"))
    ng_wall = statistics.median(t for r in ng.values() for t in first(r, "step_wall"))
    lines.append(f"| {NANOGCG} | {ng_cpu:.2f} | 1.00x | {ng_wall:.2f} | 1.00x | (reference) |")
    for variant in (EXACT, EXACT_ONEDNN, DEFAULT):
        rs = [r for r in runs if r["variant"] == variant]
        if not rs:
            continue
        cpu = statistics.median(t for r in rs for t in first(r, "step_cpu"))
        wall = statistics.median(t for r in rs for t in first(r, "step_wall"))
        same = all(
            [round(x, 3) for x in first(r, "losses")] == [round(x, 3) for x in first(ng[r["id"]], "losses")]
            for r in rs
        )
        refused = [
            f"{r['id']}: {why}"
            for r in rs
            if (why := refusal(Side.from_dict(ng[r["id"]]["side"]), Side.from_dict(r["side"])))
        ]
        speed = f"{ng_cpu / cpu:.2f}x" if not refused else "refused"
        speed_wall = f"{ng_wall / wall:.2f}x" if not refused else "refused"
        lines.append(
            f"| {variant} | {cpu:.2f} | {speed} | {wall:.2f} | {speed_wall} | {'yes' if same else 'no'} |"
        )
        lines += [f"  refused ({variant}, load rule): {x}" for x in refused]
    return lines


def curve_table(runs: list[dict[str, Any]]) -> tuple[list[str], dict[str, tuple[Curve, Curve]]]:
    lines = [
        "\nBest loss against CPU time, alignscope defaults vs nanoGCG\n",
        "| behaviour | nanoGCG final best loss | nanoGCG CPU s to reach it | alignscope CPU s to reach it "
        "| alignscope / nanoGCG | alignscope final best loss | alignscope CPU s (all steps) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    curves: dict[str, tuple[Curve, Curve]] = {}
    fractions: list[float] = []
    ng = {r["id"]: r for r in runs if r["variant"] == NANOGCG}
    for r in (r for r in runs if r["variant"] == DEFAULT):
        n = ng[r["id"]]
        cn, ca = Curve.of(n), Curve.of(r)
        curves[r["id"]] = (cn, ca)
        target = cn.best[-1]
        t_ng, t_as = cn.time_to(target), ca.time_to(target)
        why = refusal(Side.from_dict(n["side"]), Side.from_dict(r["side"]))
        if why:
            frac = f"refused: {why}"
        elif t_as is None or t_ng is None:
            frac = "not reached"
        else:
            fractions.append(t_as / t_ng)
            frac = f"{t_as / t_ng:.2f} ({t_ng / t_as:.1f}x faster)"
        lines.append(
            f"| {r['id']} | {target:.4f} | {t_ng or float('nan'):.0f} | "
            f"{'-' if t_as is None else f'{t_as:.0f}'} | {frac} | {ca.best[-1]:.4f} | {ca.cpu[-1]:.0f} |"
        )
    if fractions:
        lines.append(
            f"\nmedian alignscope/nanoGCG CPU time to nanoGCG's final loss: {statistics.median(fractions):.2f} "
            f"(target <= 0.33), worst {max(fractions):.2f}, over {len(fractions)} behaviour(s)"
        )
    return lines, curves


def plot(curves: dict[str, tuple[Curve, Curve]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, (bid, (cn, ca)) in zip(axes[0], curves.items(), strict=True):
        ax.step(cn.cpu, cn.best, where="post", label=NANOGCG)
        ax.step(ca.cpu, ca.best, where="post", label="alignscope")
        ax.axhline(cn.best[-1], color="grey", lw=0.6, ls=":")
        ax.set_title(bid)
        ax.set_xlabel("CPU seconds (1 thread)")
        ax.set_ylabel("best loss so far")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 behaviours x 15 steps, 3 exact steps")
    ap.add_argument("--behaviours", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="steps of the curves (default 50; quick 15)")
    ap.add_argument("--exact-steps", type=int, default=None, help="exact-variant steps (default 4; quick 3)")
    ap.add_argument("--search-width", type=int, default=64)
    ap.add_argument("--topk", type=int, default=256)
    ap.add_argument("--jobs", type=int, default=2, help="runs at once (one per core)")
    ap.add_argument("--data", default=str(ADVBENCH))
    ap.add_argument("--venv", default=None, help="nanoGCG's virtualenv (default: the shared cache)")
    ap.add_argument("--out", default="gcg_bench", help="directory for the JSON and the plot")
    ap.add_argument("--job", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        job = json.loads(Path(args.job[0]).read_text())
        Path(args.job[1]).write_text(json.dumps(alignscope_job(job)))
        return 0
    steps = args.steps or (15 if args.quick else 50)
    exact_steps = min(steps, args.exact_steps or (3 if args.quick else 4))
    if not Path(args.data).is_file():
        print(
            f"skipped: AdvBench not found at {args.data} (the public data directory ../shared/data is not "
            "beside this checkout; pass --data PATH to harmful_behaviors.csv)"
        )
        return 0

    torch.set_num_threads(1)
    py = ensure_venv(Path(args.venv) if args.venv else cache_dir() / "venvs" / "nanogcg")
    info = machine_info()
    load_before = load1()
    model = load_model("smollm2", dtype="float32")
    model_dir = saved_model(model)
    behaviours = list(load_suite(f"advbench:{args.data}"))[1 : 1 + args.behaviours]
    common = {"search_width": args.search_width, "topk": args.topk, "seed": 0, "threads": 1}
    nano: dict[str, dict[str, Any]] = {}
    mine: dict[str, list[dict[str, Any]]] = {DEFAULT: [], EXACT: [], EXACT_ONEDNN: []}
    for b in behaviours:
        # nanoGCG gets "{prompt}{optim_str}" with init " x x ...": the same tokens as alignscope's
        # "{prompt} {optim_str}" with init "x x ...", whose leading space belongs to the suffix
        text = model.format_chat([{"role": "user", "content": b.prompt + "{optim_str}"}])
        nano[b.id] = {
            "variant": NANOGCG,
            "id": b.id,
            "model_dir": str(model_dir),
            "prompt": text,
            "init": " " + NANOGCG_INIT,
            "target": str(b.target),
            "steps": steps,
            **common,
        }
        for variant, n in ((DEFAULT, steps), (EXACT, exact_steps), (EXACT_ONEDNN, exact_steps)):
            mine[variant].append(
                {
                    "variant": variant,
                    "id": b.id,
                    "prompt": b.prompt,
                    "target": str(b.target),
                    "steps": n,
                    **common,
                }
            )
    # Two slots, taken in this order: the first nanoGCG run beside all of alignscope's default runs (about as
    # long together), then the other nanoGCG runs beside each other, then the short exact runs. Every run
    # shares the machine with one other run, and the two slots finish close together.
    ids = list(nano)
    jobs = [nano[ids[0]], *mine[DEFAULT], *(nano[i] for i in ids[1:]), *mine[EXACT], *mine[EXACT_ONEDNN]]
    del model
    print(machine_line(info), flush=True)
    print(
        f"{len(behaviours)} behaviours x {steps} steps (exact variants {exact_steps}), {len(jobs)} runs, "
        f"{args.jobs} at a time",
        file=sys.stderr,
        flush=True,
    )
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda j: run_job(j, py), jobs))
    load_after = load1()

    print_heading(
        f"\nGCG on SmolLM2-135M-Instruct (float32, CPU, 1 thread per run, {args.jobs} runs at a time), "
        f"{len(behaviours)} AdvBench behaviours, search width {args.search_width}, top-k {args.topk}, init 20 "
        f"x's, seed 0; {time.perf_counter() - t0:.0f} s in all",
        load_before,
        load_after,
    )
    for line in per_step_table(runs, exact_steps):
        print(line)
    lines, curves = curve_table(runs)
    for line in lines:
        print(line)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if curves:
        plot(curves, out / "gcg_loss_vs_cpu.png")
        print(f"\nplot: {out / 'gcg_loss_vs_cpu.png'}")
    print("\nruns (load = mean 1-minute load average over the run; share = CPU-s / wall-s):")
    for r in runs:
        s = r["side"]
        print(
            f"  {r['variant']:<28} {r['id']}: {len(r['losses'])} steps, init loss {r['init_loss']:.4f}, "
            f"CPU {s['cpu']:.0f} s, wall {s['wall']:.0f} s, load {s['load']:.2f}, share {s['share']:.2f}"
        )
    (out / "gcg_bench.json").write_text(
        json.dumps({"args": vars(args), "machine": info, "runs": runs, "ratio_rule": RULE}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
