"""SparseNet: masked forward W*E, gradients confined to the support (and to Z=1), caches, state_dict.

References are plain deep copies of the wrapped model whose weights are set to W*mask by hand.
"""

import copy

import pytest
import torch
from torch import nn

from cigl_bayes.cigl import RandomMask
from cigl_bayes.evaluate import measured_density
from cigl_bayes.sparse import SparseNet



def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Tanh(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16),
        nn.Tanh(),
        nn.Linear(16, 5),
    )


def inputs(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def manual_masked(net, flat_mask, train):
    """Deep copy of the wrapped model with every maskable weight replaced by W * mask."""
    ref = copy.deepcopy(net.module)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for name, view in zip(net.weight_names, net.support.layer_views(flat_mask)):
            params[name].mul_(view)
    ref.train(train)
    return ref


def corrupt_off_support(net, value=0.37):
    """Write non-zero values into the stored weights off the support (forward must ignore them)."""
    with torch.no_grad():
        for w, m in zip(net.weights(), net.support.layers()):
            w[~m] = value


def test_construction_exact_nnz_and_zero_off_support():
    net = SparseNet(tiny_model(), density=0.3, seed=3)
    for w, m, c in zip(net.weights(), net.support.layers(), net.support.counts):
        assert int(m.sum()) == c
        assert torch.all(w[~m] == 0)
        assert int(torch.count_nonzero(w)) == c  # initial values on the support are non-zero
    assert net.support.density == pytest.approx(net.support.nnz / net.support.total)
    assert measured_density(net) == pytest.approx(net.support.density)
    # biases and BN stay dense and are not maskable
    assert net.weight_names == ["0.weight", "3.weight", "6.weight", "8.weight"]


@pytest.mark.parametrize("train", [False, True])
def test_forward_equals_manually_masked_model(train):
    """Forward == plain model with weights W*M, even if stored weights off M were corrupted."""
    net = SparseNet(tiny_model(), density=0.25, seed=0)
    corrupt_off_support(net)
    ref = manual_masked(net, net.support.flat.float(), train)
    net.train(train)
    x, _ = inputs()
    torch.testing.assert_close(net(x), ref(x), rtol=1e-6, atol=1e-7)
    # and differs from the unmasked (corrupted) model: the mask really is applied
    raw = copy.deepcopy(net.module).train(train)
    assert not torch.allclose(net(x), raw(x))


def test_gradients_zero_off_support_and_match_reference():
    net = SparseNet(tiny_model(), density=0.25, seed=0)
    x, y = inputs()
    ref = manual_masked(net, net.support.flat.float(), True)
    net.train()
    nn.functional.cross_entropy(net(x), y).backward()
    nn.functional.cross_entropy(ref(x), y).backward()
    ref_params = dict(ref.named_parameters())
    for name, w, m in zip(net.weight_names, net.weights(), net.support.layers()):
        assert torch.all(w.grad[~m] == 0)  # exactly zero off the support
        dense = ref_params[name].grad
        assert torch.count_nonzero(dense[~m]) > 0  # ... although the dense gradient is not
        torch.testing.assert_close(w.grad[m], dense[m], rtol=1e-5, atol=1e-7)
    # non-maskable parameters (biases, BN) get their ordinary gradients
    for name, p in net.module.named_parameters():
        if name not in net.weight_names:
            torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-5, atol=1e-7)


def test_dense_gradients_capture():
    """capture_dense_grad exposes dL/dW_eff (dense) for RigL; without capture it raises."""
    net = SparseNet(tiny_model(), density=0.25, seed=0)
    x, y = inputs()
    net(x).sum().backward()
    with pytest.raises(RuntimeError):
        net.dense_gradients()
    net.zero_grad()
    net.capture_dense_grad = True
    ref = manual_masked(net, net.support.flat.float(), True)
    nn.functional.cross_entropy(net(x), y).backward()
    nn.functional.cross_entropy(ref(x), y).backward()
    grads = net.dense_gradients()
    ref_params = dict(ref.named_parameters())
    for name, g in zip(net.weight_names, grads):
        torch.testing.assert_close(g, ref_params[name].grad, rtol=1e-5, atol=1e-7)
    with pytest.raises(RuntimeError):  # consumed
        net.dense_gradients()


def test_random_mask_train_forward_and_gradients():
    """Train mode with Z: forward == model with W*M*Z*scale; grad == 0 wherever M*Z == 0."""
    rm = RandomMask(drop_rate=0.3, rescale=True, seed=4)
    net = SparseNet(tiny_model(), density=0.5, random_mask=rm, seed=0)
    corrupt_off_support(net)
    net.train()
    x, y = inputs()
    out = net(x)
    e = net.last_sampled_mask
    assert e is not None
    support = net.support.flat
    # sampled mask: zero off M, values in {0, 1/keep} on M, and some Z = 0 among the active ones
    assert torch.all(e[~support] == 0)
    assert torch.unique(e[support]).tolist() == pytest.approx([0.0, 1 / 0.7])
    ref = manual_masked(net, e, True)
    torch.testing.assert_close(out, ref(x), rtol=1e-6, atol=1e-7)
    nn.functional.cross_entropy(out, y).backward()
    nn.functional.cross_entropy(ref(x), y).backward()
    ref_params = dict(ref.named_parameters())
    for name, w, view in zip(net.weight_names, net.weights(), net.support.layer_views(e)):
        assert torch.all(w.grad[view == 0] == 0)
        on = view != 0
        torch.testing.assert_close(w.grad[on], ref_params[name].grad[on] * view[on], rtol=1e-5, atol=1e-7)
    # fresh Z every train-mode forward
    net(x)
    assert not torch.equal(net.last_sampled_mask, e)


@pytest.mark.parametrize("rescale", [True, False])
def test_effective_mask_expectation_in_eval(rescale):
    """Eval (no sampling): E = M * E[Z*scale] = M (rescale) or keep * M (no rescale)."""
    rm = RandomMask(drop_rate=0.2, rescale=rescale, seed=0)
    net = SparseNet(tiny_model(), density=0.4, random_mask=rm, seed=0).eval()
    expected = net.support.flat.float() * (1.0 if rescale else 0.8)
    torch.testing.assert_close(net.effective_mask(), expected, rtol=0, atol=0)
    x, _ = inputs()
    ref = manual_masked(net, expected, False)
    torch.testing.assert_close(net(x), ref(x), rtol=1e-6, atol=1e-7)
    # masked_parameters: maskable weights are W*E, the rest are the module's own Parameters
    params = net.masked_parameters()
    own = dict(net.module.named_parameters())
    assert set(params) == set(own)
    for name, view, w in zip(net.weight_names, net.support.layer_views(expected), net.weights()):
        torch.testing.assert_close(params[name], w * view, rtol=0, atol=0)
    for name in set(own) - set(net.weight_names):
        assert params[name] is own[name]


def test_sampling_masks_makes_eval_stochastic():
    rm = RandomMask(drop_rate=0.3, seed=0)
    net = SparseNet(tiny_model(), density=0.5, random_mask=rm, seed=0).eval()
    x, _ = inputs()
    with torch.no_grad():
        a, b = net(x), net(x)
        assert torch.equal(a, b)  # deterministic eval
        with net.sampling_masks():
            assert net.sampling
            c, d = net(x), net(x)
        assert not net.sampling
        e = net(x)
    assert not torch.equal(c, d)
    assert not torch.allclose(c, a)
    assert torch.equal(e, a)


def test_no_random_mask_ignores_sampling():
    net = SparseNet(tiny_model(), density=0.5, seed=0).eval()
    x, _ = inputs()
    with torch.no_grad():
        a = net(x)
        with net.sampling_masks():
            b = net(x)
    assert torch.equal(a, b)


def test_state_dict_round_trip_restores_support():
    """Loading into a net with another support restores support, active indices and forward."""
    src = SparseNet(tiny_model(0), density=0.3, seed=0)
    dst = SparseNet(tiny_model(1), density=0.3, seed=7)
    assert not torch.equal(src.support.flat, dst.support.flat)
    x, _ = inputs()
    src.eval()
    dst.eval()
    with torch.no_grad():
        dst(x)  # populate every cache derived from the old support
    stale = dst.support.active_indices().clone()
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst.support.flat, src.support.flat)
    assert torch.equal(dst.support.active_indices(), src.support.active_indices())
    assert not torch.equal(dst.support.active_indices(), stale)
    for layer in range(len(src.support.counts)):
        assert torch.equal(dst.support.layer_active_indices(layer), src.support.layer_active_indices(layer))
    # the forward uses the restored support (no stale cached float mask)
    corrupt_off_support(dst)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
        torch.testing.assert_close(dst.effective_mask(), src.support.flat.float(), rtol=0, atol=0)


def test_state_dict_from_another_density_rederives_counts():
    """A support saved at another density brings its own per-layer counts: active indices hold
    exactly the loaded support (no -1 padding), random masks and RigL stay inside it."""
    from cigl_bayes.sparse import DropSchedule, TopologyUpdater

    src = SparseNet(tiny_model(0), density=0.4, seed=0)
    dst = SparseNet(tiny_model(1), density=0.1, seed=7, random_mask=RandomMask(0.5, seed=0))
    dst.load_state_dict(src.state_dict())
    flat = dst.support.flat
    assert dst.support.counts == src.support.counts
    assert dst.support.nnz == int(flat.sum()) and dst.support.density == pytest.approx(src.support.density)
    active = dst.support.active_indices()
    assert torch.equal(active, torch.nonzero(flat).flatten())
    for layer, chunk in enumerate(dst.support.layers()):
        assert torch.equal(dst.support.layer_active_indices(layer), torch.nonzero(chunk.flatten()).flatten())
    dst.train()
    assert torch.all(dst.effective_mask()[~flat] == 0)
    # one RigL update keeps the exact loaded per-layer counts and the mask a boolean of nnz entries
    optimizer = torch.optim.SGD(dst.parameters(), lr=0.1)
    updater = TopologyUpdater(dst, optimizer, DropSchedule.for_run(10, 1, 0.3, 1.0), "rigl", seed=0)
    x, y = inputs()
    dst.capture_dense_grad = True
    nn.functional.cross_entropy(dst(x), y).backward()
    updater.update(0.3)
    counts = [int(c.sum()) for c in dst.support.layers()]
    assert counts == src.support.counts
