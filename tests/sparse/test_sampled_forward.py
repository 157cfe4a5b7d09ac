"""SparseNet's sampled forward: E = M * Z * scale drawn by scatter over the active entries, the
parameter-slot swap that replaces functional_call, and the CPU top-k pre-selection of updates."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from cigl_bayes.cigl import RandomMask
from cigl_bayes.sparse import DropSchedule, SparseNet, TopologyUpdater
from cigl_bayes.sparse.updates import top_k_indices


def small_net(drop=0.1, seed=0, mask_seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    return SparseNet(model, 0.3, random_mask=RandomMask(drop, seed=mask_seed))


@pytest.mark.parametrize("drop", [0.01, 0.3])
def test_sampled_mask_is_bernoulli_keep_on_the_support_and_zero_off_it(drop):
    net = small_net(drop)
    keep, scale = 1 - drop, 1 / (1 - drop)
    flat = net.support.flat
    draws = 400
    hits = torch.zeros(net.support.total, dtype=torch.float64)
    for _ in range(draws):
        e = net.effective_mask(sample=True)
        assert torch.all(e[~flat] == 0)
        assert torch.all((e[flat] == 0) | (e[flat] == torch.tensor(scale, dtype=e.dtype)))
        hits += (e != 0).double()
    n = draws * net.support.nnz
    mean = hits[flat].sum().item() / n
    assert abs(mean - keep) < 5 * math.sqrt(keep * (1 - keep) / n)  # CLT bound
    # every active entry is an independent coin: per-entry frequencies spread like Binomial(draws, keep)
    per_entry = hits[flat] / draws
    assert abs(per_entry.var().item() - keep * (1 - keep) / draws) < 0.5 * keep * (1 - keep) / draws


def test_sampled_mask_stream_is_the_documented_one_and_reproducible():
    """E = scatter of (U < keep) * scale at the sorted active positions, U from the sampler's seeded generator."""
    a, b = small_net(0.2, mask_seed=7), small_net(0.2, mask_seed=7)
    gen = torch.Generator().manual_seed(7)
    active = torch.nonzero(a.support.flat).flatten()
    for _ in range(3):
        expected = torch.zeros(a.support.total)
        expected[active] = (torch.rand(active.numel(), generator=gen) < 0.8).float() * (1 / 0.8)
        ea = a.effective_mask(sample=True)
        torch.testing.assert_close(ea, expected, rtol=0, atol=0)
        torch.testing.assert_close(b.effective_mask(sample=True), ea, rtol=0, atol=0)
    assert not torch.equal(small_net(0.2, mask_seed=8).effective_mask(sample=True), ea)


def test_gradients_reach_exactly_the_active_and_kept_entries():
    net = small_net(0.3)
    net.train()
    x, y = torch.randn(16, 3, 6, 6), torch.randint(0, 5, (16,))
    nn.functional.cross_entropy(net(x), y).backward()
    e = net.last_sampled_mask
    # reference: a plain copy run with the weights W * E
    ref = copy.deepcopy(net.module)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for name, view in zip(net.weight_names, net.support.layer_views(e)):
            params[name].mul_(view)
    nn.functional.cross_entropy(ref(x), y).backward()
    for name, w, view in zip(net.weight_names, net.weights(), net.support.layer_views(e)):
        assert torch.all(w.grad[view == 0] == 0)
        assert (w.grad[view != 0] != 0).float().mean() > 0.5
        torch.testing.assert_close(w.grad, params[name].grad * view, rtol=1e-5, atol=1e-7)


def test_slot_swap_matches_functional_call_and_restores_parameters():
    net = small_net(0.1)
    net.eval()
    before = {n: p for n, p in net.module.named_parameters()}
    x = torch.randn(4, 3, 6, 6)
    masked = net.masked_weights(sample=False)
    want = functional_call(net.module, dict(zip(net.weight_names, masked)), (x,), tie_weights=False)
    torch.testing.assert_close(net.forward_with(masked, x), want, rtol=0, atol=0)
    assert all(p is before[n] and isinstance(p, nn.Parameter) for n, p in net.module.named_parameters())
    with pytest.raises(ValueError, match="one masked tensor per maskable weight"):
        net.forward_with(masked[:1], x)

    class Boom(Exception):
        pass

    def explode(module, args):
        raise Boom

    handle = net.module[0].register_forward_pre_hook(explode)
    with pytest.raises(Boom):
        net.forward_with(masked, x)
    handle.remove()
    assert all(p is before[n] for n, p in net.module.named_parameters())  # restored on error too
    net.double()  # parameters replaced by _apply: the cached slots follow
    out = net(x.double())
    assert out.dtype == torch.float64


def test_tied_weight_both_uses_see_the_masked_tensor():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.head = nn.Linear(16, 50, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(self.emb(ids))

    torch.manual_seed(0)
    net = SparseNet(Tied(), 0.3)
    ids = torch.randint(0, 50, (3, 4))
    w = net.masked_weights(sample=False)[0]
    ref = nn.functional.linear(nn.functional.embedding(ids, w), w)
    torch.testing.assert_close(net(ids), ref, rtol=0, atol=0)


@pytest.mark.parametrize("n,k", [(20_000, 150), (147_456, 2_212), (300_000, 30_000), (65_536, 3_000)])
def test_top_k_indices_equals_topk_set(n, k):
    g = torch.Generator().manual_seed(n)
    scores = torch.randn(n, generator=g).abs()
    scores[torch.randperm(n, generator=g)[: n // 3]] = -math.inf  # kept entries, never grown
    got = top_k_indices(scores, k)
    assert got.numel() == k
    assert set(got.tolist()) == set(torch.topk(scores, k).indices.tolist())


def test_top_k_indices_falls_back_when_the_subsample_misleads():
    """All large scores sit exactly on the subsample's positions: the threshold admits < k, full topk runs."""
    n, k = 65_536, 1_000
    scores = torch.rand(n, generator=torch.Generator().manual_seed(0))
    stride = n // 4096
    scores[stride // 2 :: stride] += 10.0
    got = top_k_indices(scores, k)
    assert set(got.tolist()) == set(torch.topk(scores, k).indices.tolist())


@torch.no_grad()
def _previous_update(net, optimizer, grads, fraction):
    """The update as implemented before (per-layer topk; weights/momentum times (before & after))."""
    support = net.support
    for layer, (weight, mask) in enumerate(zip(net.weights(), support.layers())):
        a, numel = support.counts[layer], support.numels[layer]
        k = min(math.ceil(fraction * a), a)
        if k == 0 or a == numel:
            continue
        flat_w = weight.view(-1)
        active = support.layer_active_indices(layer)
        kept = active[torch.topk(flat_w[active].abs(), a - k, sorted=False).indices]
        scores = grads[layer].abs().flatten()
        scores.index_fill_(0, kept, -math.inf)
        grown = torch.topk(scores, k, sorted=False).indices
        before = mask.clone()
        support.set_layer(layer, torch.cat([kept, grown]))
        survivors = (before & mask).to(weight.dtype)
        weight.mul_(survivors)
        for value in optimizer.state.get(weight, {}).values():
            if torch.is_tensor(value) and value.shape == weight.shape:
                value.mul_(survivors)
    net.topology_changed()


def test_update_equals_previous_algorithm_on_large_layers():
    """Layers above the CPU pre-selection size (tanh: no dead units, so no ties at the boundary)."""
    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 10))
        net = SparseNet(model, 0.05, "uniform", RandomMask(0.1))
        return net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)

    x, y = torch.randn(64, 256, generator=torch.Generator().manual_seed(1)), torch.randint(0, 10, (64,))
    nets = [build(), build()]
    for step in range(3):
        for net, opt in nets:
            net.capture_dense_grad = True
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            net.capture_dense_grad = False
        (new, new_opt), (old, old_opt) = nets
        old_grads = old.dense_gradients()
        torch.testing.assert_close([w.grad for w in new._captured], old_grads, rtol=0, atol=0)
        for net, opt in nets:
            opt.step()
        assert new.support.numels[0] >= 4 * 4096  # the pre-selection path runs
        TopologyUpdater(new, new_opt, DropSchedule(10**9, 1), "rigl").update(0.3)
        _previous_update(old, old_opt, old_grads, 0.3)
        assert torch.equal(new.support.flat, old.support.flat)
        assert new.support.counts == old.support.counts
        for a, b in zip(new.weights(), old.weights()):
            assert torch.equal(a, b)
            assert torch.equal(new_opt.state[a]["momentum_buffer"], old_opt.state[b]["momentum_buffer"])
