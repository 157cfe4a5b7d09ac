"""Calibration benchmark: methods x densities x seeds on several datasets, reported against a baseline.

``run_grid`` trains every cell (in parallel worker processes, resumable: one JSON record per run),
``report`` turns the records into mean ± std tables, paired per-seed differences against the
baseline arm and accuracy / ECE-vs-sparsity plots.
"""

from .grid import Arm, parse_arms, parse_overrides, run_grid
from .report import paired_differences, plot_vs_sparsity, report_markdown, summary_rows

__all__ = ["Arm", "paired_differences", "parse_arms", "parse_overrides", "plot_vs_sparsity", "report_markdown", "run_grid", "summary_rows"]
