"""One run end to end: load data, assemble the method, train, evaluate, write results."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import write_text_atomic
from .config import RunConfig
from .config_io import write_config
from .data import DataSplits, load_dataset
from .drop_rate import choose_drop_rate, is_auto
from .evaluate import evaluate_log_probs, measured_density, predict_logits
from .flops import run_flops
from .methods import Assembled, assemble, get_method, validate
from .predictive import EnsemblePredictive, MCPredictive, PointPredictive, Predictive, log_predict
from .temperature import fit_temperature
from .train.checkpoint import save_weights
from .train.epoch_log import attach_epoch_log
from .train.run_dir import locked_run_dir


def build_predictive(parts: Assembled, config: RunConfig, data: DataSplits) -> tuple[Predictive, dict[str, Any]]:
    """The predictive ``parts.method`` is scored with -- and exported as -- and notes on it:
    the snapshot ensemble (prediction averaging), MC dropout, a temperature-scaled network
    (fitted on the validation split), or the final (averaged) network."""
    method, notes = parts.method, {}
    if parts.averaging is not None:
        notes["snapshots"] = parts.averaging.count
        if parts.averaging.ensemble is not None:
            return EnsemblePredictive(parts.averaging.ensemble.members), notes
    model = final_model(parts)
    if hasattr(model, "unwrap"):  # a SparseNet: the plain network with its eval-mode weights
        model = model.unwrap()
    if method.mc_dropout:
        notes["mc_samples"] = config.eval.mc_samples
        return MCPredictive(model, config.eval.mc_samples), notes
    if method.temperature:
        notes["temperature"] = fit_temperature(predict_logits(model, data.x_val, config.eval.batch_size), data.y_val)
        return PointPredictive(model, notes["temperature"]), notes
    return PointPredictive(model), notes


def predictive_state(predictive: Predictive, config: RunConfig, data: DataSplits) -> dict[str, Any]:
    """What ``export.model_from_run`` needs to rebuild ``predictive`` (saved in the checkpoint)."""
    method = get_method(config.method)
    architecture = {"model": config.model.name, "input_shape": list(data.input_shape),
                    "num_classes": data.num_classes + 1 if method.unknown_class else data.num_classes,
                    "labels": data.num_classes, "dropout": config.model.dropout if method.mc_dropout else 0.0}
    return {"spec": predictive.spec(), "architecture": architecture,
            "networks": [network.state_dict() for network in predictive.networks()]}


def final_predictions(
    parts: Assembled, config: RunConfig, data: DataSplits, extra_inputs: dict[str, torch.Tensor] | None = None,
    predictive: tuple[Predictive, dict[str, Any]] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Log-probabilities over all outputs (``K``, or ``K + 1`` with an unknown class) of the method's
    predictive (``build_predictive``, or the one given) on val, test and ``extra_inputs``, and notes
    on how they were obtained (with the MC predictive over random masks / the guide, if any)."""
    method, batch = parts.method, config.eval.batch_size
    model, notes = predictive if predictive is not None else build_predictive(parts, config, data)
    notes = {**notes, "measured_density": measured_density(model.networks()[0])}
    inputs = {"val": data.x_val, "test": data.x_test, **(extra_inputs or {})}
    log_probs = {k: log_predict(model, x, batch) for k, x in inputs.items()}
    if method.random_mask:
        notes["mc_predictive"] = {"mc_samples": config.eval.mc_samples, **_mc_report(parts, config, data)}
    if method.svi:
        notes["prior_precision"] = parts.extras["prior_precision"]
    return log_probs, notes


def _mc_report(parts: Assembled, config: RunConfig, data: DataSplits) -> dict[str, float]:
    """Test metrics of the MC predictive over random masks of the final network (over the guide
    through ``pyro.infer.Predictive`` for SVI)."""
    samples, batch = config.eval.mc_samples, config.eval.batch_size
    if parts.method.svi:
        from .bayes import mc_predictive_log_probs

        log_probs = mc_predictive_log_probs(parts.extras["bayes_model"], parts.extras["guide"], data.x_test, samples, batch)
    else:
        log_probs = log_predict(MCPredictive(parts.model, samples), data.x_test, batch)
    return evaluate_log_probs(known_class_log_probs(log_probs, data.num_classes), data.y_test)


def known_class_probs(probs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Probabilities over the ``K`` labels: the unknown output's mass (if any) renormalised away."""
    if probs.shape[-1] == num_classes:
        return probs
    known = probs[..., :num_classes]
    return known / known.sum(-1, keepdim=True)


def known_class_log_probs(log_probs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``known_class_probs`` in log space."""
    if log_probs.shape[-1] == num_classes:
        return log_probs
    known = log_probs[..., :num_classes]
    return known - known.logsumexp(-1, keepdim=True)


def msp(log_probs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """MOON's OOD score: max softmax probability over the ``K`` known classes (unknown mass kept in
    the denominator); the usual MSP for a ``K``-way model. Larger = more in-distribution."""
    return log_probs[..., :num_classes].max(-1).values.exp()


def final_model(parts: Assembled) -> nn.Module:
    """The network a method's point predictive uses (the averaged one for WMA methods, its BN
    statistics recomputed here, once, if snapshots were folded since the last read)."""
    if parts.averaging is not None and parts.averaging.weights is not None:
        return parts.averaging.averaged_model()
    return parts.model


def run(config: RunConfig, out_dir: str | os.PathLike | None = None, progress: bool = True, resume: bool = False,
        ood: bool = False) -> dict[str, Any]:
    """Train and evaluate one configuration; write ``metrics.json``, ``reliability.png``, ``checkpoint.pt``.

    Returns the record written to ``metrics.json``: test metrics (fractions, over the ``K``
    labels), validation metrics, measured density, the config and the loss history. With
    ``ood=True`` the record also holds ``ood``: per OOD set (``data.shifts.ood_sets``) AUROC,
    FPR@95TPR, AUPR-In/Out of the MSP score, and ``ood_scores.png`` is written.
    ``out_dir`` is held under a lock for the run (a second run into it fails) and cleared of
    temporaries a killed run left; the final weights also go to ``model.safetensors``.
    """
    if out_dir is None:
        return _run(config, None, progress, resume, ood)
    with locked_run_dir(out_dir):
        return _run(config, out_dir, progress, resume, ood)


def _run(config: RunConfig, out_dir: str | os.PathLike | None, progress: bool, resume: bool, ood: bool) -> dict[str, Any]:
    """``run`` once its output folder (if any) is held."""
    from .data.shifts import ood_sets
    from .metrics.ood import ood_report

    validate(config)
    data = load_dataset(config.data.dataset, config.data.data_dir, config.data.val_fraction).to(config.device)
    shifted = {k: v.to(config.device) for k, v in ood_sets(data, config.data.data_dir, seed=0).items()} if ood else {}
    out = Path(out_dir) if out_dir is not None else None
    checkpoint = out / "checkpoint.pt" if out is not None else None
    mask_choice: dict[str, Any] | None = None
    given = config  # as given (drop rate "auto" unresolved)
    if get_method(config.method).random_mask:
        mask_choice = {"drop_rate": config.random_mask.drop_rate, "chosen_by": "given"}
        if is_auto(config):
            config, mask_choice = choose_drop_rate(config, data)
    parts = assemble(config, data, checkpoint, progress)
    diagnostics = parts.extras.get("moon_diagnostics")  # unknown-class methods: per-epoch diagnostics
    if diagnostics is not None:
        diagnostics.add_eval_sets({f"ood:{k}": v for k, v in shifted.items()})
    epoch_log = attach_epoch_log(parts.trainer, out, diagnostics) if out is not None else None  # OUT/epochs.csv
    if resume and checkpoint is not None and checkpoint.is_file():
        _check_resumable(checkpoint, config)
        parts.trainer.resume(checkpoint)
    if out is not None:
        write_config(given, out / "config.yaml")  # `train --config OUT/config.yaml` repeats the run
    try:
        history = parts.trainer.fit()
    finally:
        if epoch_log is not None:
            epoch_log.close()
    predictive = build_predictive(parts, config, data)
    if checkpoint is not None:
        # Saved before evaluation: MC sampling draws from the global RNG, and a resumed run must
        # start from the end-of-training RNG state (else --resume changes MC-dropout metrics).
        parts.trainer.save(checkpoint, extra={"predictive": predictive_state(predictive[0], config, data)})
        _save_weights(predictive[0], out / "model.safetensors", config)
    log_probs, notes = final_predictions(parts, config, data, {f"ood:{k}": v for k, v in shifted.items()}, predictive)
    k = data.num_classes
    test_log_probs = known_class_log_probs(log_probs["test"], k)
    record: dict[str, Any] = {
        "method": config.method,
        "dataset": config.data.dataset,
        "model": config.model.name,
        "density": config.sparsity.density if parts.method.sparse else 1.0,
        "seed": config.seed,
        **evaluate_log_probs(test_log_probs, data.y_test),
        "val": evaluate_log_probs(known_class_log_probs(log_probs["val"], k), data.y_val),
        **notes,
        **({"random_mask": mask_choice} if mask_choice is not None else {}),
        "flops": run_flops(parts, predictive[0].networks(), data.input_shape),  # no RNG draws (flops.py)
        "train_loss": history.loss,
        "config": config.to_dict(),
    }
    scores = {name: msp(lp, k).cpu() for name, lp in log_probs.items() if name == "test" or name.startswith("ood:")}
    if ood:
        record["ood"] = {name[4:]: ood_report(scores["test"], s) for name, s in scores.items() if name != "test"}
    if diagnostics is not None:
        record["moon_diagnostics"] = diagnostics.report()
    if out is not None:
        from .metrics.plots import plot_reliability_diagram

        plot_reliability_diagram(test_log_probs.exp().cpu(), data.y_test.cpu(), out / "reliability.png",
                                 title=f"{config.method} on {config.data.dataset} (test)")
        if ood:
            from .ood.plots import plot_score_histograms

            plot_score_histograms({"in-distribution (test)": scores["test"], **{n[4:]: s for n, s in scores.items() if n != "test"}},
                                  out / "ood_scores.png", title=f"{config.method}: MSP score, ID vs OOD")
        if diagnostics is not None:
            from .ood.diagnostics import plot_moon_diagnostics

            plot_moon_diagnostics(record["moon_diagnostics"], out / "moon_diagnostics.png", title=f"{config.method}: per-epoch diagnostics")
        write_text_atomic(out / "metrics.json", json.dumps(record, indent=2, default=_json_default))
    return record


def _save_weights(predictive: Predictive, path: Path, config: RunConfig) -> None:
    """The predictive's network weights as safetensors (keys ``member<i>.`` prefixed for an ensemble)."""
    networks = predictive.networks()
    if len(networks) == 1:
        state = networks[0].state_dict()
    else:
        state = {f"member{i}.{k}": v for i, network in enumerate(networks) for k, v in network.state_dict().items()}
    save_weights(state, path, metadata={"method": config.method, "networks": str(len(networks)),
                                        "config": json.dumps(config.to_dict())})


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


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if torch.is_tensor(value):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
