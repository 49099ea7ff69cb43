"""Package the aligned and deep adapters of a ``reproduce shallow-vs-deep`` run as alignscope's shipped
``smollm2-aligned`` / ``smollm2-deep`` (float16 weights + PROVENANCE.json with the run's config and metrics).

    python scripts/package_adapters.py RUN_DIR [--dest src/alignscope/models/adapters]

The deep adapter deepens the aligned one, so its base model is rewritten to the shipped name ``smollm2-aligned``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

NAMES = {"aligned": "smollm2-aligned", "deep": "smollm2-deep"}
RECIPES = {"aligned": "safety-sft", "deep": "deep-align"}


def package(run: Path, stage: str, dest: Path) -> Path:
    metrics = json.loads((run / "metrics.json").read_text())
    src = run / stage / "adapter"
    out = dest / NAMES[stage]
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    weights = load_file(str(src / "adapter_model.safetensors"))
    save_file({k: v.to(torch.float16) for k, v in weights.items()}, str(out / "adapter_model.safetensors"))
    (out / "adapter_model.safetensors").chmod(0o644)
    config = json.loads((src / "adapter_config.json").read_text())
    if stage == "deep" and metrics["config"].get("deep_from", "base") == "aligned":
        config["base_model_name_or_path"] = NAMES["aligned"]
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    training = json.loads((src / "alignscope_training.json").read_text())
    evaluation: dict[str, Any] = {
        "judge": metrics.get("judge"),
        "judge_note": metrics.get("judge_note"),
        "generation": metrics.get("generation"),
        "held_out_harmful_prompts": metrics.get("n_harmful_test"),
        "prefill_prompts": metrics.get("n_prefill_prompts"),
        **metrics["models"][stage],
        "per_token_kl_vs_base": metrics["kl"].get(stage),
    }
    if stage == "aligned":
        evaluation["harmful_finetune_attack"] = metrics.get("attack")
    provenance = {
        "name": NAMES[stage],
        "base_model": NAMES["aligned"] if config["base_model_name_or_path"] == NAMES["aligned"] else "smollm2",
        "built_by": f"alignscope.training.reproduce.reproduce_shallow_vs_deep (stage {stage!r}), "
        f"recipe {RECIPES[stage]}",
        "command": "alignscope reproduce shallow-vs-deep",
        "reproduction_config": metrics["config"],
        "seed": metrics["config"]["seed"],
        "recipe": RECIPES[stage],
        "recipe_config": training.get("config"),
        "training_metrics": training.get("metrics"),
        "weights_dtype": "float16 (trained in float32; cast for packaging)",
        "evaluation": evaluation,
        "timings": metrics.get("timings"),
        "checks": metrics.get("checks"),
    }
    (out / "PROVENANCE.json").write_text(json.dumps(provenance, indent=2, default=str))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--dest", type=Path, default=Path(__file__).parents[1] / "src/alignscope/models/adapters")
    args = parser.parse_args()
    for stage in NAMES:
        print(package(args.run, stage, args.dest))


if __name__ == "__main__":
    main()
