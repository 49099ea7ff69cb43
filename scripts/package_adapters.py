"""Package adapters as alignscope's shipped model specs (float16 weights + PROVENANCE.json).

    python scripts/package_adapters.py RUN_DIR [--dest src/alignscope/models/adapters]
    python scripts/package_adapters.py --train RUN_DIR --name smollm2-balanced --command "alignscope train ..."

The first form packages the aligned and deep adapters of a ``reproduce shallow-vs-deep`` run as
``smollm2-aligned`` / ``smollm2-deep`` (the deep adapter deepens the aligned one, so its base model is rewritten
to the shipped name ``smollm2-aligned``). The second packages the adapter of one ``alignscope train`` run under
``--name``, after measuring it on the held-out (test) splits of the built-in suites: greedy, 64 new tokens,
keyword judge; the rates go into the provenance.
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
    config = _copy_fp16(src, out)
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
        "base_model": NAMES["aligned"]
        if config["base_model_name_or_path"] == NAMES["aligned"]
        else "smollm2",
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


def _copy_fp16(src: Path, out: Path) -> dict[str, Any]:
    """float16 weights and the adapter config of ``src`` into a fresh ``out``; returns the config."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    weights = load_file(str(src / "adapter_model.safetensors"))
    save_file({k: v.to(torch.float16) for k, v in weights.items()}, str(out / "adapter_model.safetensors"))
    (out / "adapter_model.safetensors").chmod(0o644)
    config: dict[str, Any] = json.loads((src / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return config


def held_out_rates(model_spec: str, max_new_tokens: int = 64) -> dict[str, Any]:
    """Refusal rates with 95 % Wilson intervals on the test splits (seed 0, half) of the built-in suites."""
    from alignscope.judges.keyword import KeywordJudge
    from alignscope.models import GenerationConfig, load_model, user_turn
    from alignscope.stats import rate_of
    from alignscope.training.builders import test_split

    model, judge = load_model(model_spec), KeywordJudge()
    gen = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=32)
    rates: dict[str, Any] = {
        "judge": "keyword",
        "generation": gen.describe(),
        "split": "test, fraction 0.5, seed 0",
    }
    for suite in ("harmful", "benign", "borderline"):
        prompts = [s.prompt for s in test_split(suite, 0.5, 0)]
        answers = model.generate([user_turn(p) for p in prompts], gen)
        rates[f"{suite}_refused"] = rate_of(
            [bool(v.refused) for v in judge.judge_batch(prompts, answers)]
        ).to_dict()
    return rates


def package_train_run(run: Path, name: str, command: str, dest: Path) -> Path:
    """Package the adapter of an ``alignscope train`` run as ``name``, with its held-out rates."""
    src = run / "adapter"
    out = dest / name
    config = _copy_fp16(src, out)
    training = json.loads((src / "alignscope_training.json").read_text())
    provenance = {
        "name": name,
        "base_model": config["base_model_name_or_path"],
        "built_by": f"alignscope.training.train (recipe {training['recipe']!r})",
        "command": command,
        "recipe": training["recipe"],
        "seed": training["config"].get("seed"),
        "recipe_config": training["config"],
        "training_metrics": training.get("metrics"),
        "weights_dtype": "float16 (trained in float32; cast for packaging)",
        "evaluation": held_out_rates(str(out)),
    }
    (out / "PROVENANCE.json").write_text(json.dumps(provenance, indent=2, default=str))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, nargs="?", help="a reproduce shallow-vs-deep run directory")
    parser.add_argument("--train", type=Path, help="an alignscope train run directory")
    parser.add_argument("--name", help="the shipped name of the --train run's adapter")
    parser.add_argument("--command", default="", help="the command that made the --train run")
    parser.add_argument(
        "--dest", type=Path, default=Path(__file__).parents[1] / "src/alignscope/models/adapters"
    )
    args = parser.parse_args()
    if args.train:
        if not args.name:
            parser.error("--train needs --name")
        print(package_train_run(args.train, args.name, args.command, args.dest))
        return
    if args.run is None:
        parser.error("give a reproduction RUN_DIR or --train RUN_DIR --name NAME")
    for stage in NAMES:
        print(package(args.run, stage, args.dest))


if __name__ == "__main__":
    main()
