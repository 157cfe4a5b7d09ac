"""OOD detection metrics (in-distribution = positive class, score S: larger = more ID).

All metrics are computed from the exact empirical ROC / precision-recall curves with the
scikit-learn conventions: examples are sorted by score (descending) and every *distinct* score
value is one operating point, so tied scores enter or leave together (no tie-breaking by order).

* ``auroc``   = ``sklearn.metrics.roc_auc_score`` (trapezoid over the ROC points).
* ``fpr_at_tpr`` = FPR at the first operating point (largest threshold) whose TPR >= ``tpr``,
  over *all* distinct thresholds (= ``roc_curve(..., drop_intermediate=False)``; identical to
  OpenOOD's default ``roc_curve`` whenever scores are untied).
* ``aupr_in`` = ``average_precision_score`` with ID positive, score S.
* ``aupr_out`` = ``average_precision_score`` with OOD positive, score -S.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..names import NEAR_OOD_PREFIX

__all__ = ["aupr_in", "aupr_out", "auroc", "fpr_at_tpr", "near_far_means", "ood_report"]


def _as_scores(x: Any, what: str) -> Tensor:
    """1-D, non-empty, finite float64 CPU tensor."""
    t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(x)
    if t.dim() != 1:
        raise ValueError(f"{what} must be a 1-D tensor of scores, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{what} is empty; need at least one score")
    t = t.to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contains non-finite values (NaN/inf)")
    return t


def _curve(score_pos: Any, score_neg: Any, names: tuple[str, str]) -> tuple[Tensor, Tensor, int, int]:
    """Cumulative (tps, fps) counts at each distinct threshold, in decreasing-threshold order."""
    pos = _as_scores(score_pos, names[0])
    neg = _as_scores(score_neg, names[1])
    scores = torch.cat([pos, neg])
    labels = torch.cat([torch.ones(len(pos), dtype=torch.float64), torch.zeros(len(neg), dtype=torch.float64)])
    order = torch.argsort(scores, descending=True, stable=True)
    scores, labels = scores[order], labels[order]
    # last index of each run of equal scores = one operating point
    ends = torch.nonzero(scores[1:] != scores[:-1]).flatten()
    ends = torch.cat([ends, torch.tensor([len(scores) - 1])])
    tps = torch.cumsum(labels, 0)[ends]
    fps = (ends + 1).to(torch.float64) - tps
    return tps, fps, len(pos), len(neg)


def _auroc(tps: Tensor, fps: Tensor, p: int, n: int) -> float:
    zero = torch.zeros(1, dtype=torch.float64)
    tpr = torch.cat([zero, tps / p])
    fpr = torch.cat([zero, fps / n])
    return float(torch.trapezoid(tpr, fpr))


def _fpr_at(tps: Tensor, fps: Tensor, p: int, n: int, tpr: float) -> float:
    reached = torch.nonzero(tps / p >= tpr).flatten()  # non-empty: the last point has TPR = 1
    return float(fps[reached[0]] / n)


def _average_precision(tps: Tensor, fps: Tensor, p: int) -> float:
    precision = tps / (tps + fps)
    recall_step = torch.diff(tps, prepend=torch.zeros(1, dtype=torch.float64)) / p
    return float((recall_step * precision).sum())


def auroc(score_id: Tensor, score_ood: Tensor) -> float:
    """Area under the ROC curve (ID positive); 0.5 = chance, 1 = perfect separation."""
    return _auroc(*_curve(score_id, score_ood, ("score_id", "score_ood")))


def check_tpr(tpr: float) -> float:
    """``tpr`` as a float in (0, 1], else a ValueError naming the fix."""
    t = float(tpr)
    if not 0.0 < t <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr!r}; pass e.g. tpr=0.95.")
    return t


def fpr_at_tpr(score_id: Tensor, score_ood: Tensor, tpr: float = 0.95) -> float:
    """Fraction of OOD accepted at the largest threshold that accepts >= ``tpr`` of ID (FPR95)."""
    return _fpr_at(*_curve(score_id, score_ood, ("score_id", "score_ood")), check_tpr(tpr))


def aupr_in(score_id: Tensor, score_ood: Tensor) -> float:
    """Average precision with ID as the positive class and score S."""
    tps, fps, p, _ = _curve(score_id, score_ood, ("score_id", "score_ood"))
    return _average_precision(tps, fps, p)


def aupr_out(score_id: Tensor, score_ood: Tensor) -> float:
    """Average precision with OOD as the positive class and score -S."""
    s_id = _as_scores(score_id, "score_id")
    s_ood = _as_scores(score_ood, "score_ood")
    tps, fps, p, _ = _curve(-s_ood, -s_id, ("score_ood", "score_id"))
    return _average_precision(tps, fps, p)


def ood_report(score_id: Tensor, score_ood: Tensor) -> dict[str, float]:
    """``{"auroc", "fpr95", "aupr_in", "aupr_out"}`` for one ID/OOD pair (one sort per direction)."""
    tps, fps, p, n = _curve(score_id, score_ood, ("score_id", "score_ood"))
    s_id = _as_scores(score_id, "score_id")
    s_ood = _as_scores(score_ood, "score_ood")
    tps_o, fps_o, p_o, _ = _curve(-s_ood, -s_id, ("score_ood", "score_id"))
    return {
        "auroc": _auroc(tps, fps, p, n),
        "fpr95": _fpr_at(tps, fps, p, n, 0.95),
        "aupr_in": _average_precision(tps, fps, p),
        "aupr_out": _average_precision(tps_o, fps_o, p_o),
    }


def near_far_means(reports: Mapping[str, Mapping[str, float]], near_prefix: str = NEAR_OOD_PREFIX) -> dict[str, dict[str, float]]:
    """Mean of every metric over the near-OOD sets (names starting with ``near_prefix``: held-out
    classes) and over the far-OOD sets (the rest): ``{"near": {...}, "far": {...}}``, a group only
    where it has sets."""
    near = [name for name in reports if name.startswith(near_prefix)]
    groups = {"near": near, "far": [name for name in reports if name not in near]}
    return {group: {m: sum(reports[n][m] for n in names) / len(names) for m in reports[names[0]]}
            for group, names in groups.items() if names}
