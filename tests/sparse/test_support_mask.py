"""SupportMask: exact per-layer counts, flat layout, active indices, set_layer, state_dict."""

import math

import pytest
import torch

from cigl_bayes.sparse import SupportMask, layer_counts, maskable_weight_names

SHAPES = [(8, 3, 3, 3), (16, 8, 3, 3), (10, 64), (5, 10)]


@pytest.mark.parametrize("distribution", ["erk", "uniform"])
@pytest.mark.parametrize("density", [0.05, 0.3, 1.0])
def test_exact_layer_nnz(distribution, density):
    """Each layer's slice of the flat buffer holds exactly counts[l] True entries."""
    mask = SupportMask(SHAPES, density, distribution, torch.Generator().manual_seed(0))
    assert mask.counts == layer_counts(SHAPES, density, distribution)
    assert mask.total == sum(math.prod(s) for s in SHAPES)
    assert mask.flat.dtype == torch.bool and mask.flat.numel() == mask.total
    for layer, (view, shape, count) in enumerate(zip(mask.layers(), SHAPES, mask.counts)):
        assert tuple(view.shape) == shape
        assert int(view.sum()) == count
        # layer views are views into the flat buffer at the right offset
        assert view.data_ptr() == mask.flat[mask.offsets[layer]:].data_ptr()
    assert int(mask.flat.sum()) == mask.nnz == sum(mask.counts)
    assert mask.density == pytest.approx(mask.nnz / mask.total)


def test_active_indices_sorted_and_consistent():
    mask = SupportMask(SHAPES, 0.3, generator=torch.Generator().manual_seed(1))
    active = mask.active_indices()
    assert torch.equal(active, torch.nonzero(mask.flat).flatten())
    for layer in range(len(SHAPES)):
        local = mask.layer_active_indices(layer)
        assert torch.equal(local, torch.nonzero(mask.layers()[layer].flatten()).flatten())


def test_set_layer_replaces_support_and_invalidates_cache():
    mask = SupportMask(SHAPES, 0.3, generator=torch.Generator().manual_seed(2))
    cached = mask.active_indices().clone()
    layer = 1
    k = mask.counts[layer]
    new = torch.arange(mask.numels[layer] - k, mask.numels[layer])  # last k positions
    mask.set_layer(layer, new)
    assert torch.equal(mask.layer_active_indices(layer), new)
    assert int(mask.layers()[layer].sum()) == k
    other = [i for i in range(len(SHAPES)) if i != layer]
    # other layers untouched, cache refreshed
    assert not torch.equal(mask.active_indices(), cached)
    assert torch.equal(mask.active_indices(), torch.nonzero(mask.flat).flatten())
    for i in other:
        assert int(mask.layers()[i].sum()) == mask.counts[i]


def test_different_generators_give_different_supports_same_counts():
    a = SupportMask(SHAPES, 0.3, generator=torch.Generator().manual_seed(0))
    b = SupportMask(SHAPES, 0.3, generator=torch.Generator().manual_seed(0))
    c = SupportMask(SHAPES, 0.3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.flat, b.flat)
    assert not torch.equal(a.flat, c.flat)
    assert a.counts == c.counts


def test_state_dict_round_trip_resets_active_cache():
    a = SupportMask(SHAPES, 0.3, generator=torch.Generator().manual_seed(0))
    b = SupportMask(SHAPES, 0.3, generator=torch.Generator().manual_seed(5))
    stale = b.active_indices().clone()
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.flat, a.flat)
    assert torch.equal(b.active_indices(), a.active_indices())
    assert not torch.equal(b.active_indices(), stale)


def test_maskable_weight_names():
    """Every conv/linear weight, nothing else (biases, BN stay dense)."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    assert maskable_weight_names(model) == ["0.weight", "3.weight"]
    with pytest.raises(ValueError):
        maskable_weight_names(torch.nn.Sequential(torch.nn.ReLU()))
