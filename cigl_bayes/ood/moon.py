r"""MOON (Lei et al., 2024): unknown-aware sparse training with a :math:`K+1`-th "unknown" output.

Loss, per example with :math:`h_i = -\log p_i[y_i]` (softmax over :math:`K+1` logits),
:math:`q_i = \min(p_i[K+1], 1 - 10^{-7})` and :math:`\mathrm{wrong}_i = 1[\arg\max p_i \ne y_i]`:

.. math::
    L = \frac1B \sum_i h_i \Bigl(1 + \mathrm{wrong}_i \frac{\alpha}{1 + \alpha q_i}\Bigr)

(:math:`q_i` not detached). Correct examples get plain cross-entropy; wrong ones are
up-weighted, and for :math:`h > w (1+\alpha q)^2 / (\alpha^2 (1-q))` the gradient pushes their
unknown logit *up*. :math:`\alpha` is auto-tuned "step by step": an EWMA :math:`\beta`
(rate :math:`\mu`) of :math:`s_t = \mathrm{mean}_i (1-q_i) h_i` over the warm-up (plain
cross-entropy) gives :math:`\alpha_0 = \beta/\rho`, which rises linearly by
:math:`\delta = (\alpha_{final} - \alpha_0)/(E - e_0)` at each later epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import check_warmup

Q_MAX = 1.0 - 1e-7


def loss_terms(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(log_probs, h, q)`` of the loss above: the log-softmax over ``K + 1``, the per-example
    cross-entropy ``h`` and the clamped unknown probability ``q``."""
    log_probs = logits.log_softmax(-1)
    h = -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
    return log_probs, h, log_probs[:, -1].exp().clamp(max=Q_MAX)


def moon_loss(logits: Tensor, targets: Tensor, alpha: float | Tensor) -> Tensor:
    """The re-weighted loss above; ``logits`` has ``K + 1`` columns, the last being "unknown"."""
    _, h, q = loss_terms(logits, targets)
    wrong = (logits.detach().argmax(-1) != targets).to(logits.dtype)
    weight = 1.0 + wrong * alpha / (1.0 + alpha * q)
    return (h * weight).mean()


def unknown_gradient_threshold(q: float, alpha: float) -> float:
    """The loss ``h`` above which a *misclassified* example's unknown logit gradient turns negative
    (gradient descent raises the unknown logit): ``h > w (1 + alpha q)^2 / (alpha^2 (1 - q))``."""
    w = 1.0 + alpha / (1.0 + alpha * q)
    return w * (1.0 + alpha * q) ** 2 / (alpha**2 * (1.0 - q))


class AlphaSchedule:
    """The "step by step" auto-tuner of ``alpha`` (all on the device; no host sync).

    Args:
        warmup_epochs: :math:`e_0`, epochs of plain cross-entropy (the EWMA is kept then).
        epochs: :math:`E`, total epochs.
        rho: divisor of the warm-up EWMA giving :math:`\\alpha_0` (64).
        alpha_final: value reached at the last epoch (1.0).
        ewma: :math:`\\mu`, the EWMA rate (0.05); the EWMA starts at the first observation.

    ``reduce_stat`` (set by ``cigl_bayes.train.distributed.distribute``) averages each batch
    statistic :math:`s_t` in place over data-parallel ranks, so every rank keeps the EWMA of
    the global batch (the same :math:`\\alpha` as one process on the combined batch).
    """

    def __init__(self, warmup_epochs: int, epochs: int, rho: float = 64.0, alpha_final: float = 1.0, ewma: float = 0.05) -> None:
        check_warmup(warmup_epochs, epochs)
        if rho <= 0 or not 0 < ewma <= 1:
            raise ValueError(f"rho must be > 0 and the EWMA rate in (0, 1], got rho={rho}, ewma={ewma}")
        self.warmup_epochs, self.epochs = warmup_epochs, epochs
        self.rho, self.alpha_final, self.ewma = rho, alpha_final, ewma
        self.beta: Tensor | None = None
        self.reduce_stat: Callable[[list[Tensor]], None] | None = None

    def observe(self, logits: Tensor, targets: Tensor) -> None:
        """Fold :math:`s_t = \\mathrm{mean}_i (1 - q_i) h_i` of a warm-up batch into the EWMA."""
        with torch.no_grad():
            _, h, q = loss_terms(logits, targets)
            s = ((1.0 - q) * h).mean()
            if self.reduce_stat is not None:
                self.reduce_stat([s])
            self.beta = s.clone() if self.beta is None else torch.lerp(self.beta, s, self.ewma)

    def alpha(self, epoch: int) -> Tensor:
        """:math:`\\alpha_0 + (e - e_0)\\,\\delta` for (0-based) ``epoch >= warmup_epochs``."""
        if self.beta is None:
            raise RuntimeError("alpha is defined after the warm-up has observed at least one batch")
        alpha0 = self.beta / self.rho
        delta = (self.alpha_final - alpha0) / (self.epochs - self.warmup_epochs)
        return alpha0 + (epoch - self.warmup_epochs) * delta

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta = state["beta"]


class MoonObjective:
    """``objective(x, y)`` for the shared trainer: cross-entropy over ``K+1`` during the warm-up
    (observing the EWMA), then ``moon_loss`` with the scheduled ``alpha``.

    Epochs are counted from the steps taken (``steps_per_epoch``), so the objective's state is
    one counter plus the EWMA, both saved in checkpoints.
    """

    def __init__(self, model: nn.Module, schedule: AlphaSchedule, steps_per_epoch: int) -> None:
        self.model = model
        self.schedule = schedule
        self.steps_per_epoch = steps_per_epoch
        self.step = 0
        # called with (detached logits, labels, alpha or None in the warm-up) every step, e.g.
        # ``cigl_bayes.ood.diagnostics.MoonDiagnostics.observe``; must not sync with the host
        self.observer: Callable[[Tensor, Tensor, Tensor | None], None] | None = None

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        logits = self.model(x)
        epoch = self.step // self.steps_per_epoch
        self.step += 1
        alpha = self.schedule.alpha(epoch) if epoch >= self.schedule.warmup_epochs else None
        if self.observer is not None:
            self.observer(logits.detach(), y, alpha)
        if alpha is None:
            self.schedule.observe(logits, y)
            return F.cross_entropy(logits, y)
        return moon_loss(logits, y, alpha)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.schedule.load_state_dict(state["schedule"])
