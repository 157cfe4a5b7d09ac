"""OOD scores: definitions, the (K+1)-head convention, edge cases and input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from cigl_bayes.ood import SCORES, energy_score, entropy_score, max_logit_score, msp_score



def _logits(n: int = 7, c: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


def test_msp_all_classes_is_max_softmax() -> None:
    z = _logits()
    assert torch.allclose(msp_score(z), torch.softmax(z, 1).max(1).values)
    assert msp_score(z).shape == (7,)


def test_msp_known_classes_keep_unknown_mass_in_denominator() -> None:
    z = torch.tensor([[0.0, 0.0, math.log(2.0)], [math.log(3.0), 0.0, 0.0]], dtype=torch.float64)
    # softmax rows: [.25, .25, .5] and [.6, .2, .2]
    assert torch.allclose(msp_score(z, num_known=2), torch.tensor([0.25, 0.6], dtype=torch.float64))
    assert torch.allclose(msp_score(z), torch.tensor([0.5, 0.6], dtype=torch.float64))
    # not the renormalised K-way softmax
    assert not torch.allclose(msp_score(z, 2), torch.softmax(z[:, :2], 1).max(1).values)


def test_max_logit_and_energy() -> None:
    z = _logits()
    assert torch.equal(max_logit_score(z, num_known=3), z[:, :3].max(1).values)
    assert torch.allclose(energy_score(z, 3), torch.logsumexp(z[:, :3], 1))
    e2 = energy_score(z, 3, temperature=2.0)
    assert torch.allclose(e2, 2.0 * torch.logsumexp(z[:, :3] / 2.0, 1))
    # T * logsumexp(z/T) lies in [max z, max z + T log K] and tends to max z as T -> 0
    m = z[:, :3].max(1).values
    assert (e2 >= m - 1e-12).all() and (e2 <= m + 2.0 * math.log(3) + 1e-12).all()
    assert torch.allclose(energy_score(z, 3, temperature=1e-4), m, atol=1e-3)


def test_scores_stable_for_huge_logits_and_int_input() -> None:
    z = torch.tensor([[1000.0, -1000.0, 0.0]])
    assert torch.isfinite(energy_score(z)).all() and torch.allclose(energy_score(z), torch.tensor([1000.0]))
    assert torch.allclose(msp_score(z), torch.tensor([1.0]))
    zi = torch.tensor([[1, 2, 3]])
    assert torch.allclose(max_logit_score(zi), torch.tensor([3.0]))
    assert msp_score(zi).is_floating_point()


def test_entropy_score() -> None:
    p = torch.softmax(_logits(), 1)
    ref = -scipy_entropy(p.numpy(), axis=1)
    assert np.allclose(entropy_score(p).numpy(), ref)
    q = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    s = entropy_score(q)
    assert torch.isfinite(s).all()
    assert torch.allclose(s, torch.tensor([0.0, -math.log(3)]))  # 0 * log 0 = 0; uniform = -log C


def test_scores_registry() -> None:
    assert set(SCORES) == {"msp", "max_logit", "energy"}
    z = _logits(c=4)
    for name, fn in SCORES.items():
        s = fn(z, num_known=3)
        assert s.shape == (7,), name
        assert torch.allclose(s, fn(torch.cat([z[:, :3], z[:, 3:]], 1), 3))


def test_larger_means_more_in_distribution() -> None:
    confident = torch.tensor([[10.0, 0.0, 0.0]])
    flat = torch.tensor([[0.0, 0.0, 0.0]])
    for fn in SCORES.values():
        assert fn(confident) > fn(flat)
    assert entropy_score(torch.softmax(confident, 1)) > entropy_score(torch.softmax(flat, 1))


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), (3, 0)])
def test_bad_logit_shapes(shape: tuple[int, ...]) -> None:
    z = torch.zeros(shape)
    for fn in SCORES.values():
        with pytest.raises(ValueError, match="shape"):
            fn(z)
    with pytest.raises(ValueError, match="shape"):
        entropy_score(z)


@pytest.mark.parametrize("k", [0, -1, 6, 2.0, True])
def test_bad_num_known(k: object) -> None:
    for fn in SCORES.values():
        with pytest.raises(ValueError, match="num_known"):
            fn(torch.zeros(2, 5), num_known=k)


def test_bad_temperature_and_probs() -> None:
    for t in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            energy_score(torch.zeros(2, 3), temperature=t)
    with pytest.raises(ValueError, match="non-negative"):
        entropy_score(torch.tensor([[1.5, -0.5]]))
    with pytest.raises(ValueError, match="finite"):
        entropy_score(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="Tensor"):
        msp_score(np.zeros((2, 3)))  # type: ignore[arg-type]
