"""The GPyTorch deep GP: a 1-D gap regression toy, breast-cancer classification, config checks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("gpytorch")

from cigl_bayes.dgp import DGPConfig, FittedDGP, fit_deep_gp  # noqa: E402


def gap_toy(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([rng.uniform(-2.0, -0.5, n // 2), rng.uniform(0.5, 2.0, n - n // 2)])
    return x, np.sin(3 * x) + 0.1 * rng.normal(size=n)


@pytest.fixture(scope="module")
def regression_fit():
    rng = np.random.default_rng(0)
    x_train, y_train = gap_toy(120, rng)
    x_test, y_test = gap_toy(100, rng)
    config = DGPConfig(task="regression", num_inducing=32, epochs=100, lr=0.05, seed=0)
    return fit_deep_gp(x_train, y_train, config, progress=False), (x_train, y_train, x_test, y_test)


def test_regression_beats_constant_predictor(regression_fit):
    fitted, (x_train, y_train, x_test, y_test) = regression_fit
    assert isinstance(fitted, FittedDGP)
    pred = fitted.predict(x_test)
    assert pred["mean"].shape == (100,) and pred["variance"].shape == (100,)
    assert pred["sample_means"].shape == (fitted.config.num_predict_samples, 100)
    assert np.all(pred["variance"] > 0)
    # the mixture variance is the mean of the variances plus the variance of the means
    np.testing.assert_allclose(pred["variance"], pred["sample_variances"].mean(0) + pred["sample_means"].var(0), rtol=1e-6)

    rmse = np.sqrt(np.mean((pred["mean"] - y_test) ** 2))
    nll = -fitted.log_predictive_density(x_test, y_test).mean()
    mu, sd = y_train.mean(), y_train.std()
    const_rmse = np.sqrt(np.mean((y_test - mu) ** 2))
    const_nll = np.mean(0.5 * np.log(2 * np.pi * sd**2) + (y_test - mu) ** 2 / (2 * sd**2))
    assert rmse < 0.5 * const_rmse
    assert nll < const_nll - 0.5
    assert fitted.losses[-1] < fitted.losses[0]


def test_regression_variance_larger_in_gap(regression_fit):
    fitted, (x_train, *_rest) = regression_fit
    gap = fitted.predict(np.linspace(-0.15, 0.15, 7))["variance"].mean()
    on_data = fitted.predict(x_train)["variance"].mean()
    assert gap > 1.5 * on_data


def test_classification_breast_cancer():
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    scaler = StandardScaler().fit(x_train)
    config = DGPConfig(task="classification", num_inducing=32, epochs=30, lr=0.05, num_predict_samples=16, standardize_x=False)
    fitted = fit_deep_gp(scaler.transform(x_train), y_train, config, progress=False)
    pred = fitted.predict(scaler.transform(x_test))
    probs = pred["probs"]
    assert probs.shape == (len(y_test), 2)
    assert pred["sample_probs"].shape == (16, len(y_test), 2)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert np.all(probs >= 0)
    assert (probs.argmax(1) == y_test).mean() > 0.85


def test_inputs_are_flattened_and_progress_bar_runs():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 2, 2))
    y = (x.reshape(20, -1).sum(1) > 0).astype(int)
    fitted = fit_deep_gp(x, y, DGPConfig(task="classification", hidden_dims=(2, 2), num_inducing=8, epochs=2), progress=True)
    assert len(fitted.model.hidden_layers) == 2
    assert fitted.predict(x[:5], num_samples=3)["probs"].shape == (5, 2)
    with pytest.raises(ValueError, match="features"):
        fitted.predict(rng.normal(size=(3, 5)))


def test_defaults():
    reg, clf = DGPConfig(), DGPConfig(task="classification")
    assert reg.hidden_dims == (4,) and reg.num_inducing == 64 and reg.lr == 0.01 and reg.batch_size == 256
    assert reg.num_epochs(100_000) == 200 and clf.num_epochs(100_000) == 100
    assert reg.num_epochs(341) == 1000  # 2 steps per epoch: raised to 2000 optimiser steps
    assert reg.num_likelihood_samples == 8 and reg.num_predict_samples == 32
    assert DGPConfig(epochs=5).num_epochs(341) == 5
    assert DGPConfig(device="cpu").torch_device().type == "cpu"


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(task="ranking"), "task"),
        (dict(hidden_dims=(4, 0)), "hidden_dims"),
        (dict(num_inducing=0), "num_inducing"),
        (dict(epochs=0), "epochs"),
        (dict(lr=-1.0), "lr"),
        (dict(batch_size=0), "batch_size"),
        (dict(num_likelihood_samples=0), "num_likelihood_samples"),
        (dict(num_classes=1), "num_classes"),
        (dict(kernel="periodic"), "kernel"),
        (dict(device="tpu"), "device"),
    ],
)
def test_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        DGPConfig(**changes)


def test_data_validation():
    with pytest.raises(ValueError, match="rows"):
        fit_deep_gp(np.zeros((5, 2)), np.zeros(4), DGPConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="integers"):
        fit_deep_gp(np.zeros((5, 2)), np.full(5, 0.5), DGPConfig(task="classification", epochs=1), progress=False)
    with pytest.raises(ValueError, match="out of range"):
        fit_deep_gp(np.zeros((5, 2)), np.arange(5), DGPConfig(task="classification", num_classes=3, epochs=1), progress=False)


def test_import_cigl_bayes_stays_light():
    code = "import sys, cigl_bayes, cigl_bayes.dgp; assert 'gpytorch' not in sys.modules, 'gpytorch imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)
