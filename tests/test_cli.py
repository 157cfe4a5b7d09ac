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


def _has_tensorboard() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def test_train_writes_metrics_plot_and_checkpoint(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _invoke(runner, "train", "--method", "rigl", "--density", "0.2", *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    tensorboard = ["tensorboard"] if _has_tensorboard() else []
    assert sorted(p.name for p in out.iterdir()) == sorted(["checkpoint.pt", "config.yaml", "epochs.csv", "metrics.json",
                                                            "model.safetensors", "reliability.png", *tensorboard])
    metrics = _metrics(out)
    with (out / "epochs.csv").open(newline="") as handle:  # one row per epoch, the loss the run reports
        assert [float(r["train_loss"]) for r in csv.DictReader(handle)] == metrics["train_loss"]
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
    assert "predictive" in checkpoint and "model" in checkpoint and "optimizer" in checkpoint
    assert f"rigl on digits: accuracy {metrics['accuracy']:.4f}, ece (10 bins) {metrics['ece']:.4f}" in result.stdout
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
        assert row["flops_inference"] == metrics["flops"]["inference_fraction"]  # FLOPs fractions of dense
        assert row["flops_training"] == metrics["flops"]["training_fraction"]
    assert rows[0]["flops_inference"] == 1.0 and 0 < rows[2]["flops_inference"] < 0.2
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
        "set-unknown-field": ["train", "--set", "optim.lrr=0.1"],
        "set-bad-type": ["train", "--set", "optim.epochs=many"],
        "set-bad-density": ["train", "--set", "sparsity.density=2"],
        "config-bad-yaml": ["train", "--config", _write(tmp_path / "bad.yaml", "optim: {lr: [0.1\n")],
        "config-unknown-section": ["train", "--config", _write(tmp_path / "typo.json", '{"optimizer": {"lr": 0.1}}')],
        "config-missing": ["train", "--config", tmp_path / "missing.yaml"],
        "compare-set-axis": ["compare", "--methods", "rigl", "--densities", "0.1", "--seeds", "0", "--set", "seed=3"],
    }


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


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
    ("compare-bad-seeds", "could not parse --seeds '0,x' as comma-separated integers"),
    ("compare-empty", "at least one value"),
    ("set-unknown-field", "unknown field of section 'optim' in --set 'lrr'; did you mean lr? valid: epochs, lr,"),
    ("set-bad-type", "optim.epochs must be an integer, got 'many' (string)"),
    ("set-bad-density", "density must be in (0, 1]"),
    ("config-bad-yaml", "is not valid YAML at line 2"),
    ("config-unknown-section", "unknown field or section in config file"),
    ("config-missing", "missing.yaml not found"),
    ("compare-set-axis", "--set seed is a grid axis of this command; give it with --seeds"),
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


# ----------------------------------------------------------------------------- help from the registries (issue 13, item 7)


def _help_tokens(text: str) -> set[str]:
    import re

    return set(re.findall(r"[\w:.-]+", text.replace("│", " ")))


def test_train_help_lists_every_registered_method_model_and_dataset(runner: CliRunner) -> None:
    from cigl_bayes.data import DATASET_NAMES
    from cigl_bayes.methods import METHODS
    from cigl_bayes.models import MODEL_NAMES

    result = _invoke(runner, "train", "--help")
    assert result.exit_code == 0
    tokens = {t.rstrip(",.") for t in _help_tokens(result.stdout)}
    for name in (*METHODS, *MODEL_NAMES, *DATASET_NAMES):
        assert name in tokens, name
    for command in ("compare", "ood"):  # their --methods help names the registry too
        help_text = _invoke(runner, command, "--help").stdout
        assert {"rigl-wdp", "moon-vote"} <= {t.rstrip(",.") for t in _help_tokens(help_text)}, command


# ----------------------------------------------------------------------------- untrusted checkpoints (items 10, 11)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("command", ["resume", "export"])
def test_crafted_checkpoint_runs_no_code(command: str, runner: CliRunner, tmp_path: Path) -> None:
    out, marker = tmp_path / "run", tmp_path / "pwned"
    out.mkdir()
    config = _config("rigl", "digits", 0, "cpu", model="mlp", epochs=2, batch_size=128, update_every=2).to_dict()
    torch.save({"epoch": 1, "config": config, "final_model": {}, "payload": _Payload(marker)}, out / "checkpoint.pt")
    args = ["train", "--method", "rigl", *TINY, "--out", out, "--resume"] if command == "resume" else ["export", "--run", out]
    line = _one_error_line(_invoke(runner, *args))
    assert not marker.exists(), "the checkpoint's payload ran"
    assert "refusing to load" in line and "system" in line


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_resume_over_a_damaged_checkpoint_exits_2(damage: str, runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--method", "rigl", *TINY, "--out", out]
    assert _invoke(runner, *args).exit_code == 0
    checkpoint = out / "checkpoint.pt"
    content = {"empty": b"", "truncated": checkpoint.read_bytes()[:2000], "garbage": b"\x00garbage" * 100}[damage]
    checkpoint.write_bytes(content)
    line = _one_error_line(_invoke(runner, *args, "--resume"))
    assert str(checkpoint) in line and "not a readable checkpoint" in line


def test_train_writes_final_weights_as_safetensors(runner: CliRunner, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "run"
    assert _invoke(runner, "train", "--method", "cigl", *TINY, "--out", out).exit_code == 0
    weights = load_file(out / "model.safetensors")
    networks = load_checkpoint(out / "checkpoint.pt")["predictive"]["networks"]
    assert len(networks) == 1 and weights.keys() == networks[0].keys()
    for name, value in networks[0].items():
        assert torch.equal(weights[name], value), name


# ----------------------------------------------------------------------------- unusable --out (items 11, 12, 13, 15)


@pytest.fixture
def read_only_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A folder nobody may write into (for root, whom chmod does not stop, writes under it are refused)."""
    import errno

    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        def refuse(fn, writes):
            def guarded(path, *args, **kwargs):
                flags = args[0] if args else kwargs.get("flags", 0)
                if Path(os.fsdecode(path)).resolve().is_relative_to(folder) and (writes(flags)):
                    raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
                return fn(path, *args, **kwargs)
            return guarded

        monkeypatch.setattr(os, "mkdir", refuse(os.mkdir, lambda flags: True))
        monkeypatch.setattr(os, "open", refuse(os.open, lambda flags: flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
    yield folder
    folder.chmod(0o755)


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self, *args, **kwargs):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(Trainer, "fit", fail)


OOD_TINY = ["--model", "mlp", "--epochs", "2", "--batch-size", "128", "--no-progress"]
COMMANDS = {
    "train": ["train", "--method", "rigl", *TINY],
    "compare": ["compare", "--methods", "rigl", "--densities", "0.1", "--seeds", "0", *TINY],
    "ood": ["ood", "--methods", "rigl", "--seeds", "0", *OOD_TINY],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_out_naming_a_file_exits_2(command: str, runner: CliRunner, tmp_path: Path, no_training) -> None:
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    line = _one_error_line(_invoke(runner, *COMMANDS[command], "--out", out))
    assert str(out) in line and "not a folder" in line
    assert out.read_text() == "keep me"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_out_in_a_read_only_folder_exits_2_before_training(command: str, runner: CliRunner, read_only_dir: Path, no_training) -> None:
    out = read_only_dir / "run"
    line = _one_error_line(_invoke(runner, *COMMANDS[command], "--out", out))
    assert str(out) in line and "cannot write" in line
    assert not out.exists()


def test_device_tpu_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    line = _one_error_line(_invoke(runner, "train", *TINY, "--device", "tpu", "--out", tmp_path / "out"))
    assert "'tpu'" in line and "--device cpu" in line
    assert not (tmp_path / "out").exists()


def test_a_second_run_into_a_busy_out_exits_2(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While one run trains into OUT, another into the same OUT is refused (the first one finishes)."""
    import threading

    from cigl_bayes.runner import run

    out = tmp_path / "run"
    config = _config("rigl", "digits", 0, "cpu", model="mlp", epochs=2, batch_size=128, update_every=2)
    started, release, records = threading.Event(), threading.Event(), []
    real_fit = Trainer.fit

    def held_fit(self, *args, **kwargs):
        started.set()
        assert release.wait(60)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", held_fit)
    first = threading.Thread(target=lambda: records.append(run(config, out, progress=False)))
    first.start()
    try:
        assert started.wait(60)
        line = _one_error_line(_invoke(runner, "train", "--method", "rigl", *TINY, "--out", out))
        assert str(out) in line and "in use by another run" in line
    finally:
        release.set()
        first.join(60)
    assert records and _metrics(out)["accuracy"] == records[0]["accuracy"]
    assert _invoke(runner, "train", "--method", "rigl", *TINY, "--out", out).exit_code == 0  # free again


def test_train_removes_stale_temporaries_of_a_killed_run(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    stale = ["checkpoint.pt.tmp", ".checkpoint.pt.k2j4x9.tmp", "metrics.json.tmp", ".model.safetensors.a1b2c3.tmp"]
    for name in stale:
        (out / name).write_bytes(b"half")
    (out / "notes.tmp").write_text("not ours")
    assert _invoke(runner, "train", "--method", "rigl", *TINY, "--out", out).exit_code == 0
    names = {p.name for p in out.iterdir()}
    assert not names & set(stale) and "notes.tmp" in names


# ----------------------------------------------------------------------------- fast start (item 14)


def test_help_and_bad_input_do_not_import_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from cigl_bayes.cli import app\n"
        "for args in (['--help'], ['train', '--help'], ['train', '--density', '2'], ['compare', '--methods', 'lottery'],\n"
        "             ['ood', '--methods', 'moon', '--epochs', '2', '--moon-warmup', '5'],\n"
        "             ['dgp-compare', '--dataset', 'iris'], ['export', '--run', '/nonexistent']):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code in (0, 2), (args, result.output)\n"
        "print(sorted(m for m in ('pyro', 'gpytorch', 'arviz', 'matplotlib') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ``python -m cigl_bayes ARGS``, then the exit code and which of torch / numpy it imported.
_RUN_AND_LIST_IMPORTS = (
    "import runpy, sys\n"
    "sys.argv = ['cigl-bayes', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('cigl_bayes', run_name='__main__')\n"
    "except SystemExit as done:\n"
    "    print('exit', done.code, 'imported', sorted(m for m in ('torch', 'numpy') if m in sys.modules))\n"
)


@pytest.mark.parametrize("args", [
    ["--help"], ["train", "--help"], ["compare", "--help"],
    ["train", "--density", "2"], ["train", "--method", "nope"], ["train", "--device", "tpu"],
    ["train", "--model", "transformer"], ["train", "--dataset", "fashion-mnist"], ["train", "--out", "pyproject.toml"],
    ["compare", "--seeds", "0,x"], ["ood", "--methods", "moon", "--epochs", "2", "--moon-warmup", "5"],
    ["dgp-compare", "--dataset", "iris"], ["export", "--run", "/nonexistent"],
    ["train", "--set", "optim.lrr=0.1"], ["train", "--config", "missing.yaml"],
], ids=" ".join)
def test_help_and_input_errors_start_without_torch(args: list[str]) -> None:
    """Help and input errors that need no data or model print at once: neither torch nor numpy loads."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _RUN_AND_LIST_IMPORTS, *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    help_asked = "--help" in args
    assert proc.stdout.splitlines()[-1] == f"exit {0 if help_asked else 2} imported []", proc.stdout + proc.stderr
    if not help_asked:
        assert proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1, proc.stderr


# ----------------------------------------------------------------------------- inputs that failed late (item 15)


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("exported") / "run"
    runner = CliRunner()
    assert runner.invoke(app, ["train", "--method", "rigl", *TINY, "--out", str(run_dir)]).exit_code == 0
    assert runner.invoke(app, ["export", "--run", str(run_dir)]).exit_code == 0
    return run_dir / "model-sparse.npz"


def test_predict_out_naming_a_folder_exits_2(runner: CliRunner, exported_model: Path, tmp_path: Path) -> None:
    line = _one_error_line(_invoke(runner, "predict", "--model", exported_model, "--out", tmp_path))
    assert str(tmp_path) in line and "folder" in line


def test_predict_writes_next_to_the_model_by_default(runner: CliRunner, exported_model: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = _invoke(runner, "predict", "--model", exported_model)
    assert result.exit_code == 0, result.output
    assert (exported_model.parent / "preds.csv").is_file() and not (tmp_path / "preds.csv").exists()


def test_export_out_in_a_read_only_folder_exits_2(runner: CliRunner, exported_model: Path, read_only_dir: Path) -> None:
    target = read_only_dir / "model.npz"
    line = _one_error_line(_invoke(runner, "export", "--run", exported_model.parent, "--out", target))
    assert str(target) in line and "cannot write" in line
    assert not target.exists()


def test_ood_validates_the_whole_grid_before_training(runner: CliRunner, tmp_path: Path, make_npz, no_training) -> None:
    out = tmp_path / "out"
    line = _one_error_line(_invoke(runner, "ood", "--methods", "rigl,moon", "--seeds", "0", *OOD_TINY, "--moon-warmup", "5",
                                   "--out", out))
    assert "warm-up" in line
    no_ood = make_npz(tmp_path / "plain.npz")  # no x_ood arrays
    line = _one_error_line(_invoke(runner, "ood", "--methods", "rigl", "--seeds", "0", *OOD_TINY, "--dataset", f"npz:{no_ood}",
                                   "--out", out))
    assert "x_ood" in line
    assert not out.exists()


def test_list_parse_error_names_the_option_and_type(runner: CliRunner, tmp_path: Path) -> None:
    line = _one_error_line(_invoke(runner, "compare", "--densities", "0.1,a", "--out", tmp_path / "out"))
    assert "--densities" in line and "'0.1,a'" in line and "numbers" in line


# ----------------------------------------------------------------------------- newcomer friction (item 16)


def test_compare_table_is_readable_at_100_columns(runner: CliRunner, tmp_path: Path) -> None:
    result = _invoke(runner, "compare", "--methods", "rigl,cigl", "--densities", "0.1", "--seeds", "0", *TINY,
                     "--out", tmp_path / "grid")
    assert result.exit_code == 0, result.output
    lines = result.stdout.split("\nwrote ")[0].splitlines()  # the tables (the last line names the files)
    assert max(len(line) for line in lines) <= 100, "\n".join(lines)
    assert "±" not in result.stdout  # one seed: the mean alone
    assert any("mc_" in line and "MC predictive" in line for line in lines)  # the mc_* columns are explained


def test_progress_bar_goes_to_stderr(runner: CliRunner, tmp_path: Path) -> None:
    args = [a for a in TINY if a != "--no-progress"]
    result = _invoke(runner, "train", "--method", "rigl", *args, "--progress", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip().splitlines()) == 1, result.stdout
    assert "rigl" in result.stderr


# ----------------------------------------------------------------------------- --config / --set (item 14.5)


def test_config_yaml_of_a_run_reproduces_it(runner: CliRunner, tmp_path: Path) -> None:
    """OUT/config.yaml is complete: `train --config OUT/config.yaml` gives the same config and metrics."""
    first, second = tmp_path / "first", tmp_path / "second"
    result = _invoke(runner, "train", "--method", "rigl", *TINY, "--set", "optim.lr=0.03", "--set", "sparsity.density=0.2",
                     "--set", "random_mask.auto_candidates=[0.02, 0.2]", "--out", first)
    assert result.exit_code == 0, result.output
    from cigl_bayes.config import RunConfig
    from cigl_bayes.config_io import load_config_file

    config = RunConfig.from_dict(load_config_file(first / "config.yaml"))
    assert config.to_dict() == _metrics(first)["config"] | {"random_mask": config.to_dict()["random_mask"]}
    assert (config.method, config.optim.lr, config.sparsity.density, config.optim.epochs) == ("rigl", 0.03, 0.2, 2)
    assert config.random_mask.auto_candidates == (0.02, 0.2)
    result = _invoke(runner, "train", "--config", first / "config.yaml", "--no-progress", "--out", second)
    assert result.exit_code == 0, result.output
    assert (second / "config.yaml").read_text() == (first / "config.yaml").read_text()
    a, b = _metrics(first), _metrics(second)
    assert (a["train_loss"], a["nll"], a["accuracy"], a["config"]) == (b["train_loss"], b["nll"], b["accuracy"], b["config"])


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list:
    """The configs `train` would run (runner.run replaced by a recorder)."""
    import cigl_bayes.runner

    configs: list = []

    def record(config, out, **kwargs):
        configs.append(config)
        return {"accuracy": 0.0, "ece": 0.0, "nll": 0.0, "brier": 0.0}

    monkeypatch.setattr(cigl_bayes.runner, "run", record)
    return configs


def test_precedence_recipe_config_options_set(runner: CliRunner, tmp_path: Path, captured: list) -> None:
    file = _write(tmp_path / "run.yaml", "method: rigl\nseed: 4\ndata: {dataset: wine}\n"
                                         "optim: {lr: 0.3, epochs: 7, momentum: 0.5}\nsparsity: {density: 0.2}\n")
    out = tmp_path / "out"
    assert _invoke(runner, "train", "--config", file, "--lr", "0.2", "--set", "optim.lr=0.1", "--out", out).exit_code == 0
    assert _invoke(runner, "train", "--config", file, "--lr", "0.2", "--epochs", "3", "--method", "static", "--out", out).exit_code == 0
    assert _invoke(runner, "train", "--config", file, "--out", out).exit_code == 0
    assert _invoke(runner, "train", "--config", file, "--dataset", "digits", "--out", out).exit_code == 0
    set_wins, options_win, file_only, dataset_given = captured
    assert set_wins.optim.lr == 0.1 and set_wins.optim.epochs == 7
    assert (options_win.optim.lr, options_win.optim.epochs, options_win.method) == (0.2, 3, "static")
    assert (file_only.method, file_only.seed, file_only.optim.lr, file_only.optim.momentum) == ("rigl", 4, 0.3, 0.5)
    assert file_only.data.dataset == "wine" and file_only.data.batch_size == 32  # wine's recipe under the file
    assert file_only.sparsity.density == 0.2 and file_only.device == "cpu"
    # an option typed on the command line beats the file, also where it equals the option's default
    assert dataset_given.data.dataset == "digits" and dataset_given.data.batch_size == 64 and dataset_given.optim.lr == 0.3


def test_compare_takes_config_and_set_but_keeps_its_grid(runner: CliRunner, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import cigl_bayes.runner

    configs = []

    def record(config, out, **kwargs):
        configs.append(config)
        return {"method": config.method, "density": config.sparsity.density, "seed": config.seed, "accuracy": 0.9,
                "ece": 0.1, "nll": 0.3, "brier": 0.1}

    monkeypatch.setattr(cigl_bayes.runner, "run", record)
    file = _write(tmp_path / "run.yaml", "method: cigl\nseed: 9\nsparsity: {density: 0.5}\noptim: {epochs: 1}\n")
    result = _invoke(runner, "compare", "--methods", "rigl", "--densities", "0.1", "--seeds", "0,1", "--config", file,
                     "--set", "optim.lr=0.04", "--no-progress", "--out", tmp_path / "grid")
    assert result.exit_code == 0, result.output
    assert [(c.method, c.sparsity.density, c.seed) for c in configs] == [("rigl", 0.1, 0), ("rigl", 0.1, 1)]
    assert all(c.optim.epochs == 1 and c.optim.lr == 0.04 for c in configs)


def test_dgp_compare_takes_config_and_set_but_keeps_dataset_and_seeds(runner: CliRunner, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import cigl_bayes.dgp.compare

    calls = []

    def record(name, seeds, config, dgp_config, mc_samples, progress=True):
        calls.append((name, seeds, config))
        raise ValueError("recorded")  # stop after the configs were built (exit 2, nothing written)

    monkeypatch.setattr(cigl_bayes.dgp.compare, "compare_with_dgp", record)
    file = _write(tmp_path / "net.yaml", "method: rigl\nsparsity: {density: 0.3}\noptim: {epochs: 1, lr: 0.2}\n")
    result = _invoke(runner, "dgp-compare", "--dataset", "wine", "--seeds", "3", "--config", file, "--lr", "0.05",
                     "--set", "random_mask.drop_rate=0.02", "--no-progress", "--out", tmp_path / "d")
    assert result.exit_code == 2 and "recorded" in result.stderr, result.output
    ((name, seeds, config),) = calls
    assert (name, seeds, config.method, config.sparsity.density) == ("wine", [3], "rigl", 0.3)
    assert (config.optim.epochs, config.optim.lr, config.random_mask.drop_rate) == (1, 0.05, 0.02)
    for args, expected in ((["--set", "seed=1"], "--seeds instead"), (["--set", "data.dataset=iris"], "--dataset instead"),
                           (["--set", "random_mask.drop_rate=auto"], "takes a numeric --drop-rate")):
        result = _invoke(runner, "dgp-compare", "--dataset", "wine", *args, "--no-progress", "--out", tmp_path / "d")
        assert result.exit_code == 2 and expected in result.stderr, result.output


def test_help_lists_the_config_fields_and_the_precedence(runner: CliRunner) -> None:
    from cigl_bayes.config_io import field_names

    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "2000"})
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "--config" in text and "--set" in text and "epochs.csv" in text and "tensorboard" in text
    assert "recipe < --config < the options given < --set" in text
    joined = text.replace(" ", "")
    for name in field_names():
        section, _, attr = name.partition(".")
        assert (f"{section}.{{" in joined and attr in joined) if attr else name in joined, name


def test_bench_config_and_set_are_checked_and_layered(runner: CliRunner, tmp_path: Path) -> None:
    from cigl_bayes.benchmark import parse_arms
    from cigl_bayes.cli import _bench_base

    file = _write(tmp_path / "run.yaml", "method: rigl\nseed: 5\nsparsity: {density: 0.3, update_every: 7}\n"
                                         "optim: {lr: 0.2, epochs: 3}\ndata: {dataset: wine}\n")
    base = _bench_base("optim.lr=0.1", file)  # the grid's axes (method, seed, density, dataset) are left to the grid
    assert base == {"sparsity__update_every": 7, "optim__lr": 0.1, "optim__epochs": 3}
    config = parse_arms("cigl+epochs=4")[0].config("digits", 0.05, 1, base)  # the arm's own keys win
    assert (config.method, config.seed, config.sparsity.density, config.data.dataset) == ("cigl", 1, 0.05, "digits")
    assert (config.optim.lr, config.optim.epochs, config.sparsity.update_every) == (0.1, 4, 7)
    for args, expected in ((["--set", "optim.lrr=1"], "did you mean lr?"), (["--set", "optim.epochs=x"], "must be an integer"),
                           (["--set", "sparsity.density=0.3"], "grid axis"), (["--config", tmp_path / "none.yaml"], "not found")):
        line = _one_error_line(_invoke(runner, "bench-calibration", *args, "--out", tmp_path / "bench"))
        assert expected in line, line
    assert not (tmp_path / "bench").exists()
