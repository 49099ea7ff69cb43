"""``alignscope train RECIPE``, ``attack finetune`` and ``reproduce shallow-vs-deep``.

The two experiments here are registered (:mod:`alignscope.experiments`) but their commands are written by hand:
the fine-tuning attack's config has its own ``out`` and ``resume`` (a training run), and both keep the options they
had (``--set`` / ``--config`` reach every field). Each parses, builds the config, calls ``run_x`` and prints.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from alignscope.cli.apps import attack_app, reproduce_app, train_app
from alignscope.cli.common import (
    ConfigFileOpt,
    ModelOpt,
    OutOpt,
    ResumeOpt,
    SetOpt,
    console,
    done,
    fields,
    handle_errors,
)


def _train_recipe(recipe: str) -> Callable[..., None]:
    @handle_errors
    def command(
        model: Annotated[str | None, typer.Option("--model", "-m", help="Starting model spec.")] = None,
        out: Annotated[Path | None, typer.Option(help="Output run directory.")] = None,
        data: Annotated[
            Path | None,
            typer.Option(
                help="Training data JSONL (chat messages); default: built from alignscope's suites."
            ),
        ] = None,
        full_finetune: Annotated[bool, typer.Option(help="Full fine-tuning instead of LoRA.")] = False,
        sets: SetOpt = None,
        config_file: ConfigFileOpt = None,
        num_processes: Annotated[
            int, typer.Option(help="Processes under accelerate launch (1: in-process).")
        ] = 1,
        accelerate_config: Annotated[
            Path | None, typer.Option(help="accelerate / DeepSpeed config file.")
        ] = None,
    ) -> None:
        from alignscope.training import RECIPES, config_from_dict, launch, train

        values = fields(
            config_file,
            sets,
            model=model,
            out=str(out) if out else None,
            data=str(data) if data else None,
            full_finetune=full_finetune or None,
        )
        cfg = config_from_dict(RECIPES[recipe].config_class, values)
        if num_processes > 1 or accelerate_config is not None:
            proc = launch(recipe, cfg, num_processes=num_processes, accelerate_config=accelerate_config)
            console.print(proc.stdout[-2000:])
            return
        result = train(recipe, cfg)
        console.print(f"[green]trained {result.recipe}:[/] {result.steps} steps; output {result.output}")
        console.print(f"evaluate it: alignscope audit --model {result.output}")

    command.__doc__ = (
        f"Train with the {recipe} recipe (see alignscope.training; every config field via --set)."
    )
    return command


RECIPE_COMMANDS: tuple[str, ...] = (
    "safety-sft",
    "deep-align",
    "safety-dpo",
    "adversarial-sft",
    "harden",
    "constrained-sft",
    "sppft",
)
"""One ``alignscope train`` command per recipe of :data:`alignscope.training.RECIPES`. Listed here rather than
read from the registry, which would import torch and transformers whenever the CLI starts;
``tests/test_cli_validation.py`` checks the two agree, so a new recipe cannot miss its command."""

for _name in RECIPE_COMMANDS:
    train_app.command(_name)(_train_recipe(_name))


@attack_app.command("finetune")
@handle_errors
def attack_finetune(
    model: ModelOpt = "smollm2-aligned",
    kind: Annotated[str, typer.Option(help="harmful, identity or backdoor.")] = "harmful",
    defense: Annotated[str | None, typer.Option(help="None (standard SFT), constrained or sppft.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output run directory.")] = None,
    sets: SetOpt = None,
    config_file: ConfigFileOpt = None,
) -> None:
    """Fine-tuning attacks (harmful examples, identity shifting, backdoor), optionally defended."""
    from alignscope.training.attack import FinetuneAttackConfig, run_finetune_attack
    from alignscope.training.config import config_from_dict

    values = fields(config_file, sets, model=model, kind=kind, defense=defense, out=str(out) if out else None)
    result = run_finetune_attack(config_from_dict(FinetuneAttackConfig, values))
    console.print(f"[green]{result.summary()}[/]")


@reproduce_app.command("shallow-vs-deep")
@handle_errors
def reproduce_shallow_vs_deep_cmd(
    out: OutOpt = None,
    resume: ResumeOpt = False,
    sets: SetOpt = None,
    config_file: ConfigFileOpt = None,
) -> None:
    """Qi et al. 2024 on the embedded default: build aligned and deep models, measure refusal, prefilling,
    per-token KL and the fine-tuning attack; one report. Stages are cached, so --resume continues."""
    from alignscope.runs import RunDir
    from alignscope.training.reproduce import ShallowDeepConfig, run_shallow_vs_deep

    cfg = ShallowDeepConfig.from_dict(fields(config_file, sets))
    run = RunDir.create("reproduce shallow-vs-deep", cfg.to_dict(), out=out, resume=resume)
    result = run_shallow_vs_deep(cfg, run)
    console.print(result.summary())
    done(run)
