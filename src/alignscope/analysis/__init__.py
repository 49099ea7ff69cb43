"""White-box analyses: per-token KL between models (Qi et al., :mod:`~alignscope.analysis.token_kl`) and safety
layers (Li et al.): the experiment (:mod:`~alignscope.analysis.safety_layers`) over its steps, the cosine scan and
its range rule (:mod:`~alignscope.analysis.layer_scan`), over-rejection localisation
(:mod:`~alignscope.analysis.overrejection`), the linear-probe guard (:mod:`~alignscope.analysis.probe`) and the
saliency view (:mod:`~alignscope.analysis.saliency`); :mod:`~alignscope.analysis.layer_access` finds the decoder
layers and their weights."""

from alignscope.analysis.layer_scan import (
    RangeRule,
    SafetyLayerScan,
    SafetyLayerScanConfig,
    SafetyRange,
    detect_safety_range,
    scan_safety_layers,
)
from alignscope.analysis.overrejection import OverRejectionResult, localize_safety_layers, scale_layers
from alignscope.analysis.probe import ProbeConfig, ProbeGuard, fit_probe_guard, fit_probes
from alignscope.analysis.safety_layers import (
    NO_RANGE,
    SafetyLayersConfig,
    SafetyLayersResult,
    analyze_safety_layers,
    run_safety_layers,
)
from alignscope.analysis.saliency import Saliency, refusal_saliency
from alignscope.analysis.token_kl import TokenKL, per_token_kl

__all__ = [
    "NO_RANGE",
    "OverRejectionResult",
    "ProbeConfig",
    "ProbeGuard",
    "RangeRule",
    "SafetyLayerScan",
    "SafetyLayerScanConfig",
    "SafetyLayersConfig",
    "SafetyLayersResult",
    "SafetyRange",
    "Saliency",
    "TokenKL",
    "analyze_safety_layers",
    "detect_safety_range",
    "fit_probe_guard",
    "fit_probes",
    "localize_safety_layers",
    "per_token_kl",
    "refusal_saliency",
    "run_safety_layers",
    "scale_layers",
    "scan_safety_layers",
]
