"""HTML reports and plots."""

from alignscope.report.html import Figure, Report, Section, Table, render_report, write_report
from alignscope.report.plots import bar_plot, line_plot

__all__ = ["Figure", "Report", "Section", "Table", "bar_plot", "line_plot", "render_report", "write_report"]
