"""Prompt suites: the built-in ones (our own text) and loaders for public benchmarks and custom files.

``load_suite("harmful@20")`` is the one entry point most code needs; the per-format loaders are exported for
notebooks that already hold a path.
"""

from alignscope.data.loaders import (
    BUILTIN_SUITES,
    HEX_PHI_CATEGORIES,
    LABELS,
    builtin_suite,
    load_advbench,
    load_csv,
    load_harmbench,
    load_hf,
    load_jsonl,
    load_strongreject,
    load_suite,
    load_xstest,
)
from alignscope.data.types import Label, Sample, Suite, SuiteError

__all__ = [
    "BUILTIN_SUITES",
    "HEX_PHI_CATEGORIES",
    "LABELS",
    "Label",
    "Sample",
    "Suite",
    "SuiteError",
    "builtin_suite",
    "load_advbench",
    "load_csv",
    "load_harmbench",
    "load_hf",
    "load_jsonl",
    "load_strongreject",
    "load_suite",
    "load_xstest",
]
