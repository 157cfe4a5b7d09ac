"""Optional bf16 autocast and torch.compile in training: same results as plain float32 eager training."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from cigl_bayes.data import load_dataset
from cigl_bayes.evaluate import evaluate_log_probs
from cigl_bayes.methods import assemble
from cigl_bayes.runner import final_predictions


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _train(config, data):
    parts = assemble(config, data, progress=False)
    history = parts.trainer.fit()
    log_probs, _ = final_predictions(parts, config, data)
    return parts, history, evaluate_log_probs(log_probs["test"], data.y_test)


def test_bf16_autocast_runs_the_forward_in_bf16_and_matches_fp32(tiny_config, digits) -> None:
    fp32 = tiny_config("cigl", optim__epochs=4)
    _, reference, ref_metrics = _train(fp32, digits)

    parts = assemble(fp32.with_(precision="bf16"), digits, progress=False)
    dtypes = []
    parts.model.module.classifier.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    history = parts.trainer.fit()
    assert set(dtypes) == {torch.bfloat16}  # the training forward ran under autocast
    assert all(p.dtype == torch.float32 for p in parts.model.parameters())  # master weights stay fp32
    assert int(parts.model.support.flat.sum()) == parts.model.support.nnz  # exact density after updates
    log_probs, _ = final_predictions(parts, fp32, digits)
    metrics = evaluate_log_probs(log_probs["test"], digits.y_test)
    assert history.loss == pytest.approx(reference.loss, rel=0.1)
    assert abs(metrics["accuracy"] - ref_metrics["accuracy"]) < 0.03


def _have_compiler() -> bool:
    return shutil.which(os.environ.get("CXX", "g++")) is not None or shutil.which("c++") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _have_compiler(), reason="torch.compile (inductor) on CPU needs a C++ compiler")
def test_compile_trains_exactly_like_eager(tiny_config, digits) -> None:
    config = tiny_config("rigl", optim__epochs=2)
    eager, eager_history, _ = _train(config, digits)
    compiled, compiled_history, _ = _train(config.with_(compile=True), digits)
    assert compiled.trainer.forward_model is not None
    assert compiled_history.loss == pytest.approx(eager_history.loss, rel=1e-4)
    assert torch.equal(compiled.model.support.flat, eager.model.support.flat)


def test_compile_refuses_methods_with_their_own_objective(tiny_config, digits) -> None:
    with pytest.raises(ValueError, match="own objective"):
        assemble(tiny_config("cigl-svi", compile=True), digits, progress=False)


def test_unknown_precision(tiny_config) -> None:
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        tiny_config("cigl", precision="fp16")
