"""Deep-GP side of the Bayesian reading: kernels of (masked) ReLU networks and their limits."""

from cigl_bayes.dgp.kernels import arccos_kernel, empirical_masked_relu_kernel, mask_factor, masked_relu_kernel_limit

__all__ = ["arccos_kernel", "empirical_masked_relu_kernel", "mask_factor", "masked_relu_kernel_limit"]
