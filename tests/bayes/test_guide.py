"""The hierarchical guide records the mask Z it samples, so "mask momentum by Z" masks each SVI
update with that step's Z (not a stale one, e.g. left on the net by a WMA snapshot)."""

import pyro
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

from cigl_bayes.bayes import HierarchicalGuide, NegativeELBO, SparseBayesModel
from cigl_bayes.cigl import RandomMask, mask_update_by_z
from cigl_bayes.sparse import SparseNet


def momentum_mask_of(net, z, scale):
    """The flat mask ``M * Z * scale`` that ``mask_update_by_z`` reads, built from the guide's Z."""
    return torch.zeros(net.support.total).index_put((net.support.active_indices(),), z * scale)


@pytest.mark.parametrize("kl", ["gal", "mc"])
def test_svi_step_is_masked_by_the_z_the_guide_sampled(kl):
    torch.manual_seed(0)
    keep, n = 0.7, 32
    net = SparseNet(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)), 0.5, random_mask=RandomMask(1 - keep, seed=1))
    guide = poutine.trace(HierarchicalGuide(net, keep, kl=kl))
    objective = NegativeELBO(SparseBayesModel(net, n, 1.0, keep, kl=kl), guide, n)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    step = mask_update_by_z(net, optimizer)
    x, y = torch.randn(n, 6), torch.randint(0, 3, (n,))
    net.masked_parameters(sample=True)  # a WMA snapshot's own Z, left on the net
    for _ in range(3):
        optimizer.zero_grad()
        objective(x, y).backward()
        z = guide.trace.nodes["mask"]["value"].detach()
        assert 0 < z.mean() < 1
        torch.testing.assert_close(net.last_sampled_mask, momentum_mask_of(net, z, 1 / keep), rtol=0, atol=0)
        before = [w.detach().clone() for w in net.weights()]
        step(optimizer.step)
        used = net.support.layer_views(momentum_mask_of(net, z, 1.0))
        for weight, old, live, support in zip(net.weights(), before, used, net.support.layers()):
            live = live.bool()
            assert torch.equal(weight[~live], old[~live])  # Z = 0 (or off the support): frozen
            assert torch.all(weight[live] != old[live])  # Z = 1: updated
            assert bool((support & ~live).any())


def test_cigl_svi_mask_momentum_after_a_snapshot_uses_the_step_mask(digits_data, tiny_config):
    """Wired through ``assemble``: after an epoch-end WMA snapshot, the next step is masked by its own Z."""
    from cigl_bayes.methods import assemble

    config = tiny_config("cigl-svi", random_mask__mask_momentum=True, averaging__start_fraction=0.0, optim__epochs=2,
                         sparsity__update_every=1000)  # no topology update: one support throughout
    parts = assemble(config, digits_data, None, progress=False)
    parts.trainer.fit(until_epoch=1)
    assert parts.averaging.count == 1
    objective, net = parts.trainer.objective, parts.model
    assert objective.estimator == "direct"  # it draws the guide's Z with the guide's RNG calls: replay them
    x, y = next(iter(parts.trainer.loader))
    pyro.set_rng_seed(11)
    z = poutine.trace(objective.guide).get_trace(x, y).nodes["mask"]["value"]
    net.masked_parameters(sample=True)  # a WMA snapshot's own Z, left on the net again
    before = [w.detach().clone() for w in net.weights()]
    pyro.set_rng_seed(11)
    parts.trainer.train_step(x, y)
    assert 0 < z.mean() < 1
    torch.testing.assert_close(net.last_sampled_mask, momentum_mask_of(net, z, net.random_mask.scale), rtol=0, atol=0)
    for weight, old, live in zip(net.weights(), before, net.support.layer_views(momentum_mask_of(net, z, 1.0).bool())):
        assert torch.equal(weight[~live], old[~live]) and bool((weight[live] != old[live]).any())
