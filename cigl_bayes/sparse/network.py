"""``SparseNet``: a model whose maskable weights (``masks.maskable_weight_names``) are masked in the forward pass.

The forward pass computes ``W_eff = W * E`` for every maskable weight, where the effective
mask ``E`` is the support ``M`` (as floats) or, when a random mask is attached and the net is
training (or ``sampling`` is on), ``M * Z * scale`` with a fresh ``Z`` each call. Stored weights
are never overwritten by the random mask; gradients reach exactly the entries where ``E != 0``.
The model is called with the masked weights swapped into its parameter slots for the call (what
``torch.func.functional_call`` does; used as is under ``torch.compile``), bound to every name of a
tied weight, so both uses of an embedding tied to the output head see the same ``W * E``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn
from torch.func import functional_call

from .masks import Patterns, SupportMask, maskable_weight_names, parameter_aliases


class MaskSampler(Protocol):
    """What ``SparseNet`` needs of a random mask (see ``cigl_bayes.cigl.RandomMask``)."""

    expected_scale: float

    def sample(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``n`` values of ``Z * scale`` for the active entries."""


def _support_loaded(net: "SparseNet", incompatible_keys) -> None:
    """``load_state_dict`` post-hook: the support may have changed, invalidate derived caches."""
    net.topology_changed()


class SparseNet(nn.Module):
    """Wrap ``model`` so that its weights are sparse with exact global ``density``.

    Args:
        model: any ``nn.Module`` (a Hugging Face model too: ``net(input_ids=..., labels=...)``
            passes keyword arguments through and returns the model's own output).
        density: fraction of maskable weights kept, in (0, 1].
        distribution: ``"erk"`` or ``"uniform"`` layer densities.
        random_mask: optional ``MaskSampler`` (CigL's Bernoulli mask ``Z``).
        seed: seeds the initial random support.
        include, exclude: ``fnmatch`` globs over parameter names that add to / remove from the
            default maskable set (Linear / Conv / attention / HF ``Conv1D`` weights; see
            ``maskable_weight_names``). A tied weight is one slot, named as in ``named_parameters()``.

    Inactive stored weights are zeroed at construction, so with gradients masked in the
    forward pass they stay exactly zero under SGD (weight decay and momentum included).
    """

    def __init__(
        self,
        model: nn.Module,
        density: float,
        distribution: str = "erk",
        random_mask: MaskSampler | None = None,
        seed: int = 0,
        *,
        include: Patterns = None,
        exclude: Patterns = None,
    ) -> None:
        super().__init__()
        self.module = model
        self.weight_names = maskable_weight_names(model, include, exclude)
        aliases = parameter_aliases(model)
        self.weight_aliases = [aliases[name] for name in self.weight_names]  # every name of each (tied) weight
        self._weights: list[nn.Parameter] | None = None
        params = dict(model.named_parameters())
        shapes = [params[n].shape for n in self.weight_names]
        generator = torch.Generator().manual_seed(seed)
        self.support = SupportMask(shapes, density, distribution, generator).to(params[self.weight_names[0]].device)
        self.random_mask = random_mask
        self.sampling = False
        self.capture_dense_grad = False
        self._captured: list[torch.Tensor] | None = None
        self._support_float: torch.Tensor | None = None
        self.last_sampled_mask: torch.Tensor | None = None
        # a loaded state dict may carry another support: drop the cached float mask
        self.register_load_state_dict_post_hook(_support_loaded)
        with torch.no_grad():
            for weight, mask in zip(self.weights(), self.support.layers()):
                weight.mul_(mask)

    # ----------------------------------------------------------------- weights and masks
    def weights(self) -> list[nn.Parameter]:
        """The stored maskable weights, in support order (cached: looked up once per ``_apply``)."""
        if self._weights is None:
            params = dict(self.module.named_parameters())
            self._weights = [params[n] for n in self.weight_names]
        return self._weights

    def _apply(self, fn, recurse=True):
        self._weights = None  # .to() / .double() may replace parameter objects
        return super()._apply(fn, recurse)

    def topology_changed(self) -> None:
        """Invalidate caches derived from the support (call after editing ``support``)."""
        self._support_float = None

    def effective_mask(self, sample: bool | None = None) -> torch.Tensor:
        """Flat float mask ``E``: ``M * Z * scale`` if sampling, else ``M * E[Z * scale]``."""
        weight = self.weights()[0]
        if sample is None:
            sample = self.random_mask is not None and (self.training or self.sampling)
        if sample and self.random_mask is not None:
            active = self.support.active_indices()
            values = self.random_mask.sample(active.numel(), weight.device, weight.dtype)
            # scatter_ (indices unique) is ~2.5x cheaper than index_put_ for this scatter on CPU
            mask = torch.zeros(self.support.total, device=weight.device, dtype=weight.dtype).scatter_(0, active, values)
            self.last_sampled_mask = mask
            return mask
        if self._support_float is None or self._support_float.device != weight.device:
            self._support_float = self.support.flat.to(weight.dtype)
        scale = 1.0 if self.random_mask is None else self.random_mask.expected_scale
        return self._support_float if scale == 1.0 else self._support_float * scale

    def masked_weights(self, sample: bool | None = None) -> list[torch.Tensor]:
        """``W * E`` for every maskable weight (differentiable w.r.t. the stored ``W``)."""
        return list(torch._foreach_mul(self.weights(), self.support.layer_views(self.effective_mask(sample))))

    def masked_parameters(self, sample: bool | None = None) -> dict[str, torch.Tensor]:
        """All parameters of the wrapped model with the maskable ones replaced by ``W * E``, keyed as in
        ``named_parameters()`` (one key per tied weight; ``weight_aliases`` lists its other names)."""
        params = {name: p for name, p in self.module.named_parameters()}
        params.update(zip(self.weight_names, self.masked_weights(sample)))
        return params

    @torch.no_grad()
    def unwrap(self) -> nn.Module:
        """A plain copy of the wrapped model with the eval-mode weights ``W * M * E[Z * scale]``
        baked in: it computes exactly what this net computes in eval mode (without sampling),
        and its ``state_dict`` loads with a plain ``load_state_dict`` into a fresh instance of the
        architecture. Tied weights stay tied (``deepcopy``), so every use sees the masked tensor."""
        plain = copy.deepcopy(self.module)
        params = dict(plain.named_parameters())
        for name, weight in zip(self.weight_names, self.masked_weights(sample=False)):
            params[name].copy_(weight)
        return plain

    def forward(self, *args, **kwargs):
        return self.forward_with(self.masked_weights(), *args, **kwargs)

    def forward_with(self, masked: list[torch.Tensor], *args, **kwargs):
        """Run the wrapped model with the given per-layer masked weights (e.g. sampled by a Pyro
        guide); captures their gradients for RigL when ``capture_dense_grad`` is set."""
        if self.capture_dense_grad and torch.is_grad_enabled():
            for w in masked:
                w.retain_grad()
            self._captured = masked
        if len(masked) != len(self.weight_names):
            raise ValueError(f"forward_with needs one masked tensor per maskable weight ({len(self.weight_names)}), "
                             f"got {len(masked)}; build them with net.masked_weights()")
        if torch.compiler.is_compiling():  # dynamo traces functional_call natively
            bound = {alias: w for names, w in zip(self.weight_aliases, masked) for alias in names}
            return functional_call(self.module, bound, args, kwargs, tie_weights=False)
        # What functional_call does (swap the entries of the owning modules' ``_parameters``, restore
        # after), without its per-call name resolution, which costs ~1-2 % of a small CNN's step.
        saved = []
        try:
            for slots, w in zip(self._parameter_slots(), masked):
                for params, attr in slots:
                    saved.append((params, attr, params[attr]))
                    params[attr] = w
            return self.module(*args, **kwargs)
        finally:
            for params, attr, original in reversed(saved):
                params[attr] = original

    def _parameter_slots(self) -> list[list[tuple[dict, str]]]:
        """Per maskable weight, ``(owning module's _parameters, attribute)`` for each of its names;
        cached for the current ``weights()`` list (re-resolved after ``_apply``)."""
        weights = self.weights()
        cache = self.__dict__.get("_slots_cache")
        if cache is None or cache[0] is not weights:
            slots = []
            for names in self.weight_aliases:
                per_weight = []
                for alias in names:
                    path, _, attr = alias.rpartition(".")
                    per_weight.append((self.module.get_submodule(path)._parameters, attr))
                slots.append(per_weight)
            cache = (weights, slots)
            self.__dict__["_slots_cache"] = cache
        return cache[1]

    def dense_gradients(self) -> list[torch.Tensor]:
        """Gradients w.r.t. the *masked* weights ``W_eff`` of the last captured forward.

        These are dense (non-zero off the support) and drive RigL's growth criterion.
        """
        if self._captured is None or any(w.grad is None for w in self._captured):
            raise RuntimeError(
                "no dense gradient was captured: set net.capture_dense_grad = True before the forward "
                "pass of the step whose gradient drives the update, then call backward()"
            )
        grads = [w.grad for w in self._captured]
        self._captured = None
        return grads

    @contextmanager
    def sampling_masks(self, enabled: bool = True) -> Iterator[None]:
        """Within this block, eval-mode forwards draw fresh random masks (MC predictive)."""
        previous, self.sampling = self.sampling, enabled
        try:
            yield
        finally:
            self.sampling = previous
