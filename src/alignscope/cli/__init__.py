"""The ``alignscope`` command line: a thin shell that parses options, builds a config and calls the library.

``apps`` holds the Typer apps; each command module adds its commands: ``experiments`` (generated from the
experiment registry: audit, evaluate, attack prefill|decoding|gcg, analyze token-kl, judge-eval), ``analyze``
(safety layers), ``train`` (recipes, fine-tuning attacks, the shallow-vs-deep reproduction), ``runs`` (re-judge,
report), ``serve`` and ``speech``.
"""

from __future__ import annotations

from alignscope.cli import analyze, experiments, runs, serve, speech, train
from alignscope.cli.apps import app

__all__ = ["analyze", "app", "experiments", "runs", "serve", "speech", "train"]
