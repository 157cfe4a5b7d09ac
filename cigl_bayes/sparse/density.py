"""Per-layer densities (ERK, uniform) and exact per-layer non-zero counts.

ERK (Erdos-Renyi-Kernel, Evci et al. 2020): layer ``l`` with shape ``s_l`` gets the raw
score ``r_l = sum(s_l) / prod(s_l)`` and density ``min(1, eps * r_l)``, with ``eps`` solved so
that ``sum_l min(1, eps r_l) N_l = d * sum_l N_l``. Layers that would exceed density 1 are
made dense and ``eps`` is re-solved over the rest.

Counts are exact: the target total ``round(d * sum_l N_l)`` is split over layers by the
largest-remainder method, so the global density is within one weight of the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

DISTRIBUTIONS = ("erk", "uniform")


def check_density(density: float) -> float:
    """Return ``density`` as a float, or raise ``ValueError`` if it is outside (0, 1]."""
    density = float(density)
    if not (0.0 < density <= 1.0) or math.isnan(density):
        raise ValueError(
            f"density must be in (0, 1] (fraction of weights kept), got {density}; "
            "e.g. --density 0.1 keeps 10 % of the weights"
        )
    return density


def erk_densities(shapes: Sequence[Sequence[int]], density: float) -> list[float]:
    """ERK layer densities for weight tensors of the given shapes (see module docstring)."""
    density = check_density(density)
    numels = [math.prod(s) for s in shapes]
    raw = [sum(s) / n for s, n in zip(shapes, numels)]
    target = density * sum(numels)
    dense: set[int] = set()
    while True:
        budget = target - sum(numels[i] for i in dense)
        denom = sum(raw[i] * numels[i] for i in range(len(shapes)) if i not in dense)
        if denom <= 0:
            return [1.0] * len(shapes)
        eps = budget / denom
        over = [i for i in range(len(shapes)) if i not in dense and eps * raw[i] > 1.0]
        if not over:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense.update(over)


def uniform_densities(shapes: Sequence[Sequence[int]], density: float) -> list[float]:
    """The same density for every layer."""
    return [check_density(density)] * len(shapes)


def exact_counts(numels: Sequence[int], layer_densities: Sequence[float], density: float) -> list[int]:
    """Integer non-zero counts per layer summing exactly to ``round(density * sum(numels))``.

    Starts from ``floor(p_l N_l)`` and hands the remaining weights to the layers with the
    largest fractional parts (never above ``N_l``).
    """
    total = round(check_density(density) * sum(numels))
    ideal = [min(1.0, p) * n for p, n in zip(layer_densities, numels)]
    counts = [min(n, math.floor(x)) for x, n in zip(ideal, numels)]
    order = sorted(range(len(numels)), key=lambda i: ideal[i] - counts[i], reverse=True)
    missing = total - sum(counts)
    while missing > 0:
        progressed = False
        for i in order:
            if missing == 0:
                break
            if counts[i] < numels[i]:
                counts[i] += 1
                missing -= 1
                progressed = True
        if not progressed:
            break
    for i in reversed(order):  # only when rounding overshot: take from the smallest remainders
        if missing >= 0:
            break
        if counts[i] > 0:
            counts[i] -= 1
            missing += 1
    return counts


def layer_counts(shapes: Sequence[Sequence[int]], density: float, distribution: str = "erk") -> list[int]:
    """Exact non-zero counts per layer for a global ``density`` under ``distribution``."""
    if distribution == "erk":
        probs = erk_densities(shapes, density)
    elif distribution == "uniform":
        probs = uniform_densities(shapes, density)
    else:
        raise ValueError(f"unknown density distribution {distribution!r}; choose one of {DISTRIBUTIONS}")
    return exact_counts([math.prod(s) for s in shapes], probs, density)
