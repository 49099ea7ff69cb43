"""The experiments' commands, generated from the registry (:mod:`alignscope.experiments`)."""

from __future__ import annotations

from alignscope.cli.apps import GROUPS, app
from alignscope.cli.generate import experiment_command
from alignscope.experiments import EXPERIMENTS

ALIASES: dict[str, dict[str, str]] = {
    "audit": {"prefill_ks": "--ks"},
    "evaluate": {"suites": "--suite"},
    "scorecard": {"models": "--model", "families": "--family", "extra_suites": "--suite"},
    "gcg": {
        "gcg.num_steps": "--steps",
        "gcg.search_width": "--search-width",
        "gcg.topk": "--topk",
        "gcg.n_replace": "--n-replace",
        "gcg.optim_str_init": "--init",
        "gcg.early_stop": "--early-stop",
    },
}
"""Options named shorter than their config field (the names the commands had before they were generated)."""

for _exp in EXPERIMENTS.values():
    if (
        not _exp.generated
    ):  # written by hand in its group's module (alignscope.cli.train, alignscope.cli.speech)
        continue
    words = _exp.command.split()
    target = GROUPS[words[0]] if len(words) == 2 else app
    target.command(words[-1])(experiment_command(_exp, ALIASES.get(_exp.name)))
