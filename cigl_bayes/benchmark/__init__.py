"""Calibration and OOD benchmarks: methods x densities x seeds on several datasets, reported against a baseline.

``run_grid`` trains every cell (in parallel worker processes, resumable: one JSON record per run),
``report`` turns the records into mean ± std tables, paired per-seed differences against the
baseline arm and accuracy / ECE-vs-sparsity plots; with ``ood=True`` near- / far-OOD AUROC and
FPR95 per run (``ood_report_markdown``).
"""

from .grid import Arm, ood_summary, parse_arms, parse_overrides, run_grid
from .report import ood_paired_differences, ood_report_markdown, paired_differences, plot_vs_sparsity, report_markdown, summary_rows

__all__ = ["Arm", "ood_paired_differences", "ood_report_markdown", "ood_summary", "paired_differences", "parse_arms",
           "parse_overrides", "plot_vs_sparsity", "report_markdown", "run_grid", "summary_rows"]
