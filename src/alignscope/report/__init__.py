"""HTML reports and plots."""

from alignscope.report.html import (
    AudioClip,
    AudioRow,
    Figure,
    Report,
    Section,
    Table,
    render_report,
    write_report,
)
from alignscope.report.plots import bar_plot, line_plot

__all__ = [
    "AudioClip",
    "AudioRow",
    "Figure",
    "Report",
    "Section",
    "Table",
    "bar_plot",
    "line_plot",
    "render_report",
    "write_report",
]
