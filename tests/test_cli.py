"""The ``cigl-bayes`` command line: train / compare outputs, one-line errors with exit code 2, resume."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cigl_bayes.cli import _config, app
from cigl_bayes.data import load_dataset
from cigl_bayes.methods import assemble
from cigl_bayes.train import Trainer, load_checkpoint


REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "mlp", "--epochs", "2", "--batch-size", "128", "--update-every", "2", "--no-progress"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _invoke(runner: CliRunner, *args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _metrics(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def test_train_writes_metrics_plot_and_checkpoint(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _invoke(runner, "train", "--method", "rigl", "--density", "0.2", *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.json", "reliability.png"]
    metrics = _metrics(out)
    for key in ("accuracy", "ece", "brier"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["nll"] >= 0.0
    assert metrics["accuracy"] > 0.5  # it learned digits
    assert metrics["method"] == "rigl" and metrics["dataset"] == "digits" and metrics["model"] == "mlp"
    assert metrics["density"] == 0.2 and abs(metrics["measured_density"] - 0.2) < 1e-3
    assert len(metrics["train_loss"]) == 2
    assert metrics["config"]["optim"]["epochs"] == 2 and metrics["config"]["data"]["batch_size"] == 128
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["epoch"] == 2 and checkpoint["config"]["method"] == "rigl"
    assert "final_model" in checkpoint and "model" in checkpoint and "optimizer" in checkpoint
    assert f"rigl on digits: accuracy {metrics['accuracy']:.4f}" in result.stdout
    assert str(out / "metrics.json") in result.stdout


def test_train_on_npz(runner: CliRunner, tmp_path: Path, npz_file: Path) -> None:
    out = tmp_path / "run"
    result = _invoke(runner, "train", "--method", "cigl", "--dataset", f"npz:{npz_file}", "--model", "mlp",
                     "--epochs", "3", "--batch-size", "32", "--no-progress", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = _metrics(out)
    assert metrics["dataset"] == f"npz:{npz_file}" and metrics["accuracy"] > 0.6
    assert metrics["snapshots"] == 1  # averaging from epoch int(0.8 * 3) = 2


def test_compare_writes_one_row_per_run(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "grid"
    result = _invoke(runner, "compare", "--methods", "dense,rigl", "--densities", "0.1", "--seeds", "0,1", *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())
    keys = [(r["method"], r["density"], r["seed"]) for r in rows]
    assert keys == [("dense", 1.0, 0), ("dense", 1.0, 1), ("rigl", 0.1, 0), ("rigl", 0.1, 1)]
    with (out / "results.csv").open(newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [(r["method"], float(r["density"]), int(r["seed"])) for r in csv_rows] == keys
    for row, csv_row in zip(rows, csv_rows):
        assert float(csv_row["accuracy"]) == row["accuracy"] and float(csv_row["ece"]) == row["ece"]
        run_dir = out / f"{row['method']}-d{row['density']:g}-s{row['seed']}"
        metrics = _metrics(run_dir)
        assert metrics["accuracy"] == row["accuracy"] and metrics["nll"] == row["nll"]
        assert metrics["seed"] == row["seed"]
    assert rows[0]["accuracy"] != rows[1]["accuracy"] or rows[0]["nll"] != rows[1]["nll"]  # seeds differ
    # the table (stdout) has one line per (method, density) with mean ± std
    assert "dense" in result.stdout and "rigl" in result.stdout and "±" in result.stdout
    assert f"wrote {out / 'results.csv'}" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["results.csv", "results.json", "dense-d1-s0", "dense-d1-s1", "rigl-d0.1-s0", "rigl-d0.1-s1"]
    )


def _bad_inputs(tmp_path: Path, make_npz) -> dict[str, list[str]]:
    labels = np.arange(240) % 3
    out_of_range = make_npz(tmp_path / "bad_labels.npz", y_test=np.r_[labels[:59], 7])  # y_train has only 0..2
    negative = make_npz(tmp_path / "neg_labels.npz", y_train=np.r_[-1, labels[1:]])
    return {
        "density-0": ["train", "--density", "0"],
        "density-1.5": ["train", "--density", "1.5"],
        "unknown-method": ["train", "--method", "lottery"],
        "unknown-model": ["train", "--model", "transformer"],
        "unknown-dataset": ["train", "--dataset", "fashion-mnist"],
        "missing-cifar": ["train", "--dataset", "cifar10", "--data-dir", "/nonexistent"],
        "labels-out-of-range": ["train", "--dataset", f"npz:{out_of_range}"],
        "negative-labels": ["train", "--dataset", f"npz:{negative}"],
        "missing-npz": ["train", "--dataset", f"npz:{tmp_path / 'missing.npz'}"],
        "cuda": ["train", "--device", "cuda"],
        "batch-too-large": ["train", "--batch-size", "100000"],
        "drop-rate-1": ["train", "--drop-rate", "1"],
        "compare-unknown-method": ["compare", "--methods", "rigl,lottery", "--densities", "0.1", "--seeds", "0"],
        "compare-density-0": ["compare", "--methods", "rigl", "--densities", "0.1,0", "--seeds", "0"],
        "compare-bad-seeds": ["compare", "--methods", "rigl", "--densities", "0.1", "--seeds", "0,x"],
        "compare-empty": ["compare", "--methods", ",", "--densities", "0.1", "--seeds", "0"],
    }


BAD_CASES = [
    ("density-0", "density must be in (0, 1]"),
    ("density-1.5", "density must be in (0, 1]"),
    ("unknown-method", "unknown method 'lottery'"),
    ("unknown-model", "unknown model 'transformer'"),
    ("unknown-dataset", "unknown dataset 'fashion-mnist'"),
    ("missing-cifar", "--data-dir"),
    ("labels-out-of-range", "label 7"),
    ("negative-labels", "negative label"),
    ("missing-npz", "not found"),
    ("cuda", "--device cpu"),
    ("batch-too-large", "--batch-size"),
    ("drop-rate-1", "drop rate"),
    ("compare-unknown-method", "unknown method 'lottery'"),
    ("compare-density-0", "density must be in (0, 1]"),
    ("compare-bad-seeds", "could not parse"),
    ("compare-empty", "at least one value"),
]


@pytest.mark.parametrize("case,expected", BAD_CASES, ids=[c for c, _ in BAD_CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case: str, expected: str, runner: CliRunner, tmp_path: Path,
                                                            make_npz, monkeypatch: pytest.MonkeyPatch) -> None:
    if case == "cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = _bad_inputs(tmp_path, make_npz)[case]
    out = tmp_path / "out"
    result = _invoke(runner, args[0], *TINY, *args[1:], "--out", out)  # the case's options win over TINY
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not out.exists(), f"{case}: wrote {list(out.rglob('*'))}"


def test_diverging_training_exits_2_naming_the_fix(runner: CliRunner, tmp_path: Path) -> None:
    result = _invoke(runner, "train", "--method", "rigl", "--lr", "1e10", *TINY, "--out", tmp_path / "out")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: training loss became") and "--lr" in line
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_real_process_exit_code(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "cigl_bayes", "train", "--density", "1.5", "--no-progress", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: density must be in (0, 1] (fraction of weights kept), got 1.5; e.g. --density 0.1 keeps 10 % of the weights"
    ]
    assert proc.stdout == ""
    assert not out.exists()


def test_resume_of_a_finished_run_reproduces_metrics_without_training(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    args = ["train", "--method", "rigl-mcdrop", *TINY, "--out", out]
    assert _invoke(runner, *args).exit_code == 0
    first = _metrics(out)

    def no_training(self, x, y):
        raise AssertionError("a finished run must not train again on --resume")

    monkeypatch.setattr(Trainer, "train_step", no_training)
    result = _invoke(runner, *args, "--resume")
    assert result.exit_code == 0, result.output
    # MC-dropout evaluation draws from the restored end-of-training RNG: identical metrics
    assert _metrics(out) == first


def test_resume_continues_an_interrupted_run(runner: CliRunner, tmp_path: Path) -> None:
    method = "rigl-mcdrop"
    uninterrupted = tmp_path / "full"
    assert _invoke(runner, "train", "--method", method, *TINY, "--out", uninterrupted).exit_code == 0

    # the same configuration the CLI builds, stopped after epoch 1 (checkpoint written)
    out = tmp_path / "cut"
    config = _config(method, "digits", 0, "cpu", model="mlp", epochs=2, batch_size=128, update_every=2)
    parts = assemble(config, load_dataset("digits"), out / "checkpoint.pt", progress=False)
    parts.trainer.fit(until_epoch=1)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1

    result = _invoke(runner, "train", "--method", method, *TINY, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert _metrics(out) == _metrics(uninterrupted)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2


def test_resume_without_checkpoint_starts_fresh(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _invoke(runner, "train", "--method", "static", *TINY, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert len(_metrics(out)["train_loss"]) == 2


def test_help_lists_commands(runner: CliRunner) -> None:
    result = _invoke(runner, "--help")
    assert result.exit_code == 0
    assert "train" in result.stdout and "compare" in result.stdout


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    """--resume with a different method or density must not mix states: exit 2, one error line."""
    from typer.testing import CliRunner

    from cigl_bayes.cli import app

    runner = CliRunner()
    out = tmp_path / "run"
    base = ["train", "--model", "mlp", "--epochs", "1", "--batch-size", "128", "--no-progress", "--out", str(out)]
    assert runner.invoke(app, base + ["--method", "rigl"]).exit_code == 0
    for change in (["--method", "cigl"], ["--method", "rigl", "--density", "0.2"]):
        result = runner.invoke(app, base + change + ["--resume"])
        assert result.exit_code == 2
        assert "different configuration" in result.output


def test_ood_command_writes_records_and_histograms(tmp_path):
    """`ood` trains each method/seed, scores ID test vs every digits OOD set, writes the records."""
    import json

    from typer.testing import CliRunner

    from cigl_bayes.cli import app

    out = tmp_path / "ood"
    result = CliRunner().invoke(app, ["ood", "--methods", "rigl,moon", "--seeds", "0", "--model", "mlp", "--epochs", "2",
                                      "--moon-warmup", "1", "--batch-size", "128", "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in records} == {"rigl", "moon"}
    assert {r["ood_set"] for r in records} == {"noise", "inverted", "rotated", "photos", "uniform"}
    for r in records:
        assert set(r) >= {"method", "seed", "ood_set", "auroc", "fpr95", "aupr_in", "aupr_out", "accuracy", "ece"}
        assert all(0.0 <= r[k] <= 1.0 for k in ("auroc", "fpr95", "aupr_in", "aupr_out", "accuracy", "ece"))
    assert (out / "moon-s0" / "ood_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean" in result.output and "auroc" in result.output


DGP_TINY = ["--epochs", "2", "--dgp-epochs", "2", "--mc-samples", "3", "--inducing", "8", "--no-progress"]


def test_dgp_compare_writes_tables_json_and_plots(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "dgp"
    result = _invoke(runner, "dgp-compare", "--dataset", "wine,gap-toy", *DGP_TINY, "--out", out)
    assert result.exit_code == 0, result.output
    for name in ("wine", "gap-toy"):
        record = json.loads((out / name / "comparison.json").read_text())
        assert set(record["summary"]) == {"cigl-mc", "cigl-wma", "dgp"}
        assert record["config"]["network"]["optim"]["epochs"] == 2 and record["config"]["dgp"]["epochs"] == 2
        assert (out / name / "comparison.png").stat().st_size > 10_000
    table = (out / "comparison.md").read_text()
    assert "| wine (classification" in table and "| gap-toy (regression" in table and "NLL minus the DGP" in table


DGP_BAD = [
    (["--dataset", "iris"], "unknown --dataset 'iris'"),
    (["--dataset", "diabetes", "--method", "moon"], "classification only"),
    (["--dataset", "wine", "--density", "0"], "density must be in (0, 1]"),
    (["--dataset", "wine", "--mc-samples", "1"], "--mc-samples"),
    (["--dataset", "wine", "--seeds", "x"], "could not parse"),
    (["--dataset", "wine", "--drop-rate", "auto"], "takes a numeric --drop-rate"),
]


@pytest.mark.parametrize("args,expected", DGP_BAD, ids=[e for _, e in DGP_BAD])
def test_dgp_compare_bad_input_exits_2(args: list, expected: str, runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _invoke(runner, "dgp-compare", *DGP_TINY, *args, "--out", out)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and expected in line, line
    assert not out.exists()


def test_regression_set_in_train_names_dgp_compare(runner: CliRunner, tmp_path: Path) -> None:
    result = _invoke(runner, "train", "--dataset", "diabetes", "--no-progress", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "dgp-compare --dataset diabetes" in result.stderr
