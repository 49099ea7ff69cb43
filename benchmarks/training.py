"""Training throughput and peak memory of alignscope's recipes on the embedded default.

Each configuration runs in a fresh process (so its peak resident memory is its own) through the real recipe path
(``train("safety-sft", ...)`` on a chat JSONL file: transformers' Trainer, the role-masked collator, LoRA or full
fine-tuning; ``constrained-sft`` adds the constrained objective and its reference pass). Throughput counts the real
(non-padding) tokens of the examples trained on, over the Trainer's wall time; the first step is included.

    python benchmarks/training.py                      # LoRA, full, constrained on smollm2
    python benchmarks/training.py --steps 4 --threads 1

Prints a table; ``--json`` prints the raw results as well.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [
    "the",
    "model",
    "reads",
    "a",
    "prompt",
    "and",
    "writes",
    "an",
    "answer",
    "about",
    "rivers",
    "mountains",
    "cities",
    "history",
    "science",
    "cooking",
    "music",
    "gardens",
    "weather",
    "travel",
    "poems",
    "stories",
    "numbers",
    "planets",
    "oceans",
    "forests",
    "animals",
    "languages",
]

CONFIGS = {
    "lora": ("safety-sft", {}),
    "full": ("safety-sft", {"full_finetune": True}),
    "lora+constrained": ("constrained-sft", {}),
}


def _chat_file(path: Path, n: int, answer_words: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            prompt = " ".join(rng.choices(WORDS, k=12)).capitalize() + "?"
            answer = " ".join(rng.choices(WORDS, k=answer_words)).capitalize() + "."
            msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": msgs}) + "\n")


def _worker(args: argparse.Namespace) -> None:
    import resource

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from alignscope.training import ConstrainedSFTConfig, SafetySFTConfig, train

    recipe, extra = CONFIGS[args.worker]
    cls = ConstrainedSFTConfig if recipe == "constrained-sft" else SafetySFTConfig
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "chat.jsonl"
        _chat_file(data, args.steps * args.batch_size, args.answer_words)
        cfg = cls(
            model=args.model,
            out=str(Path(tmp) / "run"),
            data=str(data),
            epochs=1,
            batch_size=args.batch_size,
            progress=False,
            save_steps=10_000,
            group_by_length=False,
            **extra,
        )
        start = time.perf_counter()
        result = train(recipe, cfg)
        total = time.perf_counter() - start
    tokens = int(result.metrics["tokens_per_epoch"])
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "config": args.worker,
                "steps": result.steps,
                "tokens": tokens,
                "train_seconds": result.seconds,
                "tokens_per_second": tokens / result.seconds,
                "wall_seconds_with_setup": total,
                "peak_rss_mib": peak_mib,
                "threads": torch.get_num_threads(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--configs", default="lora,full,lora+constrained")
    parser.add_argument("--steps", type=int, default=6, help="optimiser steps per configuration")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--answer-words", type=int, default=60, help="assistant answer length in words")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    results = []
    for name in args.configs.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            name,
            "--model",
            args.model,
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--answer-words",
            str(args.answer_words),
            "--threads",
            str(args.threads),
        ]
        env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    load = os.getloadavg()[0]
    print(
        f"model {args.model}, batch {args.batch_size}, {args.steps} steps, load average {load:.1f} "
        f"on {os.cpu_count()} cores"
    )
    print(f"{'config':<18}{'tokens/s':>10}{'train s':>9}{'tokens':>8}{'peak RSS MiB':>14}{'threads':>9}")
    for r in results:
        print(
            f"{r['config']:<18}{r['tokens_per_second']:>10.0f}{r['train_seconds']:>9.1f}{r['tokens']:>8d}"
            f"{r['peak_rss_mib']:>14.0f}{r['threads']:>9d}"
        )
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
