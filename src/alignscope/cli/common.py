"""What every command shares: option types, error handling (one line naming the culprit, exit 2), config
fields from ``--config``/``--set``, and the closing lines that name the run directory."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from alignscope.models.base import ModelError
from alignscope.validation import OptionError

console = Console(stderr=True)
"""Where commands print progress lines and errors (stderr: stdout stays for results)."""

F = TypeVar("F", bound=Callable[..., Any])

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Model spec: smollm2, a HF directory, a .gguf file, a PEFT adapter directory, or a hub id.",
    ),
]
JudgeOpt = Annotated[
    str,
    typer.Option(
        help="Judge spec: keyword (refusal only), llm-rubric[:MODEL], strongreject[:MODEL], harmbench-cls, "
        "llama-guard, wildguard, strongreject-ft (harm classifiers, :MODEL or :openai:URL#NAME)."
    ),
]
OutOpt = Annotated[Path | None, typer.Option(help="Run directory (default: runs/<command>-<time>).")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue the run in --out, skipping finished samples.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for subsets and sampled decoding.")]
DeviceOpt = Annotated[str | None, typer.Option(help="cuda, mps or cpu (default: the best available).")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32, bfloat16 or float16 (default: by device).")]
BatchOpt = Annotated[int, typer.Option(help="Generation batch size.")]


_OPTION_OF_FIELD = {
    "prefill_ks": "ks",
    "num_steps": "steps",
    "n_prompts": "n",
    "budgets": "budget",
    "defenses": "defense",
}
"""Config fields whose CLI option has another name."""


def _command_options(fn: Callable[..., Any]) -> dict[str, str]:
    """Parameter name -> long option of a command function (``n_safety`` -> ``--n-safety``, ``sets`` ->
    ``--set``), read from its ``typer.Option`` declarations as Typer does."""
    hints = typing.get_type_hints(fn, include_extras=True)
    options: dict[str, str] = {}
    for name in inspect.signature(fn).parameters:
        flag = "--" + name.replace("_", "-")
        for meta in getattr(hints.get(name), "__metadata__", ()):
            if isinstance(meta, typer.models.OptionInfo):
                decls = [d for d in (meta.default, *(meta.param_decls or ())) if isinstance(d, str)]
                flag = max((d for d in decls if d.startswith("--")), key=len, default=flag)
        options[name] = flag
    return options


def _as_option(e: OptionError, options: dict[str, str]) -> OptionError:
    """The error naming the command's option for a config field (``--n-safety`` for ``AuditConfig.n_safety``;
    ``--set FIELD`` for a field only ``--set`` reaches)."""
    if e.option.startswith("-"):
        return e
    name = e.field if e.field in options else _OPTION_OF_FIELD.get(e.field)
    if name is not None and name in options:
        return e.renamed(options[name])
    if "sets" in options:
        return e.renamed(f"--set {e.field}")
    return e


def handle_errors(fn: F) -> F:
    """Print expected errors (bad specs, files, judges, runs, options out of range) as one clear line and exit
    non-zero. Options are checked (by the configs the command builds, or directly) before a model loads or a
    run directory is made."""

    options = _command_options(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from alignscope.data.types import SuiteError
        from alignscope.judges.base import JudgeError
        from alignscope.runs.store import RunError

        try:
            return fn(*args, **kwargs)
        except (ModelError, SuiteError, JudgeError, RunError, ValueError, FileNotFoundError) as e:
            message = _as_option(e, options) if isinstance(e, OptionError) else e
            console.print(f"[bold red]error:[/] {escape(str(message))}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print(
                "[yellow]interrupted: finished samples are saved; rerun with --resume --out <run>[/]"
            )
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def done(run: Any) -> None:
    console.print(f"[green]run directory:[/] {run.path}")
    console.print(f"[green]report:[/] {run.report_path}")


SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Config field as KEY=VALUE (JSON values: 2e-5, true, [10, 14]; nested: gcg.num_steps=50); "
        "repeatable.",
    ),
]
ConfigFileOpt = Annotated[Path | None, typer.Option("--config", help="JSON file of config fields.")]


def fields(config_file: Path | None, sets: list[str] | None, **given: Any) -> dict[str, Any]:
    """Config fields from a JSON file, then --set KEY=VALUE pairs, then explicit options (None = not given)."""
    from alignscope.config_io import load_config_file, parse_assignments

    values: dict[str, Any] = load_config_file(config_file) if config_file is not None else {}
    values.update(parse_assignments(sets or []))
    values.update({k: v for k, v in given.items() if v is not None})
    return values
