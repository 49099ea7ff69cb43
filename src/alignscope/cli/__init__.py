"""The ``alignscope`` command line: a thin shell that parses options, builds a config and calls the library.

``apps`` holds the Typer apps; each command module adds its commands: ``experiments`` (generated from the
experiment registry: audit, evaluate, attack prefill|decoding|gcg, analyze token-kl|safety-layers, judge-eval),
``train`` (recipes, and the registered experiments whose commands are written by hand: attack finetune, reproduce
shallow-vs-deep), ``runs`` (re-judge, report), ``serve`` and ``speech``.
"""

from __future__ import annotations

from alignscope.cli import experiments, runs, serve, speech, train
from alignscope.cli.apps import app

__all__ = ["app", "experiments", "runs", "serve", "speech", "train"]
