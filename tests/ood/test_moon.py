"""MOON's loss, alpha auto-tuner and the unknown logit's gradient (spec: moon.md, sections 2-3)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cigl_bayes.ood.moon import AlphaSchedule, MoonObjective, moon_loss, unknown_gradient_threshold



def test_loss_is_cross_entropy_for_correctly_classified_examples():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 6, generator=g)
    targets = logits[:, :5].argmax(-1)
    logits[torch.arange(50), targets] += 5.0  # argmax over all K+1 outputs is the label
    for alpha in (0.0, 0.3, 1.0, 7.0):
        torch.testing.assert_close(moon_loss(logits, targets, alpha), F.cross_entropy(logits, targets))


def test_loss_upweights_wrong_examples_by_the_formula():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 4, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 3, (40,), generator=g)
    alpha = 0.7
    p = logits.softmax(-1)
    h = -p[torch.arange(40), targets].log()
    q = p[:, -1]
    wrong = (p.argmax(-1) != targets).double()
    assert 0 < wrong.sum() < 40
    expected = (h * (1 + wrong * alpha / (1 + alpha * q))).mean()
    torch.testing.assert_close(moon_loss(logits, targets, alpha), expected)


def test_objective_is_plain_cross_entropy_during_warm_up_then_moon():
    torch.manual_seed(0)
    model = nn.Linear(3, 4)  # K = 3 known classes + unknown
    schedule = AlphaSchedule(warmup_epochs=2, epochs=5)
    objective = MoonObjective(model, schedule, steps_per_epoch=3)
    x, y = torch.randn(16, 3), torch.randint(0, 3, (16,))
    for step in range(15):
        loss = objective(x, y)
        logits = model(x)
        if step < 6:
            torch.testing.assert_close(loss, F.cross_entropy(logits, y))
        else:
            torch.testing.assert_close(loss, moon_loss(logits, y, schedule.alpha(step // 3)))


def test_alpha_sequence_matches_the_formula():
    """beta = EWMA(mu) of mean (1 - q) h over warm-up; alpha_e = beta/rho + (e - e0)(alpha_f - beta/rho)/(E - e0)."""
    g = torch.Generator().manual_seed(2)
    mu, rho, final, e0, epochs = 0.05, 64.0, 1.0, 5, 12
    schedule = AlphaSchedule(e0, epochs, rho, final, mu)
    beta = None
    for _ in range(30):
        logits, targets = torch.randn(32, 11, generator=g), torch.randint(0, 10, (32,), generator=g)
        schedule.observe(logits, targets)
        p = logits.softmax(-1)
        s = ((1 - p[:, -1]) * -p[torch.arange(32), targets].log()).mean().item()
        beta = s if beta is None else (1 - mu) * beta + mu * s
    alpha0 = beta / rho
    delta = (final - alpha0) / (epochs - e0)
    for epoch in range(e0, epochs):
        assert math.isclose(schedule.alpha(epoch).item(), alpha0 + (epoch - e0) * delta, rel_tol=1e-5)
    assert schedule.alpha(e0).item() < schedule.alpha(epochs - 1).item() <= final
    assert math.isclose(schedule.alpha(epochs).item(), final, rel_tol=1e-5)  # reaches alpha_final at E
    with pytest.raises(ValueError, match="warm-up"):
        AlphaSchedule(5, 5)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("q_target", [0.01, 0.2])
def test_unknown_logit_gradient_flips_sign_at_the_threshold(alpha, q_target):
    """For a misclassified example, dL/d(unknown logit) < 0 exactly when h > w (1+aq)^2 / (a^2 (1-q))."""
    signs = []
    for label_logit in torch.linspace(-8.0, 3.0, 200):
        # outputs: label 0, a competing class 1 (the argmax), the unknown class 2
        logits = torch.tensor([[label_logit.item(), 4.0, 0.0]], dtype=torch.float64)
        # set the unknown logit so that q is (about) q_target given the others
        others = torch.logsumexp(logits[0, :2], 0)
        logits[0, 2] = others + math.log(q_target / (1 - q_target))
        logits.requires_grad_(True)
        loss = moon_loss(logits, torch.tensor([0]), alpha)
        (grad,) = torch.autograd.grad(loss, logits)
        p = logits.detach().softmax(-1)[0]
        h, q = -p[0].log().item(), p[2].item()
        threshold = unknown_gradient_threshold(q, alpha)
        if abs(h - threshold) > 1e-6:
            assert (grad[0, 2].item() < 0) == (h > threshold), (h, threshold, grad[0, 2].item())
            signs.append(grad[0, 2].item() < 0)
    assert any(signs)
    if alpha <= 1.0:  # for large alpha every misclassified example (h > ln 2) is past the threshold
        assert not all(signs)  # both regimes were visited


def test_spec_example_threshold_for_alpha_one():
    """alpha = 1, q ~ 0: the unknown logit is pushed up once p_y < ~0.135 (h > 2)."""
    assert math.isclose(unknown_gradient_threshold(0.0, 1.0), 2.0)
    assert math.isclose(math.exp(-unknown_gradient_threshold(1e-9, 1.0)), 0.1353, abs_tol=1e-3)
