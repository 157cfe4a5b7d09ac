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


def mask_update_by_z(net: Any, optimizer: torch.optim.Optimizer) -> Callable[[Callable[[], Any]], None]:
    """Step wrapper for the "mask momentum by Z" option: the whole update is masked by ``Z``.

    Entries whose random mask was 0 in the last forward keep their weight and optimiser
    state (momentum) unchanged through ``optimizer.step``, i.e. ``W <- W - lr * Z * update``.
    Off by default: the clean reading masks only the gradient (through the forward pass).
    """

    def tensor_states(weight: torch.Tensor) -> list[torch.Tensor]:
        state = optimizer.state.get(weight, {})
        return [v for v in state.values() if torch.is_tensor(v) and v.shape == weight.shape]

    @torch.no_grad()
    def wrapped(step: Callable[[], Any]) -> None:
        mask = net.last_sampled_mask
        if mask is None:
            step()
            return
        weights = net.weights()
        frozen = [view == 0 for view in net.support.layer_views(mask)]
        saved_weights = [w.detach().clone() for w in weights]
        saved_states = [[v.clone() for v in tensor_states(w)] for w in weights]
        step()
        for weight, keep_old, old_weight, old_states in zip(weights, frozen, saved_weights, saved_states):
            weight.copy_(torch.where(keep_old, old_weight, weight))
            states = tensor_states(weight)
            for i, value in enumerate(states):
                value.copy_(torch.where(keep_old, old_states[i] if i < len(old_states) else torch.zeros_like(value), value))

    return wrapped
