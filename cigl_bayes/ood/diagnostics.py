r"""Per-epoch diagnostics of unknown-class (MOON) training: is the mechanism acting?

For the per-example MOON loss (``moon.py``, spec §2) :math:`\ell = h\,w` with
:math:`h = -\log p_y`, :math:`p = p_{K+1}` (softmax over the :math:`K+1` logits :math:`z`),
:math:`q = \min(p, 1 - 10^{-7})`, :math:`c = 1[\arg\max_j z_j \ne y]` (no gradient) and
:math:`w = 1 + c\,\alpha / (1 + \alpha q)`, the gradient with respect to the unknown logit is

.. math::
    \frac{\partial \ell}{\partial z_{K+1}}
      = \bigl(p - 1[y = K+1]\bigr)\, w
        \;-\; h\, c\, \frac{\alpha^2}{(1 + \alpha q)^2}\, p (1 - p)\, 1[p \le 1 - 10^{-7}]

(:math:`\partial h/\partial z_{K+1} = p - 1[y=K+1]`, :math:`\partial q/\partial z_{K+1} = p(1-p)`
below the clamp, :math:`\partial w/\partial q = -c\alpha^2/(1+\alpha q)^2`). Labels are never
:math:`K+1`, so correctly classified examples (:math:`c = 0`) always have a positive gradient
(gradient descent pushes their unknown logit *down*); a misclassified one is pushed *up*
(negative gradient) exactly when :math:`h > w (1+\alpha q)^2 / (\alpha^2 (1-q))`
(:func:`cigl_bayes.ood.moon.unknown_gradient_threshold`). The warm-up's plain cross-entropy is
the loss at :math:`\alpha = 0` (:math:`w = 1`), which never pushes the unknown logit up.

:class:`MoonDiagnostics` observes the detached logits of every training batch the loss sees
(through the MOON objective, or the loss function of plain :math:`K+1` cross-entropy, where
:math:`\alpha = 0` throughout) and is an epoch hook of the trainer. Per epoch it records

* ``train_error``: fraction of training examples with :math:`\arg\max` over all :math:`K+1`
  outputs :math:`\ne y`;
* ``pushes_unknown_up``: fraction of training examples with :math:`\partial\ell/\partial z_{K+1} < 0`;
* ``mean_q["train"]``: mean unknown probability :math:`p_{K+1}` over those examples;
* ``mean_q[name]`` for the ID test split (``"test"``) and each OOD set (``"ood:NAME"``): the mean
  :math:`p_{K+1}` of the *current iterate* (the network being trained, in eval mode, at the end
  of the epoch -- not the late weight average that is finally evaluated) on at most
  ``max_examples`` examples per set (a fixed seeded subset);
* ``alpha``: the :math:`\alpha` the loss used in that epoch (0 during the warm-up).

The training statistics come from the training-mode forward passes of the epoch (augmentation,
random mask, dropout, the weights changing from step to step), summed on the device and read once
per epoch together with the evaluation (one host sync per epoch).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .moon import Q_MAX, AlphaSchedule, loss_terms

DEFAULT_MAX_EXAMPLES = 256  # per evaluation set; on digits (1078 training examples) 512 doubles an epoch


def unknown_logit_gradient(logits: Tensor, targets: Tensor, alpha: float | Tensor) -> Tensor:
    r"""Per-example :math:`\partial (h_i w_i) / \partial z_{i,K+1}` of the MOON loss, in closed form
    (formula in the module docstring; the batch mean divides it by ``B``, which keeps the sign).

    ``logits``: ``(B, K+1)``, the last column "unknown"; ``alpha = 0`` gives plain cross-entropy.
    """
    with torch.no_grad():
        log_probs, h, q = loss_terms(logits, targets)
        p = log_probs[:, -1].exp()
        one_minus_p = log_probs[:, :-1].logsumexp(-1).exp()  # 1 - p, accurate when p is near 1
        wrong = (logits.argmax(-1) != targets).to(logits.dtype)
        alpha = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device)
        weight = 1.0 + wrong * alpha / (1.0 + alpha * q)
        dq = torch.where(p <= Q_MAX, p * one_minus_p, torch.zeros_like(p))  # the clamp stops the gradient
        dh = p - (targets == logits.shape[-1] - 1).to(logits.dtype)
        return dh * weight - h * wrong * alpha**2 * dq / (1.0 + alpha * q) ** 2


class MoonDiagnostics:
    """Per-epoch diagnostics of unknown-class training (see the module docstring for what and how).

    Args:
        model: the network being trained (``K+1`` outputs); evaluated at each epoch's end.
        eval_sets: inputs whose mean unknown probability is recorded per epoch (``"test"``,
            ``"ood:NAME"``, ...); more can be added with :meth:`add_eval_sets`.
        schedule: the MOON objective's ``AlphaSchedule``, if any: under data parallelism its
            ``reduce_stat`` (set by ``cigl_bayes.train.distributed.distribute``) averages the
            training sums over ranks, so the fractions are those of the global batch (without
            it they are the rank's own).
        max_examples: at most this many examples per evaluation set (a seeded random subset).
        batch_size: evaluation batch size.
        seed: seed of the subsets.

    It sees the training batches through :meth:`attach` (the MOON objective's ``observer``, or a
    wrapped ``loss_fn(logits, y)`` for plain ``K+1`` cross-entropy) and is an ``EpochHook`` of the
    trainer (``on_epoch_end``, ``state_dict``, ``load_state_dict``); the state is the history, so
    a resumed run continues it exactly.
    """

    def __init__(self, model: nn.Module, eval_sets: Mapping[str, Tensor] | None = None, schedule: AlphaSchedule | None = None,
                 max_examples: int = DEFAULT_MAX_EXAMPLES, batch_size: int = 512, seed: int = 0) -> None:
        if max_examples < 1 or batch_size < 1:
            raise ValueError(f"max_examples and batch_size must be >= 1, got {max_examples}, {batch_size}")
        self.model = model
        self.schedule = schedule
        self.max_examples, self.batch_size, self.seed = max_examples, batch_size, seed
        self.sets: dict[str, Tensor] = {}
        self.history: dict[str, Any] = {"epoch": [], "alpha": [], "train_error": [], "pushes_unknown_up": [],
                                        "mean_q": {"train": []}}
        self._sums: Tensor | None = None  # [wrong, pushed up, sum of q], on the device
        self._count = 0
        self._alpha: Tensor | None = None
        self.add_eval_sets(eval_sets or {})

    def attach(self, objective: Any, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
        """Observe the training batches: through ``objective.observer`` (a ``MoonObjective``) if it
        has one, else by wrapping ``loss_fn`` (returned; plain ``K+1`` cross-entropy, alpha 0)."""
        if hasattr(objective, "observer"):
            objective.observer = self.observe
            return loss_fn

        def observed(logits: Tensor, targets: Tensor) -> Tensor:
            self.observe(logits.detach(), targets, None)
            return loss_fn(logits, targets)

        return observed

    def add_eval_sets(self, sets: Mapping[str, Tensor]) -> None:
        """Record the mean unknown probability on ``sets`` too (each capped at ``max_examples``)."""
        for name, x in sets.items():
            if name == "train":
                raise ValueError("'train' is the training batches' entry; name the set differently")
            if x.shape[0] > self.max_examples:
                generator = torch.Generator().manual_seed(self.seed)
                x = x[torch.randperm(x.shape[0], generator=generator)[: self.max_examples].to(x.device)]
            self.sets[name] = x
            self._column(name)

    def _column(self, name: str) -> list[float | None]:
        """The history of ``mean_q[name]``, padded with ``None`` for epochs recorded before it existed."""
        column = self.history["mean_q"].setdefault(name, [])
        column.extend([None] * (len(self.history["epoch"]) - len(column)))
        return column

    def observe(self, logits: Tensor, targets: Tensor, alpha: Tensor | None) -> None:
        """Fold a training batch (the objective's detached logits, labels, ``alpha`` or ``None``
        during the warm-up) into the epoch's sums, on the device (no host sync)."""
        with torch.no_grad():
            logits = logits.detach().float()
            a = alpha if alpha is not None else 0.0
            wrong = (logits.argmax(-1) != targets).sum()
            up = (unknown_logit_gradient(logits, targets, a) < 0).sum()
            q = logits.softmax(-1)[:, -1].sum()
            batch = torch.stack([wrong.float(), up.float(), q])
            self._sums = batch if self._sums is None else self._sums + batch
            self._count += targets.shape[0]
            self._alpha = None if alpha is None else torch.as_tensor(alpha, device=logits.device).detach().float().reshape(())

    @torch.no_grad()
    def mean_unknown_probability(self, x: Tensor) -> Tensor:
        """Mean :math:`p_{K+1}` of the current model (eval mode) on ``x``, a device scalar."""
        was_training = self.model.training
        self.model.eval()
        try:
            total = sum(self.model(x[i:i + self.batch_size]).float().softmax(-1)[:, -1].sum()
                        for i in range(0, x.shape[0], self.batch_size))
        finally:
            self.model.train(was_training)
        return torch.as_tensor(total, dtype=torch.float32) / max(1, x.shape[0])

    def on_epoch_end(self, epoch: int) -> None:
        """Append this epoch's entry (one host read) and reset the training sums."""
        if self._sums is None:
            raise RuntimeError("MoonDiagnostics saw no training batch this epoch (see MoonDiagnostics.attach)")
        sums = self._sums.clone()
        reduce_stat = getattr(self.schedule, "reduce_stat", None)
        if reduce_stat is not None:  # mean over ranks of equal-size shards: the ratios are global
            reduce_stat([sums])
        device = sums.device
        evaluated = [self.mean_unknown_probability(x).to(device) for x in self.sets.values()]
        alpha = self._alpha if self._alpha is not None else torch.zeros((), device=device)
        values = torch.cat([sums / self._count, torch.stack([alpha.to(device), *evaluated])]).tolist()
        error, up, q_train, alpha_value, *q_sets = values
        h = self.history
        new = {"train": q_train, **dict(zip(self.sets, q_sets))}
        for name in {**h["mean_q"], **new}:  # None where a set is not evaluated (e.g. a resumed run's older sets)
            self._column(name).append(new.get(name))
        h["epoch"].append(epoch + 1)
        h["alpha"].append(alpha_value)
        h["train_error"].append(error)
        h["pushes_unknown_up"].append(up)
        self._sums, self._count, self._alpha = None, 0, None

    def report(self) -> dict[str, Any]:
        """The history (lists per epoch; ``epoch`` is 1-based) plus how the sets were evaluated
        (``eval_examples``: examples per evaluated set)."""
        return {**_copy(self.history), "eval_examples": {name: int(x.shape[0]) for name, x in self.sets.items()},
                "eval_model": "current iterate (not the averaged model)"}

    def state_dict(self) -> dict[str, Any]:
        return {"history": _copy(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = _copy(state["history"])
        for name in self.sets:
            self._column(name)
        self._sums, self._count, self._alpha = None, 0, None


def _copy(history: dict[str, Any]) -> dict[str, Any]:
    return {k: ({n: list(c) for n, c in v.items()} if isinstance(v, dict) else list(v)) for k, v in history.items()}


def plot_moon_diagnostics(history: Mapping[str, Any], path: str | os.PathLike | None = None, title: str | None = None,
                          *, axes: Any = None) -> Any:
    """One figure, four panels over epochs: training error (K+1), fraction pushing the unknown
    logit up, mean unknown probability on train / test / each OOD set, and alpha. Writes a PNG to
    ``path`` when given.

    ``axes``: four of the caller's matplotlib ``Axes`` to draw into instead of a new figure
    (``title`` then titles their figure). Returns ``axes``' figure when ``axes`` is given, else
    the path when ``path`` is given, else the new figure."""
    from .._plotting import as_axes, finish, new_figure  # matplotlib loads only when plotting

    if axes is None:
        fig = new_figure(figsize=(13.0, 3.2), layout="constrained")
        panels_ax = list(fig.subplots(1, 4))
    else:
        panels_ax = as_axes(axes, 4)
        fig = panels_ax[0].figure
    epochs = list(history["epoch"])
    panels = [("training error (argmax over K+1)", {"train": history["train_error"]}),
              ("fraction pushing unknown logit up", {"train": history["pushes_unknown_up"]}),
              ("mean unknown probability q", dict(history["mean_q"])),
              ("alpha", {"alpha": history["alpha"]})]
    for ax, (label, series) in zip(panels_ax, panels):
        for name, values in series.items():
            ax.plot(epochs, [float("nan") if v is None else v for v in values], marker=".", label=name)
        ax.set_title(label, fontsize="medium")
        ax.set_xlabel("epoch")
    panels_ax[2].legend(fontsize="x-small")
    if title:
        fig.suptitle(title)
    return finish(fig, path, axes is not None, dpi=110)
