"""Atomic checkpoints: write to a temporary file in the same folder, fsync, then rename.

Checkpoints hold tensors and plain Python data only (dicts, lists, str, numbers; RNG states as
tensors) and are read with ``torch.load(weights_only=True)``: a crafted file cannot run code.
Final weights are also written as safetensors (``save_weights``), readable without pickle at all.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_atomic


class CheckpointError(ValueError):
    """A checkpoint file that is damaged, foreign, or references code it may not load."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: readers see the old file or the new one, never half."""
    return write_atomic(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` (tensors and plain data only).

    Raises ``FileNotFoundError`` if there is no file and ``CheckpointError`` (one line) if it is
    empty, truncated, not a torch file, or would need to import anything to unpickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first or drop --resume")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))  # weights_only met code or a foreign class
        if refused:
            raise CheckpointError(f"refusing to load {path}: it references {refused.group(1)}, which a cigl-bayes "
                                  "checkpoint never does (only load checkpoints you trust)") from None
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(error).__name__}); it may be truncated "
                              "by a crash or not written by cigl-bayes: delete it or use another --out") from None


def save_weights(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write a state dict atomically as safetensors (contiguous CPU copies; ``metadata`` as strings)."""
    from safetensors.torch import save

    tensors = {name: value.detach().cpu().contiguous().clone() for name, value in state.items()}
    return write_atomic(path, lambda handle: handle.write(save(tensors, metadata=metadata)))
