"""Benchmark records -> mean ± std tables, paired per-seed differences against a baseline, plots."""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..results import summarise

TABLE_METRICS = ("accuracy", "ece", "nll", "brier")

#: The target a calibration method must meet against the baseline (issue 11): mean ECE at most
#: 0.8 x the baseline's, mean accuracy at least the baseline's minus 0.5 pp.
ECE_RATIO_TARGET = 0.8
ACCURACY_MARGIN = 0.005
#: The OOD target (issue 12): mean near-OOD AUROC at least the baseline's + 0.02.
AUROC_GAIN_TARGET = 0.02
OOD_TABLE_METRICS = ("accuracy", "ece", "auroc_near", "fpr95_near", "auroc_far", "fpr95_far")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _groups(records: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def summary_rows(records: Sequence[dict[str, Any]], metrics: Sequence[str] = TABLE_METRICS) -> list[dict[str, Any]]:
    """Mean and sample std of ``metrics`` per (dataset, arm, density), in first-seen order."""
    return summarise(list(records), group_by=("dataset", "arm", "density"), metrics=metrics)


def _paired(records: Sequence[dict[str, Any]], baseline: str, metrics: Sequence[str]) -> list[tuple[dict[str, Any], list[tuple[dict, dict]]]]:
    """Per (dataset, arm, density) other than ``baseline``: a row with the paired per-seed
    differences ``d_<metric>_mean/std`` (arm minus baseline on the same seed) and the pairs.
    Seeds missing on either side are left out (``seeds`` counts the pairs)."""
    by_cell = {(r["dataset"], r["arm"], r["density"], r["seed"]): r for r in records}
    rows = []
    for (dataset, arm, density), members in _groups(records, ("dataset", "arm", "density")).items():
        if arm == baseline:
            continue
        pairs = [(r, by_cell[(dataset, baseline, density, r["seed"])]) for r in members
                 if (dataset, baseline, density, r["seed"]) in by_cell]
        if not pairs:
            continue
        row: dict[str, Any] = {"dataset": dataset, "arm": arm, "baseline": baseline, "density": density, "seeds": len(pairs)}
        for metric in metrics:
            row[f"d_{metric}_mean"], row[f"d_{metric}_std"] = _mean_std([a[metric] - b[metric] for a, b in pairs])
        rows.append((row, pairs))
    return rows


def paired_differences(records: Sequence[dict[str, Any]], baseline: str = "rigl") -> list[dict[str, Any]]:
    """Per (dataset, arm, density): arm minus ``baseline`` on the same seed, mean ± std over seeds.

    ``d_accuracy`` and ``d_ece`` are the paired differences; ``ece_ratio`` is the ratio of the
    mean ECEs; ``meets_target`` applies :data:`ECE_RATIO_TARGET` and :data:`ACCURACY_MARGIN`.
    Seeds missing on either side are left out (``seeds`` counts the pairs).
    """
    rows = []
    for row, pairs in _paired(records, baseline, ("accuracy", "ece")):
        base_ece = statistics.fmean(b["ece"] for _, b in pairs)
        ratio = statistics.fmean(a["ece"] for a, _ in pairs) / base_ece if base_ece > 0 else float("inf")
        rows.append({**row, "ece_ratio": ratio, "seeds_ece_lower": sum(a["ece"] < b["ece"] for a, b in pairs),
                     "meets_target": ratio <= ECE_RATIO_TARGET and row["d_accuracy_mean"] >= -ACCURACY_MARGIN})
    return rows


def ood_paired_differences(records: Sequence[dict[str, Any]], baseline: str = "rigl") -> list[dict[str, Any]]:
    """Per (dataset, arm, density): paired per-seed differences of accuracy, ECE and the near- /
    far-OOD mean AUROC and FPR95 against ``baseline``; ``meets_target`` applies
    :data:`AUROC_GAIN_TARGET` to the near-OOD AUROC (far-OOD when a set has no near-OOD set)
    with :data:`ACCURACY_MARGIN`."""
    rows = []
    for row, pairs in _paired(records, baseline, [m for m in OOD_TABLE_METRICS if m in records[0]]):
        key = "auroc_near" if "auroc_near" in pairs[0][0] else "auroc_far"
        rows.append({**row, "target_on": key, "seeds_auroc_higher": sum(a[key] > b[key] for a, b in pairs),
                     "meets_target": row[f"d_{key}_mean"] >= AUROC_GAIN_TARGET and row["d_accuracy_mean"] >= -ACCURACY_MARGIN})
    return rows


def _pm(row: dict[str, Any], metric: str, scale: float = 1.0, digits: int = 4) -> str:
    if row.get(f"{metric}_mean") is None:
        return "–"
    return f"{scale * row[f'{metric}_mean']:.{digits}f} ± {scale * row[f'{metric}_std']:.{digits}f}"


def report_markdown(records: Sequence[dict[str, Any]], baseline: str = "rigl") -> str:
    """Per dataset: a mean ± std table (accuracy, ECE, NLL, Brier) and the paired differences."""
    summary, diffs = summary_rows(records), paired_differences(records, baseline)
    parts = []
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        seeds = sorted({r["seed"] for r in records if r["dataset"] == dataset})
        parts.append(f"### {dataset} (seeds {', '.join(map(str, seeds))})\n")
        parts.append("| arm | density | accuracy | ECE | NLL | Brier |\n|---|---|---|---|---|---|")
        for row in sorted((r for r in summary if r["dataset"] == dataset), key=lambda r: (-r["density"], r["arm"])):
            parts.append(f"| {row['arm']} | {row['density']:g} | {_pm(row, 'accuracy')} | {_pm(row, 'ece')} | "
                         f"{_pm(row, 'nll')} | {_pm(row, 'brier')} |")
        rows = [d for d in diffs if d["dataset"] == dataset]
        if rows:
            parts.append(f"\nPaired per-seed difference arm − {baseline} (mean ± std over seeds); target: ECE ratio "
                         f"<= {ECE_RATIO_TARGET} and Δaccuracy >= −{100 * ACCURACY_MARGIN:g} pp.\n")
            parts.append("| arm | density | Δaccuracy (pp) | ΔECE | ECE ratio | seeds with lower ECE | target |\n"
                         "|---|---|---|---|---|---|---|")
            for d in sorted(rows, key=lambda r: (-r["density"], r["arm"])):
                parts.append(f"| {d['arm']} | {d['density']:g} | {_pm(d, 'd_accuracy', 100, 2)} | {_pm(d, 'd_ece')} | "
                             f"{d['ece_ratio']:.2f} | {d['seeds_ece_lower']}/{d['seeds']} | "
                             f"{'met' if d['meets_target'] else 'not met'} |")
        parts.append("")
    return "\n".join(parts)


def ood_report_markdown(records: Sequence[dict[str, Any]], baseline: str = "rigl") -> str:
    """Per dataset: mean ± std of ID accuracy / ECE and near- / far-OOD AUROC and FPR95, and the
    paired per-seed differences against ``baseline`` with the AUROC target."""
    metrics = [m for m in OOD_TABLE_METRICS if m in records[0]]
    summary = summarise(list(records), group_by=("dataset", "arm", "density"), metrics=metrics)
    diffs = ood_paired_differences(records, baseline)
    names = {"accuracy": "accuracy", "ece": "ECE", "auroc_near": "AUROC near", "fpr95_near": "FPR95 near",
             "auroc_far": "AUROC far", "fpr95_far": "FPR95 far"}
    parts = []
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        seeds = sorted({r["seed"] for r in records if r["dataset"] == dataset})
        parts.append(f"### {dataset} (seeds {', '.join(map(str, seeds))})\n")
        parts.append("| arm | density | " + " | ".join(names[m] for m in metrics) + " |\n|---|---|" + "---|" * len(metrics))
        for row in sorted((r for r in summary if r["dataset"] == dataset), key=lambda r: (-r["density"], r["arm"])):
            parts.append(f"| {row['arm']} | {row['density']:g} | " + " | ".join(_pm(row, m) for m in metrics) + " |")
        rows = [d for d in diffs if d["dataset"] == dataset]
        if rows:
            parts.append(f"\nPaired per-seed difference arm − {baseline} (mean ± std over seeds); target: "
                         f"Δ{names[rows[0]['target_on']]} >= {AUROC_GAIN_TARGET} and Δaccuracy >= −{100 * ACCURACY_MARGIN:g} pp.\n")
            deltas = [m for m in metrics if m != "accuracy"]
            parts.append("| arm | density | Δaccuracy (pp) | " + " | ".join(f"Δ{names[m]}" for m in deltas)
                         + " | seeds with higher AUROC | target |\n|---|---|---|" + "---|" * len(deltas) + "---|---|")
            for d in sorted(rows, key=lambda r: (-r["density"], r["arm"])):
                parts.append(f"| {d['arm']} | {d['density']:g} | {_pm(d, 'd_accuracy', 100, 2)} | "
                             + " | ".join(_pm(d, f"d_{m}") for m in deltas)
                             + f" | {d['seeds_auroc_higher']}/{d['seeds']} | {'met' if d['meets_target'] else 'not met'} |")
        parts.append("")
    return "\n".join(parts)


def plot_vs_sparsity(records: Sequence[dict[str, Any]], path: str | os.PathLike, dataset: str | None = None,
                     ax: Any = None) -> Any:
    """The paper's Figure 1 layout: accuracy and ECE against sparsity (1 − density), one line per
    arm, mean ± std over seeds as error bars. Writes ``path`` (PNG) when given; returns the figure.

    ``dataset`` picks one dataset of ``records`` (default: the only one); ``ax`` a pair of axes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = sorted({r["dataset"] for r in records})
    if dataset is None:
        if len(datasets) != 1:
            raise ValueError(f"records hold several datasets {datasets}; pass dataset=")
        dataset = datasets[0]
    rows = [r for r in summary_rows(records) if r["dataset"] == dataset and r["density"] < 1.0]
    if ax is None:
        fig = Figure(figsize=(9, 3.6))
        FigureCanvasAgg(fig)
        ax = fig.subplots(1, 2)
    fig = ax[0].figure
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: -r["density"])
        x = [100 * (1 - r["density"]) for r in mine]
        for a, metric, scale in ((ax[0], "accuracy", 100), (ax[1], "ece", 1)):
            a.errorbar(x, [scale * r[f"{metric}_mean"] for r in mine], yerr=[scale * r[f"{metric}_std"] for r in mine],
                       marker="o", capsize=3, label=arm)
    ax[0].set(xlabel="sparsity (%)", ylabel="test accuracy (%)", title=f"{dataset}: accuracy")
    ax[1].set(xlabel="sparsity (%)", ylabel="ECE (10 bins)", title=f"{dataset}: ECE")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig
