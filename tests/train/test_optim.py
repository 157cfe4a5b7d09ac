"""Optimiser groups (decay on conv/linear weights only) and the learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cigl_bayes.config import OptimConfig
from cigl_bayes.models import build_model
from cigl_bayes.sparse import SparseNet
from cigl_bayes.sparse.masks import maskable_weight_names
from cigl_bayes.train import LR_SCHEDULES, build_lr_scheduler, build_sgd, lr_factor, parameter_groups



class Mixed(nn.Module):
    """Every kind of parameter: conv/linear weights and biases, BN affine, a free scale, a frozen one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.conv1d = nn.Conv1d(4, 2, 1, bias=False)
        self.ln = nn.LayerNorm(2)
        self.fc = nn.Linear(2, 3)
        self.scale = nn.Parameter(torch.ones(1))
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_parameter_groups_decay_exactly_conv_and_linear_weights() -> None:
    model = Mixed()
    groups = parameter_groups(model, 1e-3)
    assert len(groups) == 2
    decayed, plain = groups
    assert decayed["weight_decay"] == 1e-3 and plain["weight_decay"] == 0.0
    assert _ids(decayed["params"]) == _ids([model.conv.weight, model.conv1d.weight, model.fc.weight])
    assert _ids(plain["params"]) == _ids(
        [model.conv.bias, model.bn.weight, model.bn.bias, model.ln.weight, model.ln.bias, model.fc.bias, model.scale]
    )
    # frozen parameters are in neither group
    assert id(model.frozen) not in _ids(decayed["params"]) | _ids(plain["params"])


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet18"])
def test_parameter_groups_on_real_models_match_maskable_weights(name: str) -> None:
    model = build_model(name, (3, 8, 8) if name == "resnet18" else (1, 8, 8), 10)
    decayed, plain = parameter_groups(model, 5e-4)
    params = dict(model.named_parameters())
    names = maskable_weight_names(model)
    assert _ids(decayed["params"]) == _ids(params[n] for n in names)
    assert len(decayed["params"]) + len(plain["params"]) == len(params)
    assert all(p.ndim == 1 for p in plain["params"])  # only biases and BN affine remain


def test_parameter_groups_see_through_sparse_net() -> None:
    net = SparseNet(build_model("mlp", (1, 8, 8), 10), 0.2)
    decayed, _ = parameter_groups(net, 1e-4)
    assert _ids(decayed["params"]) == _ids(net.weights())


def test_sgd_decays_weights_but_not_biases_or_batchnorm() -> None:
    model = Mixed()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(2.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_sgd(model, lr=0.1, momentum=0.0, nesterov=True, weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        if n in ("conv.weight", "conv1d.weight", "fc.weight"):
            assert torch.allclose(p, before[n] * (1 - 0.1 * 0.5)), n
        else:
            assert torch.equal(p, before[n]), n
    assert opt.param_groups[0]["nesterov"] is False  # nesterov needs momentum > 0


@pytest.mark.parametrize("lr", [0.0, -1.0, float("nan"), float("inf")])
def test_sgd_rejects_bad_learning_rate(lr: float) -> None:
    with pytest.raises(ValueError, match="learning rate"):
        build_sgd(Mixed(), lr=lr)


def test_linear_warmup() -> None:
    factors = [lr_factor(t, 1000, 10, "step", decay_every=5) for t in range(10)]
    assert factors == pytest.approx([(t + 1) / 10 for t in range(10)])
    assert lr_factor(9, 1000, 10, "cosine") == pytest.approx(1.0)
    # warm-up ends exactly at the base rate; the step schedule then takes over
    assert lr_factor(10, 1000, 10, "step", decay_every=100) == 1.0


def test_step_decay() -> None:
    for t in [0, 1, 99, 100, 101, 250, 299, 300, 999]:
        assert lr_factor(t, 1000, 0, "step", decay_every=100, decay_factor=0.6) == pytest.approx(0.6 ** (t // 100)), t
    # after warm-up the decay counts from step 0, as the recipe's "every N iterations"
    assert lr_factor(99, 1000, 20, "step", decay_every=100, decay_factor=0.5) == 1.0
    assert lr_factor(110, 1000, 20, "step", decay_every=100, decay_factor=0.5) == pytest.approx(0.5)
    assert lr_factor(205, 1000, 20, "step", decay_every=100, decay_factor=0.5) == pytest.approx(0.25)


def test_cosine_decay_reaches_zero() -> None:
    total, warm = 200, 20
    values = [lr_factor(t, total, warm, "cosine") for t in range(warm, total + 1)]
    assert values[0] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone non-increasing
    assert lr_factor(warm + (total - warm) // 2, total, warm, "cosine") == pytest.approx(0.5)
    assert lr_factor(total - 1, total, warm, "cosine") < 1e-3
    assert lr_factor(total, total, warm, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(total + 50, total, warm, "cosine") == pytest.approx(0.0, abs=1e-12)  # clamped, never negative


def test_bad_schedule_raises() -> None:
    with pytest.raises(ValueError, match="unknown lr schedule 'linear'"):
        lr_factor(5, 100, 0, "linear")
    with pytest.raises(ValueError, match="step"):
        build_lr_scheduler(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1), 100, 0, "linear")
    with pytest.raises(ValueError, match="lr schedule"):
        OptimConfig(schedule="linear")
    assert set(LR_SCHEDULES) == {"step", "cosine"}


@pytest.mark.parametrize("schedule", LR_SCHEDULES)
def test_scheduler_follows_lr_factor_per_step(schedule: str) -> None:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.2)
    total, warm = 30, 5
    sched = build_lr_scheduler(opt, total, warm, schedule, decay_every=7, decay_factor=0.5)
    for t in range(total):
        expected = 0.2 * lr_factor(t, total, warm, schedule, 7, 0.5)
        assert opt.param_groups[0]["lr"] == pytest.approx(expected), t
        opt.step()
        sched.step()
    assert math.isfinite(opt.param_groups[0]["lr"])


def test_cosine_hold_ends_at_the_hold_factor_and_stays() -> None:
    total, warm, hold, h = 1000, 10, 800, 0.1
    f = lambda t: lr_factor(t, total, warm, "cosine", hold_from=hold, hold_factor=h)
    assert [f(t) for t in range(warm)] == pytest.approx([(t + 1) / warm for t in range(warm)])  # warm-up unchanged
    assert f(warm) == pytest.approx(1.0)
    mid = warm + (hold - warm) // 2
    assert f(mid) == pytest.approx(h + (1 - h) * 0.5)  # the cosine compressed into [warm, hold]
    assert all(f(t) == pytest.approx(h) for t in range(hold, total + 5))  # held while averaging
    values = [f(t) for t in range(warm, total)]
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:]))
    # the step schedule keeps the value it has where the hold begins
    g = lambda t: lr_factor(t, total, 0, "step", decay_every=300, decay_factor=0.5, hold_from=700)
    assert g(650) == pytest.approx(0.25) and g(950) == pytest.approx(0.25)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step()`")
def test_hold_lr_applies_to_averaging_methods_only(digits_data) -> None:
    """averaging.hold_lr holds the rate from the averaging start for WMA methods; RigL keeps its cosine."""
    from cigl_bayes.config import recipe
    from cigl_bayes.methods import assemble

    base = recipe("digits").with_(model__name="mlp", optim__epochs=10, optim__warmup_epochs=0, averaging__hold_lr=0.1)
    for method, held in (("cigl", True), ("rigl", False)):
        parts = assemble(base.with_(method=method), digits_data, progress=False)
        scheduler, steps = parts.trainer.lr_scheduler, len(parts.trainer.loader)
        lrs = []
        for _ in range(10 * steps):
            lrs.append(parts.trainer.optimizer.param_groups[0]["lr"])
            scheduler.step()
        tail = lrs[8 * steps:]
        if held:
            assert tail == pytest.approx([0.1 * base.optim.lr] * len(tail))
        else:
            assert tail[-1] < 1e-3 * base.optim.lr


def test_attention_projections_are_decayed_like_the_weights_sparsenet_masks() -> None:
    from cigl_bayes.sparse import SparseNet
    from cigl_bayes.train.optim import parameter_groups

    layer = torch.nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
    decayed, plain = parameter_groups(layer, 5e-4)
    decayed_ids = {id(p) for p in decayed["params"]}
    assert id(layer.self_attn.in_proj_weight) in decayed_ids and id(layer.linear1.weight) in decayed_ids
    assert id(layer.norm1.weight) not in decayed_ids and id(layer.self_attn.in_proj_bias) not in decayed_ids
    net = SparseNet(layer, density=0.5)
    assert {id(p) for p in parameter_groups(net, 5e-4)[0]["params"]} == {id(w) for w in net.weights()}


def test_decay_follows_a_sparsenets_include_and_exclude_choice() -> None:
    from cigl_bayes.sparse import SparseNet
    from cigl_bayes.train.optim import parameter_groups

    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 4))
    net = SparseNet(model, density=0.5, include="0.weight", exclude="2.*")
    decayed = {id(p) for p in parameter_groups(net, 5e-4)[0]["params"]}
    assert decayed == {id(model[0].weight), id(model[1].weight)}
