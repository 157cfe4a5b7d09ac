"""The evaluator: eval-mode logits, MC predictive (random masks / dropout), measured density."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cigl_bayes.cigl import RandomMask
from cigl_bayes.evaluate import evaluate_probs, mc_predict_probs, measured_density, predict_logits
from cigl_bayes.models import build_model
from cigl_bayes.sparse import SparseNet


SHAPE = (1, 8, 8)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(150, *SHAPE, generator=torch.Generator().manual_seed(0))


def _mlp(dropout: float = 0.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("mlp", SHAPE, 10, dropout=dropout)
    with torch.no_grad():
        model.classifier.weight.mul_(8)  # confident enough that masks visibly move the predictions
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):  # non-trivial running statistics
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _sparse(drop_rate: float | None, mask_seed: int = 0) -> SparseNet:
    random_mask = RandomMask(drop_rate, rescale=True, seed=mask_seed) if drop_rate is not None else None
    return SparseNet(_mlp(), 0.5, random_mask=random_mask, seed=0)


def _assert_rows_are_distributions(p: torch.Tensor) -> None:
    assert torch.all(p >= 0) and torch.all(p <= 1)
    assert torch.allclose(p.sum(-1), torch.ones(p.shape[0]), atol=1e-5)


@pytest.mark.parametrize("make", [lambda: _mlp(), lambda: _sparse(None)], ids=["mlp", "sparse-no-random-mask"])
def test_single_sample_without_randomness_is_softmax_of_logits(make, x: torch.Tensor) -> None:
    model = make()
    model.train()
    logits = predict_logits(model, x, batch_size=64)
    assert model.training  # flag restored
    probs = mc_predict_probs(model, x, samples=1, batch_size=64)
    assert model.training
    assert torch.allclose(probs, logits.softmax(-1), atol=1e-6)
    _assert_rows_are_distributions(probs)
    assert torch.allclose(mc_predict_probs(model, x, samples=5, batch_size=64), probs, atol=1e-6)


def test_predict_logits_is_eval_mode_and_batched(x: torch.Tensor) -> None:
    model = _mlp()
    model.eval()
    with torch.no_grad():
        expected = model(x)
    model.train()
    assert torch.allclose(predict_logits(model, x, batch_size=7), expected, atol=1e-5)
    # training-mode BN would use batch statistics: clearly different
    with torch.no_grad():
        assert not torch.allclose(model(x), expected, atol=1e-3)


def test_random_mask_predictions_depend_on_mask_seed(x: torch.Tensor) -> None:
    a, b, a2 = _sparse(0.1, mask_seed=0), _sparse(0.1, mask_seed=1), _sparse(0.1, mask_seed=0)
    for net in (b, a2):  # identical weights and support, only the mask generator differs
        for p, q in zip(a.parameters(), net.parameters()):
            assert torch.equal(p, q)
        assert torch.equal(a.support.flat, net.support.flat)
    pa, pb, pa2 = (mc_predict_probs(n, x, samples=1) for n in (a, b, a2))
    assert not torch.allclose(pa, pb, atol=1e-4)
    assert torch.equal(pa, pa2)  # reproducible from the seed
    assert not torch.allclose(mc_predict_probs(a, x, samples=1), pa, atol=1e-4)  # fresh masks per call
    eval_probs = predict_logits(a, x).softmax(-1)
    assert not torch.allclose(pa, eval_probs, atol=1e-4)
    for p in (pa, pb):
        _assert_rows_are_distributions(p)
    assert a.sampling is False and a.training  # sampling switched back off, train flag restored


def test_mc_average_approaches_eval_prediction_for_small_drop_rate(x: torch.Tensor) -> None:
    net = _sparse(0.02)
    eval_probs = predict_logits(net, x).softmax(-1)
    single = mc_predict_probs(net, x, samples=1)
    many = mc_predict_probs(net, x, samples=200, batch_size=64)
    _assert_rows_are_distributions(many)
    err_single = (single - eval_probs).abs().mean().item()
    err_many = (many - eval_probs).abs().mean().item()
    assert err_many < 0.003 and (many - eval_probs).abs().max().item() < 0.03
    assert err_many < err_single / 3
    assert (many.argmax(-1) == eval_probs.argmax(-1)).float().mean() > 0.9


def test_mc_dropout_is_stochastic_but_batchnorm_stays_in_eval(x: torch.Tensor) -> None:
    model = _mlp(dropout=0.5)
    model.eval()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    eval_probs = predict_logits(model, x).softmax(-1)
    torch.manual_seed(3)
    p1 = mc_predict_probs(model, x, samples=1)
    torch.manual_seed(3)
    p1_again = mc_predict_probs(model, x, samples=1)
    p2 = mc_predict_probs(model, x, samples=1)
    assert torch.equal(p1, p1_again)  # dropout draws from the global RNG
    assert not torch.allclose(p1, p2, atol=1e-4)
    assert not torch.allclose(p1, eval_probs, atol=1e-4)
    _assert_rows_are_distributions(p1)
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), f"{k} changed: BN must use running statistics"
    assert not any(m.training for m in model.modules())  # dropout switched back to eval
    assert torch.equal(predict_logits(model, x).softmax(-1), eval_probs)


def test_mc_samples_must_be_positive(x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="samples"):
        mc_predict_probs(_mlp(), x, samples=0)


def test_measured_density_ignores_the_random_mask() -> None:
    net = _sparse(0.3)
    net.train()
    expected = net.support.nnz / net.support.total
    assert measured_density(net) == pytest.approx(expected)
    assert net.sampling is False and net.training  # no side effect on the model's mode
    net.eval()
    assert measured_density(net) == pytest.approx(expected) and not net.training
    plain = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))
    with torch.no_grad():
        plain[0].weight.zero_()
        plain[0].weight[0, :2] = 1.0
        plain[1].weight.fill_(1.0)
        plain[0].bias.fill_(1.0)  # biases do not count
    assert measured_density(plain) == pytest.approx((2 + 10) / 30)


def test_evaluate_probs_on_perfect_and_uniform_predictions() -> None:
    labels = torch.arange(10).repeat(5)
    perfect = torch.nn.functional.one_hot(labels, 10).float()
    report = evaluate_probs(perfect, labels)
    assert report["accuracy"] == 1.0 and report["ece"] == pytest.approx(0.0, abs=1e-9)
    assert report["brier"] == pytest.approx(0.0, abs=1e-9) and report["nll"] < 1e-5
    uniform = torch.full((50, 10), 0.1)
    report = evaluate_probs(uniform, labels)
    assert report["nll"] == pytest.approx(math.log(10), rel=1e-5)
    assert 0.0 <= report["ece"] <= 1.0 and 0.0 <= report["brier"] <= 2.0
