"""cigl-bayes: reliable sparse training (CigL, RigL, MOON) with an explicit Bayesian reading."""

__version__ = "0.1.0"
