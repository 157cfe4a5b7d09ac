"""Results as data: summaries match numpy, CSV and JSON hold the same rows."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from cigl_bayes.results import SUMMARY_METRICS, flat_record, summarise, summary_table, write_results


def _rows() -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for method, density, seeds in (("dense", 1.0, 3), ("rigl", 0.1, 3), ("rigl", 0.05, 2), ("cigl", 0.1, 1)):
        for seed in range(seeds):
            row = {"method": method, "density": density, "seed": seed}
            row.update({m: float(rng.uniform(0.01, 1.0)) for m in SUMMARY_METRICS})
            rows.append(row)
    return rows


def test_summarise_matches_numpy() -> None:
    rows = _rows()
    summary = summarise(rows)
    assert [(e["method"], e["density"]) for e in summary] == [("dense", 1.0), ("rigl", 0.1), ("rigl", 0.05), ("cigl", 0.1)]
    for entry in summary:
        members = [r for r in rows if r["method"] == entry["method"] and r["density"] == entry["density"]]
        assert entry["runs"] == len(members)
        for m in SUMMARY_METRICS:
            values = np.array([r[m] for r in members])
            assert entry[f"{m}_mean"] == pytest.approx(values.mean(), rel=1e-12)
            expected_std = values.std(ddof=1) if len(values) > 1 else 0.0
            assert entry[f"{m}_std"] == pytest.approx(expected_std, rel=1e-12, abs=1e-15)
    single = next(e for e in summary if e["method"] == "cigl")
    assert single["runs"] == 1 and all(single[f"{m}_std"] == 0.0 for m in SUMMARY_METRICS)


def test_summarise_custom_grouping_and_string_values() -> None:
    rows = [{"method": "a", "seed": s, "accuracy": str(v)} for s, v in enumerate([0.5, 0.7, 0.9])]
    (entry,) = summarise(rows, group_by=("method",), metrics=("accuracy",))
    assert entry == {"method": "a", "runs": 3, "accuracy_mean": pytest.approx(0.7), "accuracy_std": pytest.approx(0.2)}


def test_write_results_csv_and_json_hold_the_same_rows(tmp_path: Path) -> None:
    rows = _rows()
    out = tmp_path / "nested" / "out"
    csv_path, json_path = write_results(rows, out)
    assert (csv_path, json_path) == (out / "results.csv", out / "results.json")
    assert sorted(os.listdir(out)) == ["results.csv", "results.json"]  # no temporaries left
    from_json = json.loads(json_path.read_text())
    assert from_json == rows
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["method", "density", "seed", *SUMMARY_METRICS]
        from_csv = list(reader)
    assert len(from_csv) == len(rows)
    for c, r in zip(from_csv, rows):
        assert c["method"] == r["method"] and int(c["seed"]) == r["seed"] and float(c["density"]) == r["density"]
        for m in SUMMARY_METRICS:
            assert float(c[m]) == r[m]  # repr round-trips floats exactly


def test_write_results_unions_columns_and_overwrites(tmp_path: Path) -> None:
    rows = [{"method": "a", "accuracy": 0.5}, {"method": "b", "ece": 0.1}]
    csv_path, json_path = write_results(rows, tmp_path, stem="grid")
    assert csv_path.name == "grid.csv" and json_path.name == "grid.json"
    lines = csv_path.read_text().splitlines()
    assert lines == ["method,accuracy,ece", "a,0.5,", "b,,0.1"]
    write_results(rows[:1], tmp_path, stem="grid")
    assert json.loads(json_path.read_text()) == rows[:1]
    assert len(csv_path.read_text().splitlines()) == 2


def test_flat_record_picks_columns_in_order() -> None:
    record = {"accuracy": 0.9, "method": "rigl", "val": {"accuracy": 0.8}, "train_loss": [1.0]}
    assert flat_record(record, ("method", "accuracy", "ece")) == {"method": "rigl", "accuracy": 0.9, "ece": None}
    assert list(flat_record(record, ("method", "accuracy"))) == ["method", "accuracy"]


def test_summary_table_renders_mean_and_std() -> None:
    rows = [
        {"method": "rigl", "density": 0.1, "accuracy": 0.9, "ece": 0.05, "nll": 0.3, "brier": 0.1},
        {"method": "rigl", "density": 0.1, "accuracy": 0.8, "ece": 0.07, "nll": 0.5, "brier": 0.2},
    ]
    table = summary_table(summarise(rows), title="grid")
    assert table.row_count == 1 and len(table.columns) == 2 + len(SUMMARY_METRICS)  # no runs column: one group
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "grid" in text and "rigl" in text
    assert "0.8500 ± 0.0707" in text  # accuracy: mean 0.85, sample std 0.1/sqrt(2)


def test_summary_table_shows_a_single_run_as_its_mean_and_fits_80_columns() -> None:
    rows = [
        {"method": "rigl", "density": 0.1, "accuracy": 0.9, "ece": 0.05, "nll": 0.3, "brier": 0.1},
        {"method": "rigl", "density": 0.1, "accuracy": 0.8, "ece": 0.07, "nll": 0.5, "brier": 0.2},
        {"method": "cigl", "density": 0.1, "accuracy": 0.95, "ece": 0.04, "nll": 0.2, "brier": 0.08},
    ]
    console = Console(width=80, record=True)
    console.print(summary_table(summarise(rows)))
    text = console.export_text()
    assert "0.9500 " in text and "0.9500 ±" not in text  # one run: the mean alone
    assert "0.8500 ± 0.0707" in text
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
