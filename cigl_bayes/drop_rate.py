"""``--drop-rate auto``: choose CigL's random-mask rate per run from short pilot runs, scored on
the validation split (the test split is never read).

Each candidate rate trains the same method, seed and data for ``pilot_fraction`` of the epochs
(the whole schedule compressed, averaging included) and is scored by the validation NLL of the
model the method evaluates; the rate with the lowest NLL wins. Cost: ``len(candidates) x
pilot_fraction`` of one run, reported in ``metrics.json`` beside every candidate's score.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch.nn.functional as F

from .config import RunConfig
from .data import DataSplits


def is_auto(config: RunConfig) -> bool:
    """Whether the drop rate is still ``"auto"`` (to be chosen by :func:`choose_drop_rate`)."""
    return config.random_mask.drop_rate == "auto"


def choose_drop_rate(config: RunConfig, data: DataSplits) -> tuple[RunConfig, dict[str, Any]]:
    """``config`` with the drop rate fixed by pilot runs, and the record of the choice.

    The record holds ``drop_rate``, ``chosen_by`` (``"auto: validation NLL of pilot runs"``),
    ``pilot_epochs``, per-candidate ``val_nll`` and ``pilot_seconds`` (the extra cost).
    """
    from .evaluate import predict_logits
    from .methods import assemble
    from .runner import final_model

    settings = config.random_mask
    if data.is_regression:
        raise ValueError("--drop-rate auto scores pilot runs by validation NLL of a classifier; give a number for regression sets")
    if data.y_val.numel() == 0:
        raise ValueError("--drop-rate auto needs a validation split to score its pilot runs; set val_fraction > 0 or give a number")
    pilot_epochs = max(2, math.ceil(settings.auto_pilot_fraction * config.optim.epochs))
    scores: dict[str, float] = {}
    start = time.perf_counter()
    for rate in settings.auto_candidates:
        pilot = config.with_(random_mask__drop_rate=rate, optim__epochs=pilot_epochs,
                             optim__warmup_epochs=min(config.optim.warmup_epochs, pilot_epochs - 1))
        parts = assemble(pilot, data, None, progress=False)
        parts.trainer.fit()
        logits = predict_logits(final_model(parts), data.x_val, config.eval.batch_size)[:, : data.num_classes]
        scores[f"{rate:g}"] = float(F.cross_entropy(logits.float(), data.y_val))
    best = min(settings.auto_candidates, key=lambda r: (scores[f"{r:g}"], r))
    record = {
        "drop_rate": best, "chosen_by": "auto: validation NLL of pilot runs", "pilot_epochs": pilot_epochs,
        "val_nll": scores, "pilot_seconds": time.perf_counter() - start,
    }
    return config.with_(random_mask__drop_rate=best), record
