r"""The hierarchical variational family of CigL as a Pyro guide.

For the active weights (support :math:`M` from the sparse engine, RigL-updated):

.. math::
    Z \sim \mathrm{Bernoulli}(p), \qquad
    q(W \mid Z) = \mathcal N(c\, Z \odot V,\; s^2),

i.e. per weight the spike-and-slab :math:`Z\,\mathcal N(cV, s^2) + (1-Z)\,\mathcal N(0, s^2)`.
The values :math:`V` are the network's stored weights (torch parameters updated by the
optimiser); :math:`p` is fixed; :math:`s` small. With ``kl="gal"`` only ``"mask"`` is sampled
(:math:`s \to 0`, the weights are deterministic given :math:`Z`). A ``LearnableKeep`` makes
:math:`p` a variational parameter with a relaxed-Bernoulli mask (concrete dropout).
Each call records its :math:`M \odot Z \cdot c` as the net's ``last_sampled_mask``, so the
"mask momentum by Z" step wrapper masks the update with the step's own :math:`Z`.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
from torch import Tensor

from ..sparse.network import SparseNet
from .model import KL_MODES, LearnableKeep, active_values, keep_and_scale, mask_distribution, scatter_active


class HierarchicalGuide:
    """Guide :math:`q(Z)\\,q(W \\mid Z)` over a ``SparseNet``'s active weights."""

    def __init__(self, net: SparseNet, keep: float | LearnableKeep, rescale: bool = True, slab_scale: float = 1e-3, kl: str = "mc") -> None:
        if kl not in KL_MODES:
            raise ValueError(f"unknown KL mode {kl!r}; choose one of {KL_MODES}")
        if slab_scale <= 0:
            raise ValueError(f"slab scale must be > 0, got {slab_scale}")
        if isinstance(keep, LearnableKeep) and kl != "gal":
            raise ValueError("a learnable keep probability needs the closed-form KL (kl='gal')")
        self.net = net
        self.keep = keep
        self.rescale = rescale
        self.slab_scale = slab_scale
        self.kl = kl

    def __call__(self, x: Tensor, y: Tensor | None = None) -> None:
        values = active_values(self.net)
        z = pyro.sample("mask", mask_distribution(self.keep, values))
        scale = keep_and_scale(self.keep, self.rescale)[1]
        # the step's effective mask M * Z * c, for "mask momentum by Z" (as SparseNet's sampled forward)
        self.net.last_sampled_mask = scatter_active(self.net, (z * scale).detach())
        if self.kl == "mc":
            mean = z * values * scale
            pyro.sample("weights", dist.Normal(mean, values.new_full(values.shape, self.slab_scale), validate_args=False).to_event(1))
