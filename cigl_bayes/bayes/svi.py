"""The SVI objective: ``-ELBO / N`` as a differentiable loss for the shared training loop.

Using ``Trace_ELBO.differentiable_loss`` with an ordinary torch optimiser (instead of
``pyro.infer.SVI`` with ``pyro.optim``) lets the RigL updater keep the optimiser state
consistent with the support, exactly as in the plain-torch path.
"""

from __future__ import annotations

from collections.abc import Callable

from pyro.infer import ELBO, Trace_ELBO
from torch import Tensor


class NegativeELBO:
    """``objective(x, y) = -ELBO(x, y) / N``: on the scale of a mean per-example loss."""

    def __init__(self, model: Callable, guide: Callable, num_data: int, elbo: ELBO | None = None) -> None:
        self.model = model
        self.guide = guide
        self.num_data = num_data
        self.elbo = elbo if elbo is not None else Trace_ELBO()

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return self.elbo.differentiable_loss(self.model, self.guide, x, y) / self.num_data


class SyncLearnedKeep:
    """End-of-epoch hook: copy a learned keep probability into the network's ``RandomMask`` so that
    weight-and-mask averaging and eval-time masks use it (one host read per epoch)."""

    def __init__(self, keep, random_mask) -> None:
        self.keep = keep
        self.random_mask = random_mask

    def on_epoch_end(self, epoch: int) -> None:
        self.random_mask.set_drop_rate(1.0 - float(self.keep.probs.detach()))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        self.on_epoch_end(-1)
