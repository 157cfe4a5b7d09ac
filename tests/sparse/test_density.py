"""ERK / uniform layer densities and exact per-layer counts (spec: "Deterministic mask M").

ERK is checked against an independent reference written here (sort layers by raw score and
find the smallest dense prefix consistent with the solved eps), not by re-running the
package's own loop.
"""

import math

import pytest
import torch

from cigl_bayes.models import build_model
from cigl_bayes.sparse import check_density, erk_densities, exact_counts, layer_counts, maskable_weight_names, uniform_densities

MODELS = ["wrn-22-2", "resnet18", "resnet50", "vgg19", "cnn", "mlp"]
DENSITIES = [0.05, 0.1, 0.2]


def _shapes(name, num_classes=10):
    model = build_model(name, (3, 32, 32), num_classes)
    params = dict(model.named_parameters())
    names = maskable_weight_names(model)
    return names, [tuple(params[n].shape) for n in names]


_SHAPE_CACHE = {}


def shapes_of(name):
    if name not in _SHAPE_CACHE:
        _SHAPE_CACHE[name] = _shapes(name)
    return _SHAPE_CACHE[name]


def reference_erk(shapes, density):
    """Independent ERK: dense layers are a prefix of the layers sorted by raw score (desc.).

    For j = 0, 1, ... make the j highest-score layers dense, solve
    eps_j = (d * N - sum_dense N_i) / sum_rest r_i N_i, and stop at the first j for which no
    remaining layer exceeds 1.
    """
    numels = [math.prod(s) for s in shapes]
    raw = [sum(s) / n for s, n in zip(shapes, numels)]
    target = density * sum(numels)
    order = sorted(range(len(shapes)), key=lambda i: -raw[i])
    for j in range(len(shapes) + 1):
        dense, rest = order[:j], order[j:]
        if not rest:
            return [1.0] * len(shapes), None
        eps = (target - sum(numels[i] for i in dense)) / sum(raw[i] * numels[i] for i in rest)
        if eps * raw[rest[0]] <= 1.0:
            probs = [1.0] * len(shapes)
            for i in rest:
                probs[i] = eps * raw[i]
            return probs, eps
    raise AssertionError("unreachable")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("density", DENSITIES)
def test_erk_matches_independent_formula(name, density):
    """Per-layer ERK probabilities == min(1, eps r_l) with eps re-solved after densifying."""
    _, shapes = shapes_of(name)
    got = erk_densities(shapes, density)
    want, eps = reference_erk(shapes, density)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    numels = [math.prod(s) for s in shapes]
    # the solved probabilities reach the global budget exactly (the "eps solved" condition)
    assert sum(p * n for p, n in zip(got, numels)) == pytest.approx(density * sum(numels), rel=1e-12)
    assert all(0.0 < p <= 1.0 for p in got)
    # sparse layers share one eps: p_l / r_l is constant over the non-dense layers
    raw = [sum(s) / math.prod(s) for s in shapes]
    ratios = [p / r for p, r in zip(got, raw) if p < 1.0]
    assert ratios and max(ratios) == pytest.approx(min(ratios), rel=1e-12)
    assert ratios[0] == pytest.approx(eps, rel=1e-12)


def test_erk_small_handmade_case():
    """Hand-computed: a layer whose eps*r would exceed 1 is made dense and eps re-solved."""
    shapes = [(2, 2), (100, 100)]  # r = 1.0 and 0.02; N = 4 and 10000
    # no densification: eps = 0.5*10004 / (4 + 200) = 24.52 -> layer 0 would be 24.5 > 1
    # re-solved: eps = (5002 - 4) / 200 = 24.99 -> layer 1 density 0.4998
    probs = erk_densities(shapes, 0.5)
    assert probs[0] == 1.0
    assert probs[1] == pytest.approx((0.5 * 10004 - 4) / 10000, rel=1e-12)


def test_wrn_22_2_dense_layers_at_density_0_1():
    """Spec: WRN-22-2 (10 classes) at density 0.1 has conv1, two shortcuts and the classifier dense."""
    names, shapes = shapes_of("wrn-22-2")
    probs = erk_densities(shapes, 0.1)
    dense = {n for n, p in zip(names, probs) if p == 1.0}
    assert dense == {"conv1.weight", "block1.0.shortcut.weight", "block2.0.shortcut.weight", "fc.weight"}
    counts = layer_counts(shapes, 0.1, "erk")
    for n, s, c in zip(names, shapes, counts):
        if n in dense:
            assert c == math.prod(s)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("density", DENSITIES + [0.5, 0.9, 1.0])
@pytest.mark.parametrize("distribution", ["erk", "uniform"])
def test_exact_counts(name, density, distribution):
    """sum(counts) == round(d * N) exactly; 0 <= count_l <= N_l; |count_l - p_l N_l| < 1."""
    _, shapes = shapes_of(name)
    numels = [math.prod(s) for s in shapes]
    counts = layer_counts(shapes, density, distribution)
    probs = erk_densities(shapes, density) if distribution == "erk" else uniform_densities(shapes, density)
    assert all(isinstance(c, int) for c in counts)
    assert sum(counts) == round(density * sum(numels))
    for c, p, n in zip(counts, probs, numels):
        assert 0 <= c <= n
        assert abs(c - p * n) < 1.0 + 1e-9
        if p == 1.0:
            assert c == n


def test_uniform_densities_constant():
    shapes = [(3, 4), (5, 6, 7)]
    assert uniform_densities(shapes, 0.25) == [0.25, 0.25]


def test_exact_counts_handmade():
    """Largest-remainder split: floors (2, 3, 4) = 9, target 10 -> the largest remainder gets +1."""
    counts = exact_counts([10, 10, 10], [0.25, 0.38, 0.4], 1.03 / 3)
    assert counts == [2, 4, 4]
    assert sum(counts) == round(1.03 / 3 * 30)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.0001, 2.0, float("nan"), float("inf"), -float("inf")])
def test_invalid_density_raises(bad):
    """density outside (0, 1] or NaN -> ValueError everywhere it enters."""
    with pytest.raises(ValueError):
        check_density(bad)
    with pytest.raises(ValueError):
        erk_densities([(4, 4)], bad)
    with pytest.raises(ValueError):
        uniform_densities([(4, 4)], bad)
    with pytest.raises(ValueError):
        layer_counts([(4, 4)], bad, "uniform")
    with pytest.raises(ValueError):
        exact_counts([16], [0.5], bad)


def test_unknown_distribution_raises():
    with pytest.raises(ValueError):
        layer_counts([(4, 4)], 0.5, "gaussian")


def test_check_density_accepts_valid():
    assert check_density(1) == 1.0
    assert check_density(torch.tensor(0.3).item()) == pytest.approx(0.3)
