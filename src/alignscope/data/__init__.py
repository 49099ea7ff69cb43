"""Prompt suites: the built-in ones (our own text) and loaders for public benchmarks and custom files.

``load_suite("harmful@20")`` is the one entry point most code needs; the per-format loaders are exported for
notebooks that already hold a path.
"""

from alignscope.data.benchmarks import (
    HARMBENCH_DEFAULT,
    HARMBENCH_FUNCTIONAL,
    XSTEST_HALVES,
    load_advbench,
    load_harmbench,
    load_strongreject,
    load_xstest,
)
from alignscope.data.loaders import (
    BUILTIN_SUITES,
    HEX_PHI_CATEGORIES,
    builtin_suite,
    load_csv,
    load_hf,
    load_json,
    load_jsonl,
    load_suite,
)
from alignscope.data.rows import LABELS
from alignscope.data.types import Label, Sample, Suite, SuiteError

__all__ = [
    "BUILTIN_SUITES",
    "HARMBENCH_DEFAULT",
    "HARMBENCH_FUNCTIONAL",
    "HEX_PHI_CATEGORIES",
    "LABELS",
    "XSTEST_HALVES",
    "Label",
    "Sample",
    "Suite",
    "SuiteError",
    "builtin_suite",
    "load_advbench",
    "load_csv",
    "load_harmbench",
    "load_hf",
    "load_json",
    "load_jsonl",
    "load_strongreject",
    "load_suite",
    "load_xstest",
]
