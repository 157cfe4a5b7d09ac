"""``to_sparse_module``: SparseNet -> its unwrap, averaging -> a detached copy of the average, else TypeError;
the result loads with a plain ``load_state_dict`` into a fresh instance of the architecture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cigl_bayes.cigl import RandomMask, SnapshotAveraging
from cigl_bayes.sparse import SparseNet, to_sparse_module


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def test_sparse_net_gives_its_unwrap_and_loads_into_a_fresh_model():
    net = SparseNet(model(), density=0.25, random_mask=RandomMask(drop_rate=0.3, rescale=False), seed=1).eval()
    plain = to_sparse_module(net)
    assert type(plain) is nn.Sequential
    fresh = model(seed=9)
    fresh.load_state_dict(plain.state_dict())
    x = torch.randn(5, 6)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), net(x))
    for name, m in zip(net.weight_names, net.support.layers()):
        assert torch.all(dict(fresh.named_parameters())[name][~m] == 0)


def test_averaging_gives_a_copy_of_the_recalibrated_average():
    net = SparseNet(model(), density=0.5, random_mask=RandomMask(drop_rate=0.1))
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
    averaging = SnapshotAveraging(net, start_epoch=0, bn_inputs=x, sample_mask=False)
    averaging.on_epoch_end(0)
    plain = to_sparse_module(averaging)
    assert plain is not averaging.averaged_model()
    fresh = model(seed=3)
    fresh.load_state_dict(plain.state_dict())
    torch.testing.assert_close(fresh.state_dict(), averaging.averaged_model().state_dict())
    assert fresh[1].num_batches_tracked > 0  # BN statistics were recalibrated before the copy
    with torch.no_grad():  # a later fold changes the average, not the returned module
        net.weights()[0].mul_(2.0)
    averaging.on_epoch_end(1)
    assert not torch.equal(averaging.averaged_model()[0].weight, plain[0].weight)


def test_anything_else_is_a_type_error():
    with pytest.raises(TypeError, match="SparseNet or an object with an averaged_model"):
        to_sparse_module(model())

    class Bad:
        def averaged_model(self):
            return {"weight": torch.zeros(1)}

    with pytest.raises(TypeError, match="not an nn.Module"):
        to_sparse_module(Bad())
