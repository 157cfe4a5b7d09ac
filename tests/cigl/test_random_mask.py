"""RandomMask Z ~ Bernoulli(keep): statistics, scaling, reproducibility; mask_update_by_z."""

import copy
import math

import pytest
import torch
from torch import nn

from cigl_bayes.cigl import RandomMask, mask_update_by_z
from cigl_bayes.sparse import SparseNet



N = 1_000_000


@pytest.mark.parametrize("drop_rate", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("rescale", [True, False])
def test_bernoulli_mean_and_expected_scale(drop_rate, rescale):
    """mean(Z) ~ keep within 5 standard errors; E[Z*scale] == expected_scale (1 or keep)."""
    rm = RandomMask(drop_rate=drop_rate, rescale=rescale, seed=1)
    keep = 1 - drop_rate
    values = rm.sample(N, torch.device("cpu"), torch.float64)
    scale = 1 / keep if rescale else 1.0
    assert rm.keep == pytest.approx(keep) and rm.scale == pytest.approx(scale)
    # values are exactly {0, scale}
    assert torch.unique(values).tolist() == pytest.approx([0.0, scale])
    z = (values != 0).double()
    se = math.sqrt(keep * (1 - keep) / N)
    assert abs(z.mean().item() - keep) < 5 * se
    expected_scale = 1.0 if rescale else keep
    assert rm.expected_scale == pytest.approx(expected_scale)
    assert abs(values.mean().item() - expected_scale) < 5 * se * scale


def test_zero_drop_rate_keeps_everything():
    rm = RandomMask(drop_rate=0.0)
    values = rm.sample(10_000, torch.device("cpu"), torch.float32)
    assert torch.all(values == 1.0) and rm.expected_scale == 1.0


def test_dtype_respected():
    rm = RandomMask(0.1)
    assert rm.sample(5, torch.device("cpu"), torch.float64).dtype == torch.float64


def test_same_seed_same_draws_and_independent_of_global_rng():
    a = RandomMask(0.3, seed=7)
    b = RandomMask(0.3, seed=7)
    c = RandomMask(0.3, seed=8)
    cpu = torch.device("cpu")
    xa = a.sample(1000, cpu, torch.float32)
    torch.manual_seed(123)
    torch.rand(50)  # the global RNG does not affect the mask's own generator
    xb = b.sample(1000, cpu, torch.float32)
    assert torch.equal(xa, xb)
    assert not torch.equal(xa, c.sample(1000, cpu, torch.float32))
    # successive draws differ
    assert not torch.equal(a.sample(1000, cpu, torch.float32), xa)


def test_state_dict_continues_identical_sequence():
    cpu = torch.device("cpu")
    a = RandomMask(0.2, rescale=False, seed=3)
    a.sample(777, cpu, torch.float32)
    state = copy.deepcopy(a.state_dict())
    cont_a = [a.sample(500, cpu, torch.float32) for _ in range(3)]
    b = RandomMask(0.9, rescale=True, seed=99)  # different config: restored from the state
    b.sample(10, cpu, torch.float32)
    b.load_state_dict(state)
    assert (b.drop_rate, b.rescale, b.seed) == (0.2, False, 3)
    assert b.expected_scale == pytest.approx(0.8) and b.scale == 1.0
    cont_b = [b.sample(500, cpu, torch.float32) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(cont_a, cont_b))


def test_state_dict_before_first_draw():
    cpu = torch.device("cpu")
    a = RandomMask(0.2, seed=3)
    state = a.state_dict()
    b = RandomMask(0.5, seed=4)
    b.load_state_dict(state)
    assert torch.equal(a.sample(100, cpu, torch.float32), b.sample(100, cpu, torch.float32))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_invalid_drop_rate_raises(bad):
    with pytest.raises(ValueError):
        RandomMask(drop_rate=bad)


def _net(drop_rate=0.3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    return SparseNet(model, density=0.6, random_mask=RandomMask(drop_rate, seed=2), seed=1)


def _momenta(opt, net):
    return [opt.state[w]["momentum_buffer"].clone() for w in net.weights()]


def test_mask_update_by_z_freezes_dropped_entries():
    """With the wrapper, entries with Z=0 keep weight and momentum; all entries with M*Z=1 move."""
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    step = mask_update_by_z(net, opt)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    net.train()
    for it in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        before_w = [w.detach().clone() for w in net.weights()]
        before_m = _momenta(opt, net) if it > 0 else [torch.zeros_like(w) for w in net.weights()]
        step(opt.step)
        views = net.support.layer_views(net.last_sampled_mask)
        after_m = _momenta(opt, net)
        for w, bw, bm, am, e, m in zip(net.weights(), before_w, before_m, after_m, views, net.support.layers()):
            frozen = e == 0
            assert bool((frozen & m).any())  # some active entries really were dropped by Z
            assert torch.equal(w[frozen], bw[frozen])
            assert torch.equal(am[frozen], bm[frozen])
            live = ~frozen
            assert torch.all(w[live] != bw[live])
            assert torch.all(am[live] != bm[live])
            assert torch.all(w[~m] == 0) and torch.all(am[~m] == 0)


def test_without_wrapper_dropped_entries_still_move():
    """Control: plain step lets momentum/weight decay move entries with Z=0 (what the option prevents)."""
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    net.train()
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        before = [w.detach().clone() for w in net.weights()]
        opt.step()
    moved = 0
    for w, bw, e, m in zip(net.weights(), before, net.support.layer_views(net.last_sampled_mask), net.support.layers()):
        sel = (e == 0) & m
        moved += int((w[sel] != bw[sel]).sum())
    assert moved > 0


def test_mask_update_by_z_without_sampled_mask_is_plain_step():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net.eval()
    net.last_sampled_mask = None
    x = torch.randn(4, 6)
    net(x).sum().backward()
    expected = [(p - 0.1 * p.grad).detach().clone() for p in net.parameters()]
    mask_update_by_z(net, opt)(opt.step)
    for p, want in zip(net.parameters(), expected):
        torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=1e-7)
