"""Classification, calibration and OOD-detection metrics, and reliability diagrams.

``plot_reliability_diagram`` is imported lazily so that matplotlib loads only when used.
"""

from typing import TYPE_CHECKING

from cigl_bayes.metrics.calibration import (
    CalibrationBins,
    calibration_bins,
    calibration_report,
    classwise_ece,
    expected_calibration_error,
    maximum_calibration_error,
)
from cigl_bayes.metrics.classification import accuracy, brier_score, nll_from_log_probs, negative_log_likelihood
from cigl_bayes.metrics.ood import aupr_in, aupr_out, auroc, fpr_at_tpr, ood_report

if TYPE_CHECKING:
    from cigl_bayes.metrics.plots import plot_reliability_diagram

__all__ = [
    "CalibrationBins",
    "accuracy",
    "aupr_in",
    "aupr_out",
    "auroc",
    "brier_score",
    "calibration_bins",
    "calibration_report",
    "classwise_ece",
    "expected_calibration_error",
    "fpr_at_tpr",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "nll_from_log_probs",
    "ood_report",
    "plot_reliability_diagram",
]


def __getattr__(name: str):  # PEP 562 lazy attribute
    if name == "plot_reliability_diagram":
        from cigl_bayes.metrics.plots import plot_reliability_diagram

        return plot_reliability_diagram
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
