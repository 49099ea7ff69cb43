"""The Typer apps of the ``alignscope`` command line (the command modules add their commands to them)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

app = typer.Typer(
    help="Measure, attack and deepen the safety alignment of language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
attack_app = typer.Typer(
    help="Attacks: prefilling, decoding-parameter exploit, GCG, fine-tuning, audio PGD and transfer.",
    no_args_is_help=True,
)
analyze_app = typer.Typer(help="White-box analyses: per-token KL, safety layers.", no_args_is_help=True)
train_app = typer.Typer(
    help="Training recipes: safety-sft, deep-align, safety-dpo, adversarial-sft, constrained-sft, sppft, harden.",
    no_args_is_help=True,
)
reproduce_app = typer.Typer(
    help="Reproduce the papers' experiments on the embedded default.", no_args_is_help=True
)
speech_app = typer.Typer(
    help="Speech LLMs: build the embedded one, speak suites, harden a projector.", no_args_is_help=True
)
app.add_typer(attack_app, name="attack")
app.add_typer(analyze_app, name="analyze")
app.add_typer(train_app, name="train")
app.add_typer(reproduce_app, name="reproduce")
app.add_typer(speech_app, name="speech")

GROUPS: dict[str, typer.Typer] = {"attack": attack_app, "analyze": analyze_app, "reproduce": reproduce_app}
"""The command groups an experiment's command may start with (``"attack prefill"``)."""


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
