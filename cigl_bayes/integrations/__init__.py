"""Bridges to other training frameworks; each needs its framework (an optional extra) and loads on
first use, so ``import cigl_bayes.integrations`` works without any of them.

* :class:`SparseTrainingCallback` (``pip install 'cigl-bayes[lightning]'``): RigL / SET / CigL
  sparse training and weight averaging inside a Lightning ``LightningModule``.
"""

from .._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {"lightning": ("SparseTrainingCallback",)})
