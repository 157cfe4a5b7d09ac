"""CigL's random mask ``Z``: Bernoulli(keep) over the active entries, fresh every step.

Clean reading of the paper's Algorithm 1: the forward pass uses ``M * Z * W`` (times
``1 / keep`` with inverted-dropout rescaling), so only entries with ``M * Z = 1`` receive a
gradient and stored weights are never corrupted. The default (drop rate 0.01, rescaling
``1 / keep`` = ``K / (K - 1)``) is the released code's (``dpnum = 100``); the paper's text says
0.1 (``drop_rate=0.1``), which under-fits small or very sparse networks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class RandomMask:
    """Sampler of ``Z * scale`` with ``Z ~ Bernoulli(1 - drop_rate)`` from its own generator.

    Its generator state is part of ``state_dict`` so a resumed run draws the same masks.
    """

    def __init__(self, drop_rate: float = 0.01, rescale: bool = True, seed: int = 0) -> None:
        self.rescale = rescale
        self.set_drop_rate(drop_rate)
        self.seed = seed
        self._generator: torch.Generator | None = None

    def set_drop_rate(self, drop_rate: float) -> None:
        """Change the drop rate (e.g. to a learned value); the generator state is kept."""
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"random-mask drop rate must be in [0, 1), got {drop_rate}; e.g. --drop-rate 0.1")
        self.drop_rate = float(drop_rate)
        self.keep = 1.0 - self.drop_rate
        self.scale = 1.0 / self.keep if self.rescale else 1.0
        self.expected_scale = 1.0 if self.rescale else self.keep  # E[Z * scale]

    def generator(self, device: torch.device) -> torch.Generator:
        """The sampler's generator, created (seeded) on ``device`` at first use."""
        device = torch.device(device)
        if self._generator is None or self._generator.device.type != device.type:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def sample(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``n`` i.i.d. values ``Z * scale``, ``Z ~ Bernoulli(keep)``: ``Z = 1[U < keep]``, ``U ~ U[0, 1)``.

        In place on the uniform draw (no temporaries); values and stream are those of
        ``(U < keep).to(dtype) * scale``."""
        values = torch.rand(n, device=device, generator=self.generator(device)).lt_(self.keep)
        if values.dtype != dtype:
            values = values.to(dtype)
        return values.mul_(self.scale) if self.scale != 1.0 else values

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"drop_rate": self.drop_rate, "rescale": self.rescale, "seed": self.seed}
        if self._generator is not None:
            state["device"] = self._generator.device.type
            state["generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(state["drop_rate"], state["rescale"], state["seed"])
        if "generator" in state:
            self.generator(torch.device(state["device"])).set_state(state["generator"])

    def __repr__(self) -> str:
        return f"RandomMask(drop_rate={self.drop_rate}, rescale={self.rescale})"


class ZMaskedUpdate:
    """The "mask momentum by Z" option around an optimiser step: entries whose random mask was 0 in
    the last forward keep their weight and optimiser state (momentum) unchanged through the step,
    i.e. ``W <- W - lr * Z * update``. Call :meth:`save` just before ``optimizer.step()`` and
    :meth:`restore` just after (``mask_update_by_z`` does both around a step; the Lightning callback
    uses the two halves around Lightning's own step). Off by default: the clean reading masks only
    the gradient (through the forward pass)."""

    def __init__(self, net: Any, optimizer: torch.optim.Optimizer) -> None:
        self.net, self.optimizer = net, optimizer
        self._saved: tuple | None = None

    def _tensor_states(self, weight: torch.Tensor) -> list[torch.Tensor]:
        state = self.optimizer.state.get(weight, {})
        return [v for v in state.values() if torch.is_tensor(v) and v.shape == weight.shape]

    @torch.no_grad()
    def save(self) -> None:
        """Record the entries dropped by the last forward's mask, their weights and optimiser state."""
        mask = self.net.last_sampled_mask
        if mask is None:
            self._saved = None
            return
        weights = self.net.weights()
        frozen = [view == 0 for view in self.net.support.layer_views(mask)]
        self._saved = (frozen, [w.detach().clone() for w in weights],
                       [[v.clone() for v in self._tensor_states(w)] for w in weights])

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the recorded entries (optimiser state created by the step starts at 0 there)."""
        if self._saved is None:
            return
        frozen, saved_weights, saved_states = self._saved
        self._saved = None
        for weight, keep_old, old_weight, old_states in zip(self.net.weights(), frozen, saved_weights, saved_states):
            weight.copy_(torch.where(keep_old, old_weight, weight))
            for i, value in enumerate(self._tensor_states(weight)):
                value.copy_(torch.where(keep_old, old_states[i] if i < len(old_states) else torch.zeros_like(value), value))


def mask_update_by_z(net: Any, optimizer: torch.optim.Optimizer) -> Callable[[Callable[[], Any]], None]:
    """Step wrapper (``Trainer(step_wrapper=...)``) applying :class:`ZMaskedUpdate` around ``step``."""
    update = ZMaskedUpdate(net, optimizer)

    def wrapped(step: Callable[[], Any]) -> None:
        update.save()
        step()
        update.restore()

    return wrapped
