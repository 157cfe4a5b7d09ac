r"""What a method predicts with: one module per predictive distribution, in log space.

Evaluation (``runner``), ``export`` and ``predict`` all call the same object, so the model that
is scored is the model that is exported. Every predictive maps inputs to normalised
log-probabilities :math:`\log p(y \mid x)` (usable wherever logits are: their softmax is the
predictive itself):

* :class:`PointPredictive` -- one network, optionally temperature-scaled:
  :math:`\log \operatorname{softmax}(f(x) / T)`, eval mode;
* :class:`MCPredictive` -- Monte Carlo over the network's stochastic parts (unit dropout, random
  masks): :math:`\log \frac1S \sum_s \operatorname{softmax}(f(x; W_s))`, a log-mean-exp;
* :class:`EnsemblePredictive` -- a snapshot ensemble:
  :math:`\log \frac1S \sum_s \operatorname{softmax}(f_s(x))`.

Averages are taken in log space (``logsumexp``), so an over-confident prediction keeps its
exact NLL instead of underflowing to a clamped probability.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .cigl.averaging import batches_of
from .evaluate import mc_sampling

__all__ = ["EnsemblePredictive", "MCPredictive", "PointPredictive", "Predictive", "log_predict"]


class Predictive(nn.Module):
    """Base class: ``forward(x)`` returns ``(B, C)`` log-probabilities; ``spec`` describes it for export."""

    kind: str = ""

    def spec(self) -> dict[str, object]:
        """The predictive's settings beside its networks' weights (JSON-serialisable)."""
        return {"kind": self.kind}

    def networks(self) -> list[nn.Module]:
        """The plain networks whose weights define the predictive (saved by export)."""
        raise NotImplementedError


class PointPredictive(Predictive):
    """``log_softmax(model(x) / temperature)`` with ``model`` in eval mode."""

    kind = "point"

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: Tensor) -> Tensor:
        self.model.eval()
        logits = self.model(x)
        return (logits if self.temperature == 1.0 else logits / self.temperature).log_softmax(-1)

    def spec(self) -> dict[str, object]:
        return {"kind": self.kind, "temperature": self.temperature}

    def networks(self) -> list[nn.Module]:
        return [self.model]


class MCPredictive(Predictive):
    """Log of the mean over ``samples`` stochastic forwards (``evaluate.mc_sampling``: BN running
    statistics, fresh random masks, active dropout) of the softmax. Draws from the global RNG."""

    kind = "mc"

    def __init__(self, model: nn.Module, samples: int) -> None:
        super().__init__()
        if samples < 1:
            raise ValueError(f"MC samples must be >= 1, got {samples}")
        self.model = model
        self.samples = int(samples)

    def forward(self, x: Tensor) -> Tensor:
        with mc_sampling(self.model):
            total = self.model(x).log_softmax(-1)
            for _ in range(self.samples - 1):
                total = torch.logaddexp(total, self.model(x).log_softmax(-1))
        return total - math.log(self.samples)

    def spec(self) -> dict[str, object]:
        return {"kind": self.kind, "samples": self.samples}

    def networks(self) -> list[nn.Module]:
        return [self.model]


class EnsemblePredictive(Predictive):
    """Log of the mean softmax of ``members`` (each in eval mode): the snapshot ensemble that
    prediction averaging ("w/o WMA", MOON's voting) evaluates."""

    kind = "ensemble"

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        logs = torch.stack([member.eval()(x).log_softmax(-1) for member in self.members])
        return logs.logsumexp(0) - math.log(len(self.members))

    def spec(self) -> dict[str, object]:
        return {"kind": self.kind, "members": len(self.members)}

    def networks(self) -> list[nn.Module]:
        return list(self.members)


def from_spec(spec: dict[str, object], networks: Sequence[nn.Module]) -> Predictive:
    """Rebuild a predictive from ``Predictive.spec()`` and its networks (as saved by export)."""
    kind = spec.get("kind", "point")
    if kind == "point":
        return PointPredictive(networks[0], float(spec.get("temperature", 1.0)))
    if kind == "mc":
        return MCPredictive(networks[0], int(spec["samples"]))
    if kind == "ensemble":
        return EnsemblePredictive(networks)
    raise ValueError(f"unknown predictive kind {kind!r}; expected point, mc or ensemble")


@torch.no_grad()
def log_predict(predictive: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    """``predictive(x)`` in batches of ``batch_size``, without gradients."""
    return torch.cat([predictive(b) for b in batches_of(x, batch_size)])
