r"""FLOPs accounting as in the RigL paper's tables (Evci et al., 2020, Appendix H).

Conventions (all of them, in one place):

* Only conv and linear layers (``sparse.masks.MASKABLE_TYPES``) are counted; biases, batch
  norm, activations, pooling, the random-mask sampling and other element-wise work are ignored,
  as in the RigL paper. A conv / linear layer a ``SparseNet`` leaves unmasked (``exclude=``) is
  counted dense in every forward (``unmasked_macs``).
* One multiply-accumulate (MAC) is 2 FLOPs. A layer's dense cost per example is

  .. math::

      \mathrm{MACs}_\mathrm{conv} = C_\mathrm{out} H_\mathrm{out} W_\mathrm{out}
          \cdot \tfrac{C_\mathrm{in}}{g} k_h k_w, \qquad
      \mathrm{MACs}_\mathrm{linear} = \tfrac{\#\mathrm{outputs}}{\mathrm{batch}} \cdot d_\mathrm{in},

  with output sizes measured by forward hooks on one example input (zeros; no random numbers).
* A sparse layer costs its dense cost times its density :math:`d_l = \mathrm{nnz}_l / n_l`, so a
  network's forward cost is :math:`f = 2\sum_l d_l\,\mathrm{MACs}_l` and the dense one
  :math:`f_D = 2\sum_l \mathrm{MACs}_l`.
* Training: backward :math:`\approx 2\times` forward, so a sparse step costs :math:`3 f_S` and a
  dense one :math:`3 f_D`. On a RigL update step the weight gradient is computed densely:
  :math:`2 f_S + f_D` (forward + activation gradients sparse, weight gradient dense). The RigL
  paper averages this over an update cycle of :math:`\Delta T` sparse steps plus one update step:

  .. math::

      f_\mathrm{RigL} = \frac{3 f_S \Delta T + 2 f_S + f_D}{\Delta T + 1}.

  Runs here count exactly: of :math:`T` steps, the :math:`U` steps with :math:`0 < t < T_\mathrm{end}`
  and :math:`t \bmod \Delta T = 0` cost :math:`2 f_S + f_D`, the rest :math:`3 f_S`, i.e.
  training FLOPs :math:`= 3 f_S T + U (f_D - f_S)`, reported as a fraction of :math:`3 f_D T`.
  SET and static: :math:`3 f_S`; dense: :math:`3 f_D` (fraction 1).
* The random mask (CigL, RigL+WDP) is not credited in ``training_fraction``: the forward multiplies
  the support's weights by the mask, so a kernel over the support still computes the dropped
  weights. ``training_fraction_mask_skipped`` gives the cost if a kernel skipped them (sparse
  forward/backward at density :math:`d_l (1 - p)`, RigL's dense weight gradient unchanged).
* Inference: one forward of the final predictive's network(s) with their actual non-zero weights
  per layer (an ensemble costs the sum of its members; MC sample counts are not multiplied in),
  as a fraction of one dense forward :math:`f_D`. Pilot runs (drop rate ``auto``) and
  weight-averaging BN passes are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .sparse.masks import MASKABLE_TYPES, maskable_weight_names


def _plain(model: nn.Module) -> nn.Module:
    return model.unwrap() if hasattr(model, "unwrap") else model


def _masked_names(model: nn.Module) -> list[str]:
    """The model's maskable weights: a ``SparseNet``'s own list (its ``include`` / ``exclude``
    choice), else the default rule (``maskable_weight_names``)."""
    return list(model.weight_names) if hasattr(model, "support") else maskable_weight_names(_plain(model))


def _macs_by_weight(model: nn.Module, input_shape: Sequence[int]) -> tuple[dict[str, nn.Parameter], dict[int, int]]:
    """(parameters of the plain net by name, dense MACs per example keyed by ``id(weight)``) of every
    Linear / Conv module the forward calls (a weight used by several modules sums their MACs)."""
    net = model.module if hasattr(model, "support") else _plain(model)
    modules = [m for _, m in net.named_modules() if isinstance(m, MASKABLE_TYPES)]
    outputs: dict[int, int] = {}

    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        outputs[id(module)] = output.numel()  # batch of 1

    handles = [m.register_forward_hook(hook) for m in modules]
    modes = {m: m.training for m in net.modules()}
    param = next(net.parameters())
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    macs: dict[int, int] = {}
    for m in modules:
        if id(m) not in outputs:
            continue
        if isinstance(m, nn.Linear):
            count = outputs[id(m)] * m.in_features
        else:  # conv: each output element sums C_in/groups * prod(kernel) products
            count = outputs[id(m)] * (m.weight.shape[1] * m.weight[0, 0].numel())
        macs[id(m.weight)] = macs.get(id(m.weight), 0) + count
    return dict(net.named_parameters()), macs


def _weight_macs(model: nn.Module, input_shape: Sequence[int]) -> tuple[list[str], list[int], int]:
    """(the model's maskable weight names, their dense MACs per example in that order, the dense MACs
    of the Linear / Conv layers left unmasked), from one hooked forward; refuses maskable weights that
    no Linear / Conv module computes."""
    params, macs = _macs_by_weight(model, input_shape)
    names = _masked_names(model)
    uncounted = [name for name in names if id(params[name]) not in macs]
    if uncounted:
        raise ValueError(
            f"FLOPs are counted for Linear / Conv layers called as modules; {uncounted[:3]} (e.g. attention "
            "projections, HF Conv1D) are not, so this model's FLOPs fractions cannot be given"
        )
    masked = {id(params[name]) for name in names}
    return names, [macs[id(params[name])] for name in names], sum(c for k, c in macs.items() if k not in masked)


def layer_macs(model: nn.Module, input_shape: Sequence[int]) -> list[int]:
    """Dense MACs per example of each maskable weight, in the model's weight order (a ``SparseNet``'s
    ``weight_names``, i.e. its support order, else ``maskable_weight_names``).

    Output sizes are measured with forward hooks on one all-zeros example of ``input_shape``
    (no batch dimension) in eval mode under ``no_grad``; no random numbers are drawn and the
    module's train/eval flags are restored. Linear / Conv layers left unmasked are in
    ``unmasked_macs``.
    """
    return _weight_macs(model, input_shape)[1]


def unmasked_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Dense MACs per example of the Linear / Conv layers whose weight is not masked (e.g. left out
    by a ``SparseNet``'s ``exclude``): they run dense in every forward, sparse training or not.
    Refuses the same models as ``layer_macs``."""
    return _weight_macs(model, input_shape)[2]


def forward_flops(macs: Sequence[int], densities: Sequence[float] | None = None) -> float:
    r"""Forward FLOPs :math:`2 \sum_l d_l \mathrm{MACs}_l` (dense when ``densities`` is None)."""
    if densities is None:
        densities = [1.0] * len(macs)
    if len(densities) != len(macs):
        raise ValueError(f"{len(densities)} densities for {len(macs)} layers")
    return 2.0 * sum(float(d) * m for d, m in zip(densities, macs))


def rigl_paper_step_flops(f_sparse: float, f_dense: float, update_every: int) -> float:
    r"""The RigL paper's average training FLOPs per step,
    :math:`(3 f_S \Delta T + 2 f_S + f_D) / (\Delta T + 1)`."""
    return (3.0 * f_sparse * update_every + 2.0 * f_sparse + f_dense) / (update_every + 1)


def update_steps(total_steps: int, end_step: int, update_every: int) -> int:
    """Number of steps ``t < total_steps`` with ``0 < t < end_step`` and ``t % update_every == 0``."""
    return len(range(update_every, min(end_step, total_steps), update_every))


def training_flops(f_sparse: float, f_dense: float, total_steps: int, dense_grad_steps: int = 0) -> float:
    r"""Total training FLOPs :math:`3 f_S T + U (f_D - f_S)`: ``T`` steps of sparse forward +
    backward, of which ``U = dense_grad_steps`` (RigL's updates) compute a dense weight gradient
    (:math:`2 f_S + f_D` instead of :math:`3 f_S`)."""
    return 3.0 * f_sparse * total_steps + dense_grad_steps * (f_dense - f_sparse)


def _nonzero_densities(model: nn.Module, names: Sequence[str]) -> list[float]:
    params = dict(_plain(model).named_parameters())
    return [int(torch.count_nonzero(params[n])) / params[n].numel() for n in names]


def run_flops(parts: Any, networks: Sequence[nn.Module], input_shape: Sequence[int]) -> dict[str, Any]:
    """The ``flops`` record of a finished run (see the module doc for the conventions).

    ``parts`` is ``methods.Assembled`` after training; ``networks`` the final predictive's
    networks (``Predictive.networks()``).
    """
    names, macs, rest = _weight_macs(parts.model, input_shape)
    dense_rest = 2.0 * rest  # unmasked conv / linear layers: dense always
    f_dense = forward_flops(macs) + dense_rest
    f_infer = sum(forward_flops(macs, _nonzero_densities(n, names)) + dense_rest for n in networks)
    record: dict[str, Any] = {"inference_fraction": f_infer / f_dense, "dense_inference_flops": f_dense,
                              "inference_flops": f_infer, "networks": len(networks), "convention": "2 FLOPs/MAC, conv+linear only, backward = 2x forward"}
    support = getattr(parts.model, "support", None)
    gate = getattr(parts.trainer, "gate", None)
    if support is None or gate is None:  # dense training
        record.update(training_fraction=1.0, dense_training_flops_per_step=3.0 * f_dense)
        return record
    densities = [c / n for c, n in zip(support.counts, support.numels)]
    f_sparse = forward_flops(macs, densities) + dense_rest
    steps = gate.step
    sched = gate.schedule
    dense_grads = update_steps(steps, sched.end_step, sched.update_every) if gate.rule == "rigl" else 0
    total = training_flops(f_sparse, f_dense, steps, dense_grads)
    dense_total = 3.0 * f_dense * steps
    record.update(training_fraction=total / dense_total if steps else 3.0 * f_sparse / (3.0 * f_dense),
                  dense_training_flops_per_step=3.0 * f_dense, sparse_forward_flops=f_sparse,
                  steps=steps, dense_gradient_steps=dense_grads)
    mask = getattr(parts.model, "random_mask", None)
    if mask is not None and steps:
        keep = 1.0 - float(mask.drop_rate)
        f_masked = forward_flops(macs, [d * keep for d in densities]) + dense_rest
        record["training_fraction_mask_skipped"] = (3.0 * f_masked * steps + dense_grads * (f_dense - f_masked)) / dense_total
    return record
