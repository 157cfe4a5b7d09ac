"""FLOPs accounting (cigl_bayes.flops): hand counts on a tiny model, the RigL paper's training
formula, and the ``flops`` record of a run's metrics.json."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cigl_bayes.flops import (forward_flops, layer_macs, rigl_paper_step_flops, run_flops, training_flops, unmasked_macs,
                              update_steps)
from cigl_bayes.runner import run
from cigl_bayes.sparse import SparseNet


class Tiny(nn.Module):
    """Conv2d(1->2, k3, no padding) on 1x5x5 -> 2x3x3 (18 outputs, 9 MACs each), flatten, Linear(18, 4), Linear(4, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc1 = nn.Linear(18, 4)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.conv(x).flatten(1))))


def test_layer_macs_hand_count_dense_and_sparse():
    model = Tiny()
    macs = layer_macs(model, (1, 5, 5))
    assert macs == [2 * 3 * 3 * (1 * 3 * 3), 18 * 4, 4 * 3]  # 162, 72, 12
    assert forward_flops(macs) == 2 * (162 + 72 + 12)
    assert forward_flops(macs, [0.5, 0.25, 1.0]) == 2 * (81 + 18 + 12)


def test_layer_macs_grouped_strided_conv_and_no_rng_or_mode_change():
    model = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), nn.Dropout(0.5), nn.Flatten(), nn.Linear(6 * 4 * 4, 2))
    model.train()
    state = torch.get_rng_state()
    macs = layer_macs(model, (4, 8, 8))
    assert torch.equal(state, torch.get_rng_state())
    assert model.training and all(m.training for m in model.modules())
    assert macs == [6 * 4 * 4 * (2 * 3 * 3), 96 * 2]


def test_layer_macs_of_sparse_net_in_support_order():
    net = SparseNet(Tiny(), density=0.5, distribution="uniform", seed=0)
    assert layer_macs(net, (1, 5, 5)) == [162, 72, 12]
    assert len(net.support.counts) == 3


def test_layers_a_sparse_net_leaves_unmasked_are_counted_dense():
    """exclude= drops fc2 from the support: its MACs (12) run dense in every forward, sparse or not."""
    from types import SimpleNamespace

    net = SparseNet(Tiny(), density=0.5, distribution="uniform", seed=0, exclude="fc2.weight")
    assert net.weight_names == ["conv.weight", "fc1.weight"]
    assert layer_macs(net, (1, 5, 5)) == [162, 72] and unmasked_macs(net, (1, 5, 5)) == 12
    assert unmasked_macs(Tiny(), (1, 5, 5)) == 0
    d = [c / n for c, n in zip(net.support.counts, net.support.numels)]
    gate = SimpleNamespace(step=10, rule="static", schedule=SimpleNamespace(end_step=5, update_every=100))
    flops = run_flops(SimpleNamespace(model=net, trainer=SimpleNamespace(gate=gate)), [net], (1, 5, 5))
    f_dense, f_sparse = 2 * (162 + 72 + 12), 2 * (d[0] * 162 + d[1] * 72 + 12)
    assert flops["dense_inference_flops"] == pytest.approx(f_dense)
    assert flops["sparse_forward_flops"] == pytest.approx(f_sparse)
    assert flops["training_fraction"] == pytest.approx(f_sparse / f_dense)
    assert flops["inference_fraction"] == pytest.approx(f_sparse / f_dense)  # actual non-zeros = the support


def test_rigl_training_formula_hand_example():
    # f_S = 10, f_D = 100, dT = 4: (3*10*4 + 2*10 + 100) / 5 = 240 / 5 = 48 per step
    assert rigl_paper_step_flops(10.0, 100.0, 4) == pytest.approx(48.0)
    # 20 steps, updates at t in {4, 8} for end_step 10 (t=0 never updates): 3*10*20 + 2*(100-10) = 780
    assert update_steps(20, 10, 4) == 2
    assert update_steps(6, 10, 4) == 1  # run stopped early
    assert training_flops(10.0, 100.0, 20, 2) == pytest.approx(780.0)
    # static / SET: 3 f_S per step; fraction of dense 3 f_D
    assert training_flops(10.0, 100.0, 20) / (3 * 100.0 * 20) == pytest.approx(0.1)
    # one update per dT steps (the update step counted within the cycle) averages to (3 f_S (dT-1) + 2 f_S + f_D) / dT
    assert training_flops(10.0, 100.0, 4, 1) / 4 == pytest.approx((3 * 10 * 3 + 2 * 10 + 100) / 4)


def _weight_density(state: dict[str, torch.Tensor]) -> float:
    """Non-zero fraction over the conv/linear weights (the >= 2-d ``.weight`` tensors) of a state dict."""
    weights = [v for k, v in state.items() if k.endswith(".weight") and v.dim() >= 2]
    return sum(int((w != 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def test_run_writes_flops_fractions(tiny_config, tmp_path):
    from safetensors.torch import load_file

    record = run(tiny_config("rigl", sparsity__density=0.1), tmp_path / "rigl", progress=False)
    flops = json.loads((tmp_path / "rigl" / "metrics.json").read_text())["flops"]
    assert flops == pytest.approx(record["flops"])
    assert 0 < flops["inference_fraction"] <= 1 and 0 < flops["training_fraction"] <= 1
    # the MLP has one MAC per weight per example: the MAC-weighted density is the weight-weighted one
    state = load_file(str(tmp_path / "rigl" / "model.safetensors"))
    assert flops["inference_fraction"] == pytest.approx(_weight_density(state))
    assert flops["dense_gradient_steps"] > 0
    f_s, f_d, steps = flops["sparse_forward_flops"], flops["dense_inference_flops"], flops["steps"]
    expected = (3 * f_s * steps + flops["dense_gradient_steps"] * (f_d - f_s)) / (3 * f_d * steps)
    assert flops["training_fraction"] == pytest.approx(expected)
    assert flops["training_fraction"] > f_s / f_d  # RigL's dense gradients cost extra over static


def test_dense_run_flops_is_one(tiny_config):
    flops = run(tiny_config("dense"), None, progress=False)["flops"]
    assert flops["inference_fraction"] == 1.0 and flops["training_fraction"] == 1.0


def test_flops_do_not_change_results(tiny_config):
    import cigl_bayes.runner as runner

    config = tiny_config("cigl", sparsity__density=0.2)
    with_flops = run(config, None, progress=False)
    original = runner.run_flops
    runner.run_flops = lambda *a, **k: {}
    try:
        without = run(config, None, progress=False)
    finally:
        runner.run_flops = original
    assert with_flops["accuracy"] == without["accuracy"] and with_flops["train_loss"] == without["train_loss"]
    assert 0 < with_flops["flops"]["training_fraction_mask_skipped"] <= with_flops["flops"]["training_fraction"] <= 1


def test_weights_not_run_as_linear_or_conv_modules_are_refused_with_a_reason() -> None:
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
    with pytest.raises(ValueError, match="attention"):
        layer_macs(layer, (3, 8))
