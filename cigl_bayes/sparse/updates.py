"""Topology updates of the support: static, SET (random growth) and RigL (gradient growth).

Per layer with ``a`` active weights and ``k = ceil(alpha_t * a)``: keep the ``a - k`` active
weights of largest ``|W|``, then grow ``k`` positions among the rest (just-dropped ones are
eligible) with the largest score: ``|dL/dW_eff|`` of the current mini-batch (RigL) or a
uniform random number (SET). Counts per layer are preserved. Weights and optimizer state
(momentum, Adam moments) are zeroed everywhere except on positions active both before and
after the update: new connections start at 0 with zero momentum, dropped ones are cleared.
Layers kept dense (density 1) are skipped. The selections use ``topk(sorted=False)``
(linear-time selection); per-layer Python work happens only here. Off CPU there are no host
syncs. On CPU, where ``topk`` costs ~10 ns per element, the growth selection over a large layer
first narrows the candidates to the scores above a threshold read off a fixed subsample
(``top_k_indices``), which returns the same top-k set; weights and optimizer state are then
zeroed only at the positions that changed (dropped or grown), which equals zeroing everything
off the surviving support because inactive weights and their optimizer state are already 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .network import SparseNet
from .schedule import DropSchedule

UPDATE_RULES = ("static", "set", "rigl")
_SAMPLE = 4096  # subsample size of the CPU threshold pre-selection


def top_k_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the ``k`` largest entries of the 1-D ``scores`` (unordered; ``-inf`` never wins
    over a finite score). Same set as ``torch.topk(scores, k).indices`` up to ties at the boundary.

    On CPU, for large inputs and ``k << n``: take the value ``t`` of rank ``ks`` in a fixed
    subsample of ``m`` entries, ``ks = m k / n + 4 sqrt(m k / n) + 2`` (so ``#{scores >= t} >= k``
    almost always), select the top ``k`` among ``{scores >= t}`` only, and fall back to the full
    ``topk`` when fewer than ``k`` entries pass. Exact: if ``#{scores >= t} >= k`` the k-th largest
    score is ``>= t``, so every top-k entry is a candidate. Elsewhere plain ``topk`` (no host sync).
    """
    n = scores.numel()
    if scores.device.type != "cpu" or n < 4 * _SAMPLE or 8 * k > n:
        return torch.topk(scores, k, sorted=False).indices
    stride = n // _SAMPLE
    sample = scores[stride // 2 :: stride]
    expected = sample.numel() * k / n
    rank = min(sample.numel(), int(expected + 4.0 * math.sqrt(expected)) + 2)
    threshold = torch.topk(sample, rank, sorted=False).values.min()
    candidates = torch.nonzero(scores >= threshold).flatten()
    if candidates.numel() < k:
        return torch.topk(scores, k, sorted=False).indices
    return candidates[torch.topk(scores.index_select(0, candidates), k, sorted=False).indices]


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
        on_cpu = support.flat.device.type == "cpu"
        for layer, (weight, mask) in enumerate(zip(self.net.weights(), support.layers())):
            active_count, numel = support.counts[layer], support.numels[layer]
            k = min(math.ceil(fraction * active_count), active_count)
            if k == 0 or active_count == numel:
                continue
            flat_w, flat_mask = weight.view(-1), mask.view(-1)
            # on CPU a host sync is free and nonzero is ~2x faster than nonzero_static
            active = torch.nonzero(flat_mask).flatten() if on_cpu else support.layer_active_indices(layer)
            kept = active[torch.topk(flat_w.index_select(0, active).abs(), active_count - k, sorted=False).indices]
            scores = self._scores(layer, weight, grads)
            scores.index_fill_(0, kept, -math.inf)
            grown = top_k_indices(scores, k)
            # only positions in (active - kept) or grown can change state; zero those not active
            # both before and after (a just-dropped weight that is regrown keeps its value)
            changed = torch.cat([active, grown])  # a regrown position appears twice: same value written
            was_active = flat_mask.index_select(0, changed)
            support.set_layer(layer, torch.cat([kept, grown]))
            survives = (was_active & flat_mask.index_select(0, changed)).to(weight.dtype)
            flat_w.index_copy_(0, changed, flat_w.index_select(0, changed) * survives)
            if self.optimizer is not None:
                for value in self.optimizer.state.get(weight, {}).values():
                    if torch.is_tensor(value) and value.shape == weight.shape:
                        flat_v = value.view(-1) if value.is_contiguous() else value.flatten()
                        flat_v.index_copy_(0, changed, flat_v.index_select(0, changed) * survives)
                        if not value.is_contiguous():
                            value.copy_(flat_v.view_as(value))
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
