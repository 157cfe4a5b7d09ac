"""MOON's loss, alpha auto-tuner and the unknown logit's gradient (spec: moon.md, sections 2-3)."""

import math
import warnings

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


def _lrs(parts) -> list[float]:
    """The lr of every optimisation step of the assembled run (the scheduler replayed)."""
    trainer = parts.trainer
    total = trainer.epochs * len(trainer.loader)
    values = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step()`")
        for _ in range(total):
            values.append(trainer.optimizer.param_groups[0]["lr"])
            trainer.lr_scheduler.step()
    return values


def test_released_moon_recipe_lr_shape_and_snapshots(tiny_config, digits_data) -> None:
    """MOON's released schedule: no warm-up, cosine from 1.2 x lr to 0.08 x lr until averaging
    starts, then held; 10 % of each averaging epoch's steps folded. recipe="recipe" keeps today's."""
    from cigl_bayes.methods import assemble

    config = tiny_config("moon", optim__epochs=5, data__batch_size=32, optim__warmup_epochs=2)
    parts = assemble(config, digits_data, progress=False)
    steps = len(parts.trainer.loader)
    lrs, base = _lrs(parts), config.optim.lr
    start = int(0.8 * 5) * steps
    assert lrs[0] == pytest.approx(1.2 * base)
    assert all(a >= b for a, b in zip(lrs[:start], lrs[1:start]))
    assert lrs[start:] == pytest.approx([0.08 * base] * (len(lrs) - start))
    assert parts.averaging.fold_steps and len(parts.averaging.fold_steps) == max(1, round(0.1 * steps))
    old = assemble(config.with_(moon__recipe="recipe"), digits_data, progress=False)
    old_lrs = _lrs(old)
    assert old_lrs[0] == pytest.approx(base / (2 * steps)) and old_lrs[-1] < 0.01 * base  # warm-up, cosine to ~0
    assert not old.averaging.fold_steps


def test_moon_ablation_arms(tiny_config, digits_data) -> None:
    """moon-ce: K+1 outputs, plain cross-entropy, averaging; moon-no-avg: MOON loss, no averaging;
    rigl-avg: K outputs, averaging with MOON's schedule."""
    from cigl_bayes.methods import METHODS, assemble

    ce = assemble(tiny_config("moon-ce"), digits_data, progress=False)
    assert ce.trainer.objective is None and ce.averaging is not None
    assert ce.model(digits_data.x_test[:2]).shape[-1] == 11
    no_avg = assemble(tiny_config("moon-no-avg"), digits_data, progress=False)
    assert isinstance(no_avg.trainer.objective, MoonObjective) and no_avg.averaging is None
    rigl_avg = assemble(tiny_config("rigl-avg"), digits_data, progress=False)
    assert rigl_avg.model(digits_data.x_test[:2]).shape[-1] == 10 and rigl_avg.averaging is not None
    assert rigl_avg.trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1.2 * tiny_config().optim.lr)
    assert METHODS["moon-cigl"].random_mask and tiny_config("moon-cigl").random_mask.drop_rate == 0.01
