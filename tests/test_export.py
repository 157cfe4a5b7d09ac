"""Sparse export: exact round trip, compact files, sparse inference, and the export/predict CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cigl_bayes.cli import app
from cigl_bayes.export import (
    SparseLinearInference,
    dense_state_bytes,
    export_sparse,
    load_sparse,
    to_sparse_inference,
)
from cigl_bayes.models import MLP, build_model
from cigl_bayes.sparse.masks import maskable_weight_names
from cigl_bayes.sparse.network import SparseNet
from cigl_bayes.sparse_kernel import load_kernel


def _masked(model: torch.nn.Module, density: float) -> torch.nn.Module:
    torch.manual_seed(0)
    net = SparseNet(model, density, "erk", seed=1)
    # non-trivial BatchNorm statistics so dense buffers are checked too
    for m in net.module.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return net.module.eval()


@pytest.mark.parametrize("fmt", ["bitmask", "csr"])
@pytest.mark.parametrize("name,shape", [("mlp", (64,)), ("cnn", (1, 8, 8))])
def test_round_trip_is_exact(tmp_path, fmt, name, shape):
    model = _masked(build_model(name, shape, 10), 0.1)
    path = export_sparse(model, tmp_path / "m.npz", {"model": name, "input_shape": list(shape), "num_classes": 10}, fmt)
    loaded, meta = load_sparse(path)
    assert not loaded.training and meta["format"] == fmt
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    params = dict(loaded.named_parameters())
    for wname, w in ((n, dict(model.named_parameters())[n]) for n in maskable_weight_names(model)):
        assert torch.equal(w != 0, params[wname] != 0)
    x = torch.randn(16, *shape)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert abs(meta["density"] - 0.1) < 0.01
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temporary file


def test_file_size_scales_with_density(tmp_path):
    model = _masked(MLP((784,), 10, hidden_sizes=(512, 512)), 0.05)
    dense = dense_state_bytes(model)
    bitmask = export_sparse(model, tmp_path / "b.npz", format="bitmask").stat().st_size / dense
    csr = export_sparse(model, tmp_path / "c.npz", format="csr").stat().st_size / dense
    half = export_sparse(model, tmp_path / "h.npz", values_dtype="float16").stat().st_size / dense
    # float32 values: bitmask ~ 1/32 + d, CSR ~ 2 d (+ row pointers)
    assert bitmask <= 0.10, bitmask
    assert csr <= 0.13, csr
    assert half < bitmask
    loaded, meta = load_sparse(tmp_path / "h.npz")  # MLP hidden sizes are rebuilt from the metadata
    assert meta["hidden_sizes"] == [512, 512]
    x = torch.randn(4, 784)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=5e-2, rtol=1e-2)


def test_sparse_inference_matches_dense():
    model = _masked(MLP((784,), 10, hidden_sizes=(512, 512)), 0.1)
    sparse = to_sparse_inference(model)
    swapped = [m for m in sparse.modules() if isinstance(m, SparseLinearInference)]
    assert len(swapped) == 2  # hidden layers; the 10-way head and dense layers stay nn.Linear
    assert all(m.weight.layout == torch.sparse_csr for m in swapped)
    for batch in (1, 33):
        x = torch.randn(batch, 784)
        with torch.no_grad():
            torch.testing.assert_close(sparse(x), model(x), atol=1e-5, rtol=1e-5)
    # dense layers are left alone
    dense_model = MLP((784,), 10, hidden_sizes=(512, 512)).eval()
    assert not any(isinstance(m, SparseLinearInference) for m in to_sparse_inference(dense_model).modules())


def test_bad_inputs(tmp_path):
    model = _masked(build_model("mlp", (64,), 10), 0.1)
    with pytest.raises(ValueError, match="format"):
        export_sparse(model, tmp_path / "x.npz", format="coo")
    with pytest.raises(FileNotFoundError):
        load_sparse(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a sparse export"):
        load_sparse(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a sparse export"):
        load_sparse(tmp_path / "other.npz")


def test_cli_train_export_predict(tmp_path):
    runner = CliRunner()
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", "mlp", "--epochs", "1", "--batch-size", "128", "--no-progress",
                                 "--out", str(run_dir)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", "--run", str(run_dir)])
    assert result.exit_code == 0, result.output
    exported = run_dir / "model-sparse.npz"
    assert exported.is_file() and "dense float32 state_dict" in result.output
    result = runner.invoke(app, ["export", "--run", str(run_dir), "--format", "csr", "--out", str(tmp_path / "c.npz")])
    assert result.exit_code == 0, result.output

    # the exported model reproduces the run's evaluated predictions
    import json
    accuracy = json.loads((run_dir / "metrics.json").read_text())["accuracy"]
    preds = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", "--model", str(exported), "--out", str(preds)])
    assert result.exit_code == 0, result.output
    assert f"accuracy {accuracy:.4f}" in result.output
    table = np.genfromtxt(preds, delimiter=",", names=True)
    assert len(table) > 100
    probs = np.stack([table[f"p{k}"] for k in range(10)], axis=1)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert (probs.argmax(1) == table["pred"]).all()

    for args in (["export", "--run", str(tmp_path / "nope")],
                 ["export", "--run", str(tmp_path)],  # folder without checkpoint.pt
                 ["export", "--run", str(run_dir), "--format", "zip"],
                 ["predict", "--model", str(tmp_path / "nope.npz")],
                 ["predict", "--model", str(preds)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "error:" in result.output


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_sparse_linear_backends_match_dense(backend):
    torch.manual_seed(0)
    linear = torch.nn.Linear(300, 70)
    with torch.no_grad():
        linear.weight.mul_(torch.rand_like(linear.weight) < 0.1)
    sparse = SparseLinearInference(linear, backend=backend)
    assert (sparse.kernel is None) == (backend == "torch" or load_kernel() is None)
    for shape in ((1, 300), (33, 300), (2, 5, 300)):
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(sparse(x), linear(x), atol=1e-5, rtol=1e-5)
