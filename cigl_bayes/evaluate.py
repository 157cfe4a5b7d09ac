"""One evaluator for any trained model: logits, MC predictive, measured density, metrics."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from .cigl.averaging import batches_of
from .metrics import calibration_report
from .sparse.masks import maskable_weight_names


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Eval-mode logits of ``model`` on ``x`` (no random mask, no dropout)."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(b) for b in batches_of(x, batch_size)])
    model.train(was_training)
    return logits


@contextmanager
def mc_sampling(model: nn.Module) -> Iterator[None]:
    """Inside: eval mode (BatchNorm running statistics) with the stochastic parts on -- fresh
    ``SparseNet`` random masks and active ``nn.Dropout``; the training flag is restored after."""
    was_training = model.training
    model.eval()
    try:
        with ExitStack() as stack:
            if hasattr(model, "sampling_masks"):
                stack.enter_context(model.sampling_masks(True))
            for m in model.modules():
                if isinstance(m, nn.modules.dropout._DropoutNd):
                    m.train()
            yield
    finally:
        model.train(was_training)  # restores dropout modules too


@torch.no_grad()
def mc_predict_probs(model: nn.Module, x: torch.Tensor, samples: int, batch_size: int = 1024) -> torch.Tensor:
    """MC predictive ``(1/T) sum_t softmax(f(x; W_t))`` under :func:`mc_sampling` (a running mean)."""
    if samples < 1:
        raise ValueError(f"MC samples must be >= 1, got {samples}")
    mean = torch.zeros(0)
    with mc_sampling(model):
        for t in range(samples):
            probs = torch.cat([model(b).softmax(-1) for b in batches_of(x, batch_size)])
            mean = probs if t == 0 else mean.lerp_(probs, 1.0 / (t + 1))
    return mean


@torch.no_grad()
def measured_density(model: nn.Module) -> float:
    """Fraction of non-zero entries over all conv/linear weights as used in eval-mode forward."""
    if hasattr(model, "masked_weights"):
        was_sampling, was_training, model.sampling = model.sampling, model.training, False
        model.eval()
        weights = model.masked_weights(sample=False)
        model.sampling = was_sampling
        model.train(was_training)
    else:
        params = dict(model.named_parameters())
        weights = [params[n] for n in maskable_weight_names(model)]
    nonzero = sum(int(torch.count_nonzero(w)) for w in weights)
    return nonzero / sum(w.numel() for w in weights)


def evaluate_probs(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, ECE (10/15 bins, adaptive), MCE, NLL, Brier, classwise ECE."""
    return calibration_report(probs.float().cpu(), labels.cpu())


def evaluate_log_probs(log_probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``evaluate_probs`` of ``exp(log_probs)``, with the NLL read exactly from ``log_probs``."""
    log_probs = log_probs.cpu()
    return calibration_report(log_probs.exp().float(), labels.cpu(), log_probs=log_probs)
