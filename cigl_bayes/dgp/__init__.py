"""Deep-GP side of the Bayesian reading: kernels of (masked) ReLU networks and their limits.

The GPyTorch deep GP (``DGPConfig``, ``fit_deep_gp``, ``FittedDGP``, ``DeepGPModel``,
``DGPHiddenLayer``) lives in :mod:`cigl_bayes.dgp.deep_gp` and is imported lazily, so that
``import cigl_bayes`` does not pull in gpytorch.
"""

from typing import Any

from cigl_bayes.dgp.kernels import arccos_kernel, empirical_masked_relu_kernel, mask_factor, masked_relu_kernel_limit

_DEEP_GP = ("DGPConfig", "DGPHiddenLayer", "DeepGPModel", "FittedDGP", "fit_deep_gp")


def __getattr__(name: str) -> Any:
    if name in _DEEP_GP:
        from cigl_bayes.dgp import deep_gp

        return getattr(deep_gp, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["arccos_kernel", "empirical_masked_relu_kernel", "mask_factor", "masked_relu_kernel_limit", *_DEEP_GP]
