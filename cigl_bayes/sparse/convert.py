"""``to_sparse_module``: the plain, sparse ``nn.Module`` to ship from a training run.

The result is an ordinary copy of the user's architecture whose maskable weights hold exact
zeros off the support, so ``fresh_model.load_state_dict(result.state_dict())`` loads it into a
new instance (tied weights included), with no ``cigl_bayes`` code needed at inference.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .network import SparseNet


def to_sparse_module(source: Any) -> nn.Module:
    """The plain sparse module of ``source``.

    * a ``SparseNet``: ``source.unwrap()`` (eval-mode weights ``W * M * E[Z * scale]`` baked in);
    * anything with an ``averaged_model()`` method (``SnapshotAveraging``,
      ``SparseTrainingCallback``): a deep copy of the averaged, BN-recalibrated module, so later
      folds into the average do not change it.

    Raises ``TypeError`` for anything else.
    """
    if isinstance(source, SparseNet):
        return source.unwrap()
    averaged_model = getattr(source, "averaged_model", None)
    if callable(averaged_model):
        model = averaged_model()
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(source).__name__}.averaged_model() returned {type(model).__name__}, not an nn.Module")
        return copy.deepcopy(model)
    raise TypeError(
        f"to_sparse_module takes a SparseNet or an object with an averaged_model() method (SnapshotAveraging, "
        f"SparseTrainingCallback), got {type(source).__name__}; a plain module needs no conversion"
    )
