"""Classification and calibration metrics, and reliability diagrams.

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
from cigl_bayes.metrics.classification import accuracy, brier_score, negative_log_likelihood

if TYPE_CHECKING:
    from cigl_bayes.metrics.plots import plot_reliability_diagram

__all__ = [
    "CalibrationBins",
    "accuracy",
    "brier_score",
    "calibration_bins",
    "calibration_report",
    "classwise_ece",
    "expected_calibration_error",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "plot_reliability_diagram",
]


def __getattr__(name: str):  # PEP 562 lazy attribute
    if name == "plot_reliability_diagram":
        from cigl_bayes.metrics.plots import plot_reliability_diagram

        return plot_reliability_diagram
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
