"""Tests for cigl_bayes.benchmark: arms, the resumable grid, paired differences, report and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cigl_bayes.benchmark import (
    Arm,
    ood_paired_differences,
    ood_report_markdown,
    ood_summary,
    paired_differences,
    parse_arms,
    parse_overrides,
    plot_vs_sparsity,
    report_markdown,
    run_grid,
    summary_rows,
)
from cigl_bayes.cli import app

TINY = {"model__name": "mlp", "optim__epochs": 2, "data__batch_size": 128, "sparsity__update_every": 2, "eval__mc_samples": 2}


def test_parse_arms_reads_methods_aliases_and_section_fields() -> None:
    arms = parse_arms("rigl, cigl+drop_rate=0.01+hold_lr=none, cigl+optim.lr=0.02+sample_mask=false")
    assert [a.label for a in arms] == ["rigl", "cigl+drop_rate=0.01+hold_lr=none", "cigl+optim.lr=0.02+sample_mask=false"]
    assert arms[1].overrides == {"random_mask__drop_rate": 0.01, "averaging__hold_lr": None}
    assert arms[2].overrides == {"optim__lr": 0.02, "averaging__sample_mask": False}
    config = arms[1].config("digits", 0.05, 2)
    assert (config.method, config.seed, config.sparsity.density, config.random_mask.drop_rate) == ("cigl", 2, 0.05, 0.01)


@pytest.mark.parametrize("spec, match", [
    ("rigl,nonsense", "unknown method"), ("cigl+drop_rate", "expected key=value"), ("cigl+colour=red", "unknown override"),
    ("rigl,rigl", "twice"), (" , ", "no methods"),
])
def test_parse_arms_errors_name_the_fix(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_arms(spec)


def _records() -> list[dict]:
    rows = []
    for seed, (acc_r, ece_r, acc_c, ece_c) in enumerate([(0.90, 0.10, 0.91, 0.05), (0.92, 0.08, 0.91, 0.07), (0.94, 0.12, 0.93, 0.06)]):
        rows.append({"dataset": "d", "arm": "rigl", "density": 0.1, "seed": seed, "accuracy": acc_r, "ece": ece_r, "nll": 0.3, "brier": 0.1})
        rows.append({"dataset": "d", "arm": "cigl", "density": 0.1, "seed": seed, "accuracy": acc_c, "ece": ece_c, "nll": 0.2, "brier": 0.1})
    rows.append({"dataset": "d", "arm": "cigl", "density": 0.1, "seed": 9, "accuracy": 0.0, "ece": 0.9, "nll": 9.0, "brier": 1.0})
    return rows


def test_paired_differences_pair_seeds_and_apply_the_target() -> None:
    (diff,) = paired_differences(_records(), baseline="rigl")
    d_acc, d_ece = [0.01, -0.01, -0.01], [-0.05, -0.01, -0.06]  # seed 9 has no baseline: left out
    assert diff["seeds"] == 3 and diff["seeds_ece_lower"] == 3
    assert diff["d_accuracy_mean"] == pytest.approx(sum(d_acc) / 3)
    assert diff["d_accuracy_std"] == pytest.approx((sum((v - sum(d_acc) / 3) ** 2 for v in d_acc) / 2) ** 0.5)
    assert diff["d_ece_mean"] == pytest.approx(sum(d_ece) / 3)
    assert diff["ece_ratio"] == pytest.approx((0.05 + 0.07 + 0.06) / (0.10 + 0.08 + 0.12))
    assert diff["meets_target"]  # ratio 0.6 <= 0.8, accuracy -0.33 pp >= -0.5 pp
    worse = [dict(r, accuracy=r["accuracy"] - 0.01) if r["arm"] == "cigl" else r for r in _records()]
    assert not paired_differences(worse)[0]["meets_target"]  # -1.33 pp


def test_report_and_plot(tmp_path: Path) -> None:
    records = _records()
    (row,) = [r for r in summary_rows(records) if r["arm"] == "rigl"]
    assert row["runs"] == 3 and row["ece_mean"] == pytest.approx(0.10)
    text = report_markdown(records)
    assert "### d" in text and "| cigl | 0.1 |" in text and "met" in text
    fig = plot_vs_sparsity(records, tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 1000 and len(fig.axes) == 2


def test_run_grid_writes_one_record_per_run_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arms = [Arm("rigl", "rigl"), Arm("cigl+drop_rate=0.01", "cigl", {"random_mask__drop_rate": 0.01}), Arm("dense", "dense")]
    records = run_grid(["digits"], arms, [0.1], [0, 1], tmp_path, base=TINY)
    assert len(records) == 6 and len(list((tmp_path / "records" / "digits").glob("*.json"))) == 6
    cigl = [r for r in records if r["method"] == "cigl"]
    assert {r["drop_rate"] for r in cigl} == {0.01} and all("mc_ece" in r for r in cigl)
    assert {r["density"] for r in records if r["method"] == "dense"} == {1.0}

    import cigl_bayes.benchmark.grid as grid

    monkeypatch.setattr(grid, "_run_job", lambda *a: pytest.fail("a finished run was trained again"))
    again = run_grid(["digits"], arms, [0.1], [0, 1], tmp_path, base=TINY)
    key = lambda r: (r["arm"], r["seed"])
    assert sorted(map(json.dumps, sorted(again, key=key))) == sorted(map(json.dumps, sorted(records, key=key)))


def test_bench_calibration_cli_in_two_workers(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    settings = "model=mlp,epochs=2,batch_size=32,sparsity.update_every=2,eval.mc_samples=2"
    result = CliRunner().invoke(app, ["bench-calibration", "--datasets", "digits,wine", "--methods", "rigl,cigl",
                                      "--densities", "0.2,0.1", "--seeds", "0,1", "--set", settings, "--jobs", "2",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "records.json").read_text())
    assert len(records) == 2 * 2 * 2 * 2 and {r["dataset"] for r in records} == {"digits", "wine"}
    report = (out / "report.md").read_text()
    assert "### digits" in report and "### wine" in report and "Paired per-seed difference" in report
    assert (out / "digits.png").is_file() and (out / "wine.png").is_file() and (out / "records.csv").is_file()


def test_bench_ood_cli_reports_near_and_far_auroc(tmp_path: Path) -> None:
    out = tmp_path / "bench-ood"
    settings = "model=mlp,epochs=2,batch_size=64,sparsity.update_every=2,moon.warmup_epochs=1"
    result = CliRunner().invoke(app, ["bench-ood", "--datasets", "digits-open", "--methods", "rigl,moon", "--densities", "0.1",
                                      "--seeds", "0,1", "--set", settings, "--jobs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "records.json").read_text())
    assert len(records) == 4 and all(0 <= r["auroc_near"] <= 1 and 0 <= r["auroc_far"] <= 1 for r in records)
    report = (out / "report.md").read_text()
    assert "AUROC near" in report and "| moon | 0.1 |" in report and "seeds with higher AUROC" in report
    result = CliRunner().invoke(app, ["bench-ood", "--datasets", "wine", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no OOD sets" in result.output and not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, match", [
    (["--methods", "rigl,cigl", "--baseline", "dense"], "--baseline"),
    (["--methods", "rigl,cigl+drop_rate=2"], "drop rate"),
    (["--datasets", "nope"], "unknown dataset"),
    (["--set", "colour=red"], "unknown override"),
])
def test_bench_calibration_bad_input_exits_2(args: list[str], match: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench-calibration", *args, "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and match in result.output and not (tmp_path / "b").exists()


def test_ood_summary_splits_near_and_far_sets() -> None:
    ood = {"near-held-out-6-9": {"auroc": 0.8, "fpr95": 0.5}, "noise": {"auroc": 0.9, "fpr95": 0.2},
           "inverted": {"auroc": 0.7, "fpr95": 0.6}}
    flat = ood_summary(ood)
    assert flat["auroc_near"] == 0.8 and flat["fpr95_near"] == 0.5
    assert flat["auroc_far"] == pytest.approx(0.8) and flat["fpr95_far"] == pytest.approx(0.4)
    assert flat["ood_noise_auroc"] == 0.9 and "auroc_near" not in ood_summary({"noise": ood["noise"]})


def test_ood_paired_differences_apply_the_auroc_target() -> None:
    rows = []
    for seed, (base, moon) in enumerate([(0.80, 0.83), (0.82, 0.85), (0.78, 0.80)]):
        common = {"dataset": "d", "density": 0.1, "seed": seed, "accuracy": 0.9, "ece": 0.02, "fpr95_near": 0.5,
                  "auroc_far": 0.9, "fpr95_far": 0.3}
        rows += [{**common, "arm": "rigl", "auroc_near": base}, {**common, "arm": "moon", "auroc_near": moon}]
    (diff,) = ood_paired_differences(rows)
    assert diff["d_auroc_near_mean"] == pytest.approx((0.03 + 0.03 + 0.02) / 3) and diff["seeds_auroc_higher"] == 3
    assert diff["meets_target"] and diff["target_on"] == "auroc_near"
    lower = [dict(r, accuracy=0.89) if r["arm"] == "moon" else r for r in rows]
    assert not ood_paired_differences(lower)[0]["meets_target"]  # -1 pp accuracy
    text = ood_report_markdown(rows)
    assert "AUROC near" in text and "| moon | 0.1 |" in text and "met" in text


def test_run_grid_with_ood_records_near_and_far_auroc(tmp_path: Path) -> None:
    (record,) = run_grid(["digits-open"], [Arm("moon", "moon")], [0.1], [0], tmp_path, base={**TINY, "moon__warmup_epochs": 1}, ood=True)
    assert 0.0 <= record["auroc_near"] <= 1.0 and 0.0 <= record["auroc_far"] <= 1.0
    assert 0.0 < record["flops_inference"] < 0.2 and record["flops_inference"] < record["flops_training"] < 1.0
    assert "ood_near-held-out-6-9_auroc" in record
