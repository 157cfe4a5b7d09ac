"""Lazy package exports (PEP 562): a package names its members and imports each on first use.

So a torch-free module of a package (``cigl_bayes.sparse.density``, ``cigl_bayes.train.run_dir``)
imports without loading its torch-using siblings.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, members: dict[str, tuple[str, ...]]) -> tuple[list[str], Callable[[str], Any]]:
    """``__all__`` and ``__getattr__`` for ``package``, whose submodule ``module`` defines ``members[module]``."""
    where = {name: module for module, names in members.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    return sorted(where), __getattr__
