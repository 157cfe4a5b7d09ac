"""The SVI objective: ``-ELBO / N`` as a differentiable loss for the shared training loop.

Using a ``differentiable_loss`` with an ordinary torch optimiser (instead of ``pyro.infer.SVI``
with ``pyro.optim``) lets the RigL updater keep the optimiser state consistent with the support,
exactly as in the plain-torch path. For a ``SparseBayesModel`` + ``HierarchicalGuide`` pair the
loss is ``DirectELBO``'s (``Trace_ELBO``'s objective and gradients on the same draws, without
Pyro's per-step tracing); ``estimator="trace"`` runs ``Trace_ELBO`` itself.
"""

from __future__ import annotations

from collections.abc import Callable

from pyro.infer import ELBO, Trace_ELBO
from torch import Tensor

from .direct import DirectELBO, direct_unsupported

ESTIMATORS = ("auto", "direct", "trace")


class NegativeELBO:
    """``objective(x, y) = -ELBO(x, y) / N``: on the scale of a mean per-example loss.

    ``estimator``: ``"direct"`` (``DirectELBO``), ``"trace"`` (``elbo``, default ``Trace_ELBO()``),
    or ``"auto"``: direct when the pair allows it and no ``elbo`` is given, else trace.
    """

    def __init__(self, model: Callable, guide: Callable, num_data: int, elbo: ELBO | None = None, estimator: str = "auto") -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown ELBO estimator {estimator!r}; choose one of {ESTIMATORS}")
        if estimator == "direct":
            reason = direct_unsupported(model, guide) or (elbo is not None and "an explicit elbo was given")
            if reason:
                raise ValueError(f"estimator='direct' is not available: {reason}; use estimator='trace'")
        elif estimator == "auto":
            estimator = "direct" if elbo is None and direct_unsupported(model, guide) is None else "trace"
        self.model = model
        self.guide = guide
        self.num_data = num_data
        self.estimator = estimator
        self.elbo = DirectELBO() if estimator == "direct" else (elbo if elbo is not None else Trace_ELBO())

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
