"""What an experiment does last with its run directory: rebuild the metrics and the report from its records."""

from __future__ import annotations

from alignscope.runs.store import RunDir


def rebuild_report(run: RunDir | None) -> None:
    """Rebuild ``run``'s ``metrics.json`` and ``report.html`` (nothing when the experiment ran without a run).

    The report is imported here, not at module level: its sections import the experiments' modules."""
    if run is not None:
        from alignscope.report.build import rebuild

        rebuild(run)
