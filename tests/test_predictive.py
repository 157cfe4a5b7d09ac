"""Predictives: log-space averages, exact NLL, and export/predict reproducing what was scored."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cigl_bayes.evaluate import evaluate_log_probs
from cigl_bayes.export import export_sparse, load_sparse, model_from_run
from cigl_bayes.methods import assemble
from cigl_bayes.metrics import calibration_report, nll_from_log_probs
from cigl_bayes.predictive import EnsemblePredictive, MCPredictive, PointPredictive, log_predict
from cigl_bayes.runner import build_predictive, final_predictions, predictive_state


def test_nll_is_not_capped_for_over_confident_predictions() -> None:
    """Logits [0, 100] with label 0: NLL is 100 nats (a 1e-12 probability clamp reports 27.63)."""
    logits, labels = torch.tensor([[0.0, 100.0]]), torch.tensor([0])
    log_probs = logits.log_softmax(-1)
    assert nll_from_log_probs(log_probs, labels) == pytest.approx(100.0, rel=1e-6)
    assert calibration_report(log_probs.exp(), labels, log_probs=log_probs)["nll"] == pytest.approx(100.0, rel=1e-6)
    assert evaluate_log_probs(PointPredictive(nn.Identity())(logits), labels)["nll"] == pytest.approx(100.0, rel=1e-6)


def test_mc_and_ensemble_predictives_are_log_mean_exp() -> None:
    torch.manual_seed(0)
    x = torch.randn(7, 5)
    members = [nn.Linear(5, 3) for _ in range(4)]
    expected = torch.stack([m(x).softmax(-1) for m in members]).mean(0)
    torch.testing.assert_close(EnsemblePredictive(members)(x).exp(), expected)
    model = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.5), nn.Linear(16, 3))
    torch.manual_seed(1)
    got = MCPredictive(model.eval(), samples=6)(x)
    assert not model.training  # mc_sampling restores the flag it found
    torch.manual_seed(1)
    with torch.no_grad():
        model.train()
        draws = torch.stack([model(x).softmax(-1) for _ in range(6)])
    torch.testing.assert_close(got.exp(), draws.mean(0))
    # far in the tail, the log-mean-exp keeps an exact value where averaging probabilities underflows
    far = EnsemblePredictive([nn.Linear(1, 2, bias=False) for _ in range(2)])
    with torch.no_grad():
        far.members[0].weight.copy_(torch.tensor([[0.0], [200.0]]))
        far.members[1].weight.copy_(torch.tensor([[0.0], [300.0]]))
    value = float(log_predict(far, torch.ones(1, 1))[0, 0])
    assert value == pytest.approx(-200.0 - math.log(2.0), rel=1e-6)


@pytest.mark.parametrize("method", ["rigl-ts", "rigl-mcdrop", "cigl-pred-avg", "cigl", "moon"])
def test_export_and_predict_reproduce_the_scored_predictive(method, tiny_config, digits_data, tmp_path) -> None:
    """What a run scored (``final_predictions``) is what ``model_from_run`` -> export -> load gives."""
    config = tiny_config(method, eval__mc_samples=3, optim__epochs=3, averaging__start_fraction=0.3)
    parts = assemble(config, digits_data, progress=False)
    parts.trainer.fit()
    predictive = build_predictive(parts, config, digits_data)
    state = {"config": config.to_dict(), "predictive": predictive_state(predictive[0], config, digits_data)}
    torch.manual_seed(5)
    scored, notes = final_predictions(parts, config, digits_data, predictive=predictive)
    rebuilt, meta = model_from_run(state)
    assert meta["predictive"] == predictive[0].spec()
    if method == "rigl-ts":
        assert meta["predictive"]["temperature"] == notes["temperature"] != 1.0
    if method == "cigl-pred-avg":
        assert meta["predictive"]["members"] == notes["snapshots"] > 1
    loaded, _ = load_sparse(export_sparse(rebuilt, tmp_path / "m.npz", meta))
    for model in (rebuilt, loaded):
        torch.manual_seed(5)
        torch.testing.assert_close(log_predict(model, digits_data.x_val), scored["val"], rtol=0, atol=1e-5)
