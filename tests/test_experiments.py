"""experiments/reproduce.py: every table's --smoke run end to end, the synthetic data it runs on,
and the RigL + weight dropout baseline it needs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cigl_bayes.cigl import RandomMask
from cigl_bayes.data import load_dataset
from cigl_bayes.data.shifts import ood_sets
from cigl_bayes.methods import METHODS, assemble, validate
from cigl_bayes.runner import final_model, final_predictions
from cigl_bayes.evaluate import predict_logits


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "reproduce.py"


def _tables():
    spec = importlib.util.spec_from_file_location("experiment_tables", ROOT / "experiments" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TABLES = _tables()


def _reproduce(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "220"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("name", list(TABLES.TABLES))
def test_smoke_runs_every_table_end_to_end(name: str, tmp_path: Path) -> None:
    table = TABLES.TABLES[name]
    proc = _reproduce(name, "--smoke", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "results.csv").is_file()
    assert sorted(r["method"] for r in rows) == sorted(table["methods"])  # all methods, one density, one seed
    assert {r["density"] for r in rows} == {TABLES.SMOKE_DENSITY} and {r["seed"] for r in rows} == {0}
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["ece"] is not None
        if table["ood"]:
            assert 0.0 <= row["auroc"] <= 1.0 and "auroc:noise" in row
        metrics = json.loads((tmp_path / f"{row['method']}-d{TABLES.SMOKE_DENSITY:g}-s0" / "metrics.json").read_text())
        assert metrics["config"]["data"]["dataset"].startswith("synthetic:3,32,32:")
        assert metrics["config"]["optim"]["epochs"] == 2
    assert "SMOKE" in proc.stdout and "smoke: model" in proc.stdout  # the model swap is said
    if table["reported"]:
        assert "paper accuracy" in proc.stdout


def test_tables_hold_the_paper_grids() -> None:
    tables = TABLES.TABLES
    assert set(tables) == {"cigl-c10-resnet50", "cigl-c100-resnet50", "cigl-c10-wrn22-2", "moon-c10-resnet18"}
    for name in ("cigl-c10-resnet50", "cigl-c100-resnet50", "cigl-c10-wrn22-2"):
        t = tables[name]
        assert t["densities"] == (0.2, 0.1, 0.05, 0.01)
        assert t["methods"] == ("rigl", "rigl-wdp", "rigl-mcdrop", "cigl") and all(m in METHODS for m in t["methods"])
        assert t["overrides"]["optim__epochs"] == 250 and t["overrides"]["data__batch_size"] == 128
    assert tables["cigl-c100-resnet50"]["overrides"]["optim__decay_factor"] == 0.6
    assert tables["cigl-c10-wrn22-2"]["overrides"]["optim__weight_decay"] == 5e-4
    assert tables["cigl-c10-wrn22-2"]["overrides"]["optim__decay_every"] == 30_000
    assert tables["cigl-c10-resnet50"]["reported"]["ece"]["cigl"][0.01] == 0.0298
    assert tables["cigl-c10-resnet50"]["reported"]["accuracy"]["rigl"][0.2] == pytest.approx(0.9402)
    moon = tables["moon-c10-resnet18"]
    assert moon["ood"] and moon["model"] == "resnet18" and moon["methods"] == ("rigl", "moon")
    assert moon["overrides"]["sparsity__update_every"] == 80 and moon["overrides"]["optim__schedule"] == "cosine"


def test_missing_cifar_folder_is_one_line_naming_data_dir(tmp_path: Path) -> None:
    proc = _reproduce("cigl-c10-resnet50", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--data-dir" in lines[0]
    assert not (tmp_path / "out").exists()


def test_synthetic_dataset_shapes_and_ood(tiny_config) -> None:
    data = load_dataset("synthetic:3,32,32:10:256")
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (153, 51, 52)
    assert data.x_train.shape == (153, 3, 32, 32) and data.x_train.dtype == torch.float32
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10 and data.augment
    assert data.mean == (0.0, 0.0, 0.0) and data.std == (1.0, 1.0, 1.0) and data.raw_scale == 1.0
    assert int(data.y_train.min()) >= 0 and int(data.y_train.max()) < 10
    again = load_dataset("synthetic:3,32,32:10:256")
    assert torch.equal(again.x_test, data.x_test) and torch.equal(again.y_train, data.y_train)  # seeded
    flat = load_dataset("synthetic:20:3:50")
    assert flat.x_train.shape == (30, 20) and not flat.augment and flat.num_classes == 3
    sets = ood_sets(data, seed=0)
    assert list(sets) == ["noise"] and sets["noise"].shape == (52, 3, 32, 32)
    assert torch.equal(sets["noise"], ood_sets(data, seed=0)["noise"])
    validate(tiny_config("rigl", data__dataset="synthetic:3,32,32:10:256"))
    with pytest.raises(ValueError, match="synthetic:C,H,W:K:N"):
        load_dataset("synthetic:3,32:ten:256")


def test_rigl_wdp_has_a_random_mask_and_no_averaging(digits_data, tiny_config) -> None:
    method = METHODS["rigl-wdp"]
    assert method.random_mask and method.averaging is None and not method.mc_dropout and method.update == "rigl"
    config = tiny_config("rigl-wdp")
    parts = assemble(config, digits_data, progress=False)
    assert isinstance(parts.model.random_mask, RandomMask) and parts.averaging is None
    parts.trainer.fit()
    log_probs, notes = final_predictions(parts, config, digits_data)
    assert final_model(parts) is parts.model and "snapshots" not in notes and "mc_predictive" in notes
    # evaluated without the mask: the deterministic eval-mode logits
    assert torch.allclose(log_probs["test"], predict_logits(parts.model, digits_data.x_test).log_softmax(-1), atol=1e-5)
