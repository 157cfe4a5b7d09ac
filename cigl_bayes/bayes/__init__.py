"""The Bayesian core: the sparse net as a Pyro model, CigL's hierarchical guide, -ELBO, predictive."""

from .direct import DirectELBO, direct_unsupported
from .guide import HierarchicalGuide
from .kl import bernoulli_entropy, equivalent_l2_coefficient, gal_kl, gaussian_kl, prior_precision_for_weight_decay
from .model import KL_MODES, LIKELIHOODS, LearnableKeep, SparseBayesModel, active_values, mask_distribution, scatter_to_layers
from .predictive import mc_predictive_log_probs, mc_predictive_probs
from .svi import ESTIMATORS, NegativeELBO, SyncLearnedKeep

__all__ = [
    "ESTIMATORS",
    "DirectELBO",
    "KL_MODES",
    "LIKELIHOODS",
    "HierarchicalGuide",
    "LearnableKeep",
    "NegativeELBO",
    "SyncLearnedKeep",
    "SparseBayesModel",
    "active_values",
    "bernoulli_entropy",
    "direct_unsupported",
    "equivalent_l2_coefficient",
    "gal_kl",
    "gaussian_kl",
    "mask_distribution",
    "mc_predictive_log_probs",
    "mc_predictive_probs",
    "prior_precision_for_weight_decay",
    "scatter_to_layers",
]
