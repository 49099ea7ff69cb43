"""Attacks: inference-time (prefilling, decoding-parameter exploit) and white-box adversarial suffixes (GCG).

The GCG evaluation entry point, :func:`alignscope.attacks.gcg_eval.gcg_attack`, lives in its own module (it
imports the report builder, which imports this package)."""

from alignscope.attacks.decoding import (
    FULL_GRID,
    REDUCED_GRID,
    DecodingResult,
    decoding_attack,
    decoding_settings,
    summarize_decoding,
)
from alignscope.attacks.gcg import GCGConfig, GCGResult, run_gcg, run_universal_gcg, suffix_loss
from alignscope.attacks.prefill import PrefillConfig, PrefillResult, harmful_responses, prefill_attack
from alignscope.attacks.stage import GenItem, generate_and_judge

__all__ = [
    "FULL_GRID",
    "REDUCED_GRID",
    "DecodingResult",
    "GCGConfig",
    "GCGResult",
    "GenItem",
    "PrefillConfig",
    "PrefillResult",
    "decoding_attack",
    "decoding_settings",
    "generate_and_judge",
    "harmful_responses",
    "prefill_attack",
    "run_gcg",
    "run_universal_gcg",
    "suffix_loss",
    "summarize_decoding",
]
