"""One run end to end: load data, assemble the method, train, evaluate, write results."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .bayes import mc_predictive_probs
from .config import RunConfig
from .data import DataSplits, load_dataset
from .drop_rate import choose_drop_rate, is_auto
from .evaluate import evaluate_probs, mc_predict_probs, measured_density, predict_logits
from .methods import Assembled, assemble, get_method, validate
from .temperature import apply_temperature, fit_temperature


def final_predictions(
    parts: Assembled, config: RunConfig, data: DataSplits, extra_inputs: dict[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Probabilities over all outputs (``K``, or ``K + 1`` with an unknown class) of the model each
    method evaluates on val, test and ``extra_inputs``, and notes on how they were obtained."""
    method, batch = parts.method, config.eval.batch_size
    inputs = {"val": data.x_val, "test": data.x_test, **(extra_inputs or {})}
    notes: dict[str, Any] = {}
    if parts.averaging is not None and parts.averaging.predictions is not None:
        notes["snapshots"] = parts.averaging.count
        return {k: parts.averaging.predictions.mean[k] for k in inputs}, notes
    model = final_model(parts)
    if parts.averaging is not None:
        notes["snapshots"] = parts.averaging.count
    notes["measured_density"] = measured_density(model)
    if method.svi:  # MC predictive through pyro.infer.Predictive over the guide
        notes["prior_precision"] = parts.extras["prior_precision"]
        mc = mc_predictive_probs(parts.extras["bayes_model"], parts.extras["guide"], data.x_test, config.eval.mc_samples, batch)
    elif method.random_mask:  # MC predictive over fresh random masks of the final network
        mc = mc_predict_probs(parts.model, data.x_test, config.eval.mc_samples, batch)
    if method.random_mask:
        mc = known_class_probs(mc, data.num_classes)
        notes["mc_predictive"] = {"mc_samples": config.eval.mc_samples, **evaluate_probs(mc, data.y_test)}
    if method.mc_dropout:
        notes["mc_samples"] = config.eval.mc_samples
        return {k: mc_predict_probs(model, x, config.eval.mc_samples, batch) for k, x in inputs.items()}, notes
    logits = {k: predict_logits(model, x, batch) for k, x in inputs.items()}
    if method.temperature:
        temperature = fit_temperature(logits["val"], data.y_val)
        notes["temperature"] = temperature
        return {k: apply_temperature(v, temperature) for k, v in logits.items()}, notes
    return {k: v.softmax(-1) for k, v in logits.items()}, notes


def known_class_probs(probs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Probabilities over the ``K`` labels: the unknown output's mass (if any) renormalised away."""
    if probs.shape[-1] == num_classes:
        return probs
    known = probs[..., :num_classes]
    return known / known.sum(-1, keepdim=True)


def msp(probs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """MOON's OOD score: max softmax probability over the ``K`` known classes (unknown mass kept in
    the denominator); the usual MSP for a ``K``-way model. Larger = more in-distribution."""
    return probs[..., :num_classes].max(-1).values


def final_model(parts: Assembled) -> nn.Module:
    """The model a method evaluates and saves (the averaged one for WMA methods)."""
    if parts.averaging is not None and parts.averaging.weights is not None:
        return parts.averaging.weights.averaged
    return parts.model


def run(config: RunConfig, out_dir: str | os.PathLike | None = None, progress: bool = True, resume: bool = False,
        ood: bool = False) -> dict[str, Any]:
    """Train and evaluate one configuration; write ``metrics.json``, ``reliability.png``, ``checkpoint.pt``.

    Returns the record written to ``metrics.json``: test metrics (fractions, over the ``K``
    labels), validation metrics, measured density, the config and the loss history. With
    ``ood=True`` the record also holds ``ood``: per OOD set (``data.shifts.ood_sets``) AUROC,
    FPR@95TPR, AUPR-In/Out of the MSP score, and ``ood_scores.png`` is written.
    """
    from .data.shifts import ood_sets
    from .metrics.ood import ood_report

    validate(config)
    data = load_dataset(config.data.dataset, config.data.data_dir, config.data.val_fraction).to(config.device)
    shifted = {k: v.to(config.device) for k, v in ood_sets(data, config.data.data_dir, seed=0).items()} if ood else {}
    out = Path(out_dir) if out_dir is not None else None
    checkpoint = out / "checkpoint.pt" if out is not None else None
    mask_choice: dict[str, Any] | None = None
    if get_method(config.method).random_mask:
        mask_choice = {"drop_rate": config.random_mask.drop_rate, "chosen_by": "given"}
        if is_auto(config):
            config, mask_choice = choose_drop_rate(config, data)
    parts = assemble(config, data, checkpoint, progress, extra_inputs={f"ood:{k}": v for k, v in shifted.items()})
    if resume and checkpoint is not None and checkpoint.is_file():
        _check_resumable(checkpoint, config)
        parts.trainer.resume(checkpoint)
    history = parts.trainer.fit()
    if checkpoint is not None:
        # Saved before evaluation: MC sampling draws from the global RNG, and a resumed run must
        # start from the end-of-training RNG state (else --resume changes MC-dropout metrics).
        parts.trainer.save(checkpoint, extra={"final_model": final_model(parts).state_dict()})
    probs, notes = final_predictions(parts, config, data, {f"ood:{k}": v for k, v in shifted.items()})
    k = data.num_classes
    record: dict[str, Any] = {
        "method": config.method,
        "dataset": config.data.dataset,
        "model": config.model.name,
        "density": config.sparsity.density if parts.method.sparse else 1.0,
        "seed": config.seed,
        **evaluate_probs(known_class_probs(probs["test"], k), data.y_test),
        "val": evaluate_probs(known_class_probs(probs["val"], k), data.y_val),
        **notes,
        **({"random_mask": mask_choice} if mask_choice is not None else {}),
        "train_loss": history.loss,
        "config": config.to_dict(),
    }
    scores = {name: msp(p, k).cpu() for name, p in probs.items() if name == "test" or name.startswith("ood:")}
    if ood:
        record["ood"] = {name[4:]: ood_report(scores["test"], s) for name, s in scores.items() if name != "test"}
    if out is not None:
        from .metrics.plots import plot_reliability_diagram

        plot_reliability_diagram(known_class_probs(probs["test"], k).cpu(), data.y_test.cpu(), out / "reliability.png",
                                 title=f"{config.method} on {config.data.dataset} (test)")
        if ood:
            from .ood.plots import plot_score_histograms

            plot_score_histograms({"in-distribution (test)": scores["test"], **{n[4:]: s for n, s in scores.items() if n != "test"}},
                                  out / "ood_scores.png", title=f"{config.method}: MSP score, ID vs OOD")
        _write_json_atomic(record, out / "metrics.json")
    return record


def _check_resumable(checkpoint: Path, config: RunConfig) -> None:
    """Refuse to resume from a checkpoint written by a different configuration."""
    from .train import load_checkpoint

    saved = load_checkpoint(checkpoint).get("config")
    if saved is None:
        raise ValueError(f"{checkpoint} holds no run configuration; use another --out or drop --resume")
    saved, current = _flatten(saved), _flatten(config.to_dict())
    differing = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if differing:
        raise ValueError(f"{checkpoint} was written by a different configuration (differs in {', '.join(differing)}); "
                         "use another --out or drop --resume")


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _write_json_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if torch.is_tensor(value):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
