"""alignscope: measure, attack and deepen the safety alignment of language models.

The public surface, importable from the package root (loaded lazily, so ``alignscope --help`` stays fast)::

    from alignscope import load_model, load_suite, get_judge, run_audit, AuditConfig
    from alignscope import run_prefill, PrefillConfig, run_safety_layers, SafetyLayersConfig

Every registered experiment (:data:`alignscope.experiments.EXPERIMENTS`) has its config, ``run_x`` and result
here.
"""

from __future__ import annotations

import importlib
from typing import Any

from alignscope.experiments import exports

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "alignscope.models",
    "user_turn": "alignscope.models",
    "GenerationConfig": "alignscope.models",
    "LocalModel": "alignscope.models",
    "ChatModel": "alignscope.models",
    "ModelError": "alignscope.models",
    "load_suite": "alignscope.data",
    "Suite": "alignscope.data",
    "Sample": "alignscope.data",
    "get_judge": "alignscope.judges",
    "Verdict": "alignscope.judges",
    "prefill_attack": "alignscope.attacks",
    "decoding_attack": "alignscope.attacks",
    "harmful_responses": "alignscope.attacks",
    "per_token_kl": "alignscope.analysis.token_kl",
    "RunDir": "alignscope.runs",
    "wilson": "alignscope.stats",
    **exports(),  # every experiment's config, run_x and result (alignscope.experiments imports nothing heavy)
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'alignscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
