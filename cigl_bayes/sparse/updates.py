"""Topology updates of the support: static, SET (random growth) and RigL (gradient growth).

Per layer with ``a`` active weights and ``k = ceil(alpha_t * a)``: keep the ``a - k`` active
weights of largest ``|W|``, then grow ``k`` positions among the rest (just-dropped ones are
eligible) with the largest score: ``|dL/dW_eff|`` of the current mini-batch (RigL) or a
uniform random number (SET). Counts per layer are preserved. Weights and optimizer state
(momentum, Adam moments) are zeroed everywhere except on positions active both before and
after the update: new connections start at 0 with zero momentum, dropped ones are cleared.
Layers kept dense (density 1) are skipped. The selections use ``topk(sorted=False)``
(linear-time selection) and no host syncs; per-layer Python work happens only here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .network import SparseNet
from .schedule import DropSchedule

UPDATE_RULES = ("static", "set", "rigl")


class TopologyUpdater:
    """Drop-and-grow scheduler used in a training loop, rigl-torch style::

        loss.backward()
        if updater():          # False on update steps: the optimizer step is skipped
            optimizer.step()

    Args:
        net: the ``SparseNet`` whose support is updated.
        optimizer: its optimizer (state is kept consistent with the support).
        schedule: when and how much (``DropSchedule``).
        rule: ``"static"`` (never), ``"set"`` or ``"rigl"``.
        seed: seeds SET's random growth.
        skip_step_on_update: skip the optimizer step on update iterations (RigL's code).
        reduce_grads: optional in-place reduction applied to the captured dense gradients
            before growth; under data parallelism pass
            ``cigl_bayes.train.distributed.all_reduce_mean_`` so that every rank grows from
            the gradient of the global batch (DDP does not reduce these non-leaf gradients).
    """

    def __init__(
        self,
        net: SparseNet,
        optimizer: torch.optim.Optimizer | None,
        schedule: DropSchedule,
        rule: str = "rigl",
        seed: int = 0,
        skip_step_on_update: bool = True,
        reduce_grads: Callable[[list[torch.Tensor]], None] | None = None,
    ) -> None:
        if rule not in UPDATE_RULES:
            raise ValueError(f"unknown update rule {rule!r}; choose one of {UPDATE_RULES}")
        self.net = net
        self.optimizer = optimizer
        self.schedule = schedule
        self.rule = rule
        self.seed = seed
        self.skip_step_on_update = skip_step_on_update
        self.reduce_grads = reduce_grads
        self.step = 0
        self.updates_done = 0
        self._generator: torch.Generator | None = None
        self._arm_capture()

    def _arm_capture(self) -> None:
        self.net.capture_dense_grad = self.rule == "rigl" and self.schedule.is_update(self.step)

    def __call__(self) -> bool:
        """Advance one step (after ``backward``); update the topology if due. Returns whether to step."""
        update = self.rule != "static" and self.schedule.is_update(self.step)
        if update:
            self.update(self.schedule.fraction(self.step))
        self.step += 1
        self._arm_capture()
        return not (update and self.skip_step_on_update)

    def _scores(self, layer: int, weight: torch.Tensor, grads: list[torch.Tensor] | None) -> torch.Tensor:
        if grads is not None:
            return grads[layer].detach().abs().flatten()
        if self._generator is None or self._generator.device != weight.device:
            self._generator = torch.Generator(device=weight.device).manual_seed(self.seed)
        return torch.rand(weight.numel(), device=weight.device, generator=self._generator)

    @torch.no_grad()
    def update(self, fraction: float) -> None:
        """Drop ``ceil(fraction * nnz_l)`` weights per layer and grow as many (see module doc)."""
        support = self.net.support
        grads = self.net.dense_gradients() if self.rule == "rigl" else None
        if grads is not None and self.reduce_grads is not None:
            self.reduce_grads(grads)
        for layer, (weight, mask) in enumerate(zip(self.net.weights(), support.layers())):
            active_count, numel = support.counts[layer], support.numels[layer]
            k = min(math.ceil(fraction * active_count), active_count)
            if k == 0 or active_count == numel:
                continue
            flat_w = weight.view(-1)
            active = support.layer_active_indices(layer)
            kept = active[torch.topk(flat_w[active].abs(), active_count - k, sorted=False).indices]
            scores = self._scores(layer, weight, grads)
            scores.index_fill_(0, kept, -math.inf)
            grown = torch.topk(scores, k, sorted=False).indices
            before = mask.clone()
            support.set_layer(layer, torch.cat([kept, grown]))
            survivors = (before & mask).to(weight.dtype)
            weight.mul_(survivors)
            if self.optimizer is not None:
                for value in self.optimizer.state.get(weight, {}).values():
                    if torch.is_tensor(value) and value.shape == weight.shape:
                        value.mul_(survivors)
        self.net.topology_changed()
        self.updates_done += 1

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"step": self.step, "updates_done": self.updates_done}
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.updates_done = state["updates_done"]
        if "generator" in state:
            weight = self.net.weights()[0]
            self._generator = torch.Generator(device=weight.device)
            self._generator.set_state(state["generator"])
        self._arm_capture()
