"""White-box analyses: per-token KL between models (Qi et al.) and safety layers (Li et al.): the cosine scan,
its range rule, over-rejection localisation, the linear-probe guard and the saliency view."""

from alignscope.analysis.overrejection import OverRejectionResult, localize_safety_layers, scale_layers
from alignscope.analysis.probe import ProbeConfig, ProbeGuard, fit_probe_guard, fit_probes
from alignscope.analysis.safety_analysis import NO_RANGE, analyze_safety_layers
from alignscope.analysis.safety_layers import (
    RangeRule,
    SafetyLayerScan,
    SafetyLayerScanConfig,
    SafetyRange,
    detect_safety_range,
    scan_safety_layers,
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
    "scale_layers",
    "scan_safety_layers",
]
