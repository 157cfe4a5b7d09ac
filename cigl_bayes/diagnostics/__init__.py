"""ArviZ diagnostics for MC predictive samples (``arviz`` is imported lazily, on first use)."""

from .arviz import held_out_report, loo_report, mc_class_probs, mc_outputs, to_inference_data
from .plots import plot_loo_pit, plot_posterior_predictive, write_diagnostic_plots

__all__ = ["held_out_report", "loo_report", "mc_class_probs", "mc_outputs", "plot_loo_pit", "plot_posterior_predictive",
           "to_inference_data", "write_diagnostic_plots"]
