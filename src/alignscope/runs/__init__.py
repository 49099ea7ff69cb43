"""Run directories: resolved config, per-sample JSONL appended as produced, metrics, plots, report."""

from alignscope.runs.store import RunDir, RunError

__all__ = ["RunDir", "RunError"]
