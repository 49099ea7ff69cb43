"""Attacks: inference-time (prefilling, decoding-parameter exploit)."""

from alignscope.attacks.decoding import (
    FULL_GRID,
    REDUCED_GRID,
    DecodingResult,
    decoding_attack,
    decoding_settings,
    summarize_decoding,
)
from alignscope.attacks.prefill import PrefillConfig, PrefillResult, harmful_responses, prefill_attack
from alignscope.attacks.stage import GenItem, generate_and_judge, harmful_rate, refusal_rate

__all__ = [
    "FULL_GRID",
    "REDUCED_GRID",
    "DecodingResult",
    "GenItem",
    "PrefillConfig",
    "PrefillResult",
    "decoding_attack",
    "decoding_settings",
    "generate_and_judge",
    "harmful_rate",
    "harmful_responses",
    "prefill_attack",
    "refusal_rate",
    "summarize_decoding",
]
