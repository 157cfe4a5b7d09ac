"""Out-of-distribution detection: MOON (unknown-aware training) and scores (larger = more in-distribution).

Metrics live in :mod:`cigl_bayes.metrics.ood`; shifted / OOD input sets in
:mod:`cigl_bayes.data.shifts`.
"""

from cigl_bayes.ood.moon import AlphaSchedule, MoonObjective, moon_loss, unknown_gradient_threshold
from cigl_bayes.ood.scores import SCORES, energy_score, entropy_score, max_logit_score, msp_score

__all__ = [
    "SCORES",
    "AlphaSchedule",
    "MoonObjective",
    "energy_score",
    "entropy_score",
    "max_logit_score",
    "moon_loss",
    "msp_score",
    "unknown_gradient_threshold",
]
