"""Results are data: per-run records -> CSV/JSON files and a mean ± std table."""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from .atomic import write_text_atomic

SUMMARY_METRICS = ("accuracy", "ece", "nll", "brier")


def flat_record(record: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The scalar columns of a run record, in ``keys`` order, then its FLOPs fractions of dense
    (``flops_inference``, ``flops_training``; see :mod:`cigl_bayes.flops`) when it has them."""
    row = {k: record.get(k) for k in keys}
    if "flops" in record:
        row.update(flops_inference=record["flops"]["inference_fraction"], flops_training=record["flops"]["training_fraction"])
    return row


def write_results(rows: list[dict[str, Any]], out_dir: Path, stem: str = "results") -> tuple[Path, Path]:
    """Write ``rows`` as ``stem.csv`` and ``stem.json`` (each atomically) in ``out_dir``."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    csv_path = write_text_atomic(out_dir / f"{stem}.csv", table.getvalue())
    return csv_path, write_text_atomic(out_dir / f"{stem}.json", json.dumps(rows, indent=2))


def summarise(rows: list[dict[str, Any]], group_by: Sequence[str] = ("method", "density"), metrics: Sequence[str] = SUMMARY_METRICS) -> list[dict[str, Any]]:
    """Mean and sample std of ``metrics`` per group (std 0 for a single run; None where a group lacks a metric)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in group_by), []).append(row)
    summary = []
    for key, members in groups.items():
        entry: dict[str, Any] = dict(zip(group_by, key))
        entry["runs"] = len(members)
        for m in metrics:
            values = [float(r[m]) for r in members if r.get(m) is not None]
            entry[f"{m}_mean"] = statistics.fmean(values) if values else None
            entry[f"{m}_std"] = (statistics.stdev(values) if len(values) > 1 else 0.0) if values else None
        summary.append(entry)
    return summary


def summary_table(summary: list[dict[str, Any]], group_by: Sequence[str] = ("method", "density"),
                  metrics: Sequence[str] = SUMMARY_METRICS, title: str | None = None) -> Table:
    """A compact rich table of ``summarise`` output (about 80 columns for four metrics): ``mean ± std``
    per metric over a group's runs, the mean alone for a single run (say the runs in ``title``)."""
    table = Table(title=title, box=box.HORIZONTALS, show_edge=False, padding=(0, 0))
    for k in group_by:
        table.add_column(k)
    for m in metrics:
        table.add_column(m, justify="right")
    for entry in summary:
        cells = [str(entry[k]) for k in group_by]
        cells += [_cell(entry[f"{m}_mean"], entry[f"{m}_std"], entry["runs"]) for m in metrics]
        table.add_row(*cells)
    return table


def _cell(mean: float | None, std: float | None, runs: int) -> str:
    if mean is None:
        return "—"
    return f"{mean:.4f}" if runs == 1 or std is None else f"{mean:.4f} ± {std:.4f}"
