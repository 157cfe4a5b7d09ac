"""The method registry: a method's name -> how it is assembled from the library's parts.

Methods differ in a few parts only (update rule, random mask, averaging, dropout, post-hoc
temperature); ``assemble`` wires those parts, ``run`` trains and evaluates. Adding a method
is one ``METHODS`` entry (plus its new part, if any).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .bayes import HierarchicalGuide, NegativeELBO, SparseBayesModel, mc_predictive_probs, prior_precision_for_weight_decay
from .cigl import RandomMask, SnapshotAveraging, mask_update_by_z
from .config import RunConfig
from .data import DATASET_NAMES, DeviceLoader, DataSplits, load_dataset, random_crop_flip
from .evaluate import evaluate_probs, mc_predict_probs, measured_density, predict_logits
from .models import MODEL_NAMES, build_model
from .sparse import DropSchedule, SparseNet, TopologyUpdater
from .temperature import apply_temperature, fit_temperature
from .train import Trainer, build_lr_scheduler, build_sgd


@dataclass(frozen=True)
class Method:
    """The parts that make a method (see ``METHODS``)."""

    description: str
    sparse: bool = True
    update: str = "rigl"              # static | set | rigl
    random_mask: bool = False         # CigL's Bernoulli mask Z, resampled every step
    averaging: str | None = None      # None | "weights" (WMA) | "predictions"
    mc_dropout: bool = False          # unit dropout in training, MC average at test time
    temperature: bool = False         # temperature scaling fitted on the validation split
    svi: bool = False                 # train -ELBO/N of the Pyro model + hierarchical guide


METHODS: dict[str, Method] = {
    "dense": Method("dense network, no sparsity", sparse=False),
    "static": Method("fixed random ERK support", update="static"),
    "set": Method("SET: drop smallest |w|, grow at random", update="set"),
    "rigl": Method("RigL: drop smallest |w|, grow largest |grad|"),
    "rigl-mcdrop": Method("RigL + unit dropout, MC dropout at test time", mc_dropout=True),
    "rigl-ts": Method("RigL + temperature scaling on the validation split", temperature=True),
    "cigl": Method("CigL: RigL + random mask Z + weight-and-mask averaging", random_mask=True, averaging="weights"),
    "cigl-no-rm": Method("CigL ablation 'w/o RM': RigL + weight averaging, no random mask", averaging="weights"),
    "cigl-pred-avg": Method("CigL ablation 'w/o WMA': average snapshot predictions", random_mask=True, averaging="predictions"),
    "cigl-svi": Method("CigL as a Pyro model/guide trained by SVI (-ELBO), with WMA and MC predictive",
                       random_mask=True, averaging="weights", svi=True),
}


def get_method(name: str) -> Method:
    """The registered method ``name`` or a ``ValueError`` listing the choices."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def validate(config: RunConfig) -> None:
    """Check names before anything is loaded or written."""
    get_method(config.method)
    if config.model.name.lower() not in MODEL_NAMES:
        raise ValueError(f"unknown model {config.model.name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if not (config.data.dataset in DATASET_NAMES or config.data.dataset.startswith("npz:")):
        raise ValueError(f"unknown dataset {config.data.dataset!r}; choose one of {', '.join(DATASET_NAMES)} or npz:PATH")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; use --device cpu")


@dataclass
class Assembled:
    """A method wired up: everything the trainer and the evaluator need."""

    method: Method
    model: nn.Module
    trainer: Trainer
    averaging: SnapshotAveraging | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def assemble(config: RunConfig, data: DataSplits, checkpoint_path: str | os.PathLike | None = None, progress: bool = True) -> Assembled:
    """Build model, masks, optimiser, schedules, hooks and trainer for ``config.method``."""
    method = get_method(config.method)
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    dropout = config.model.dropout if method.mc_dropout else 0.0
    model: nn.Module = build_model(config.model.name, data.input_shape, data.num_classes, dropout=dropout).to(device)
    if method.sparse:
        random_mask = None
        if method.random_mask:
            random_mask = RandomMask(config.random_mask.drop_rate, config.random_mask.rescale, seed=config.seed)
        model = SparseNet(model, config.sparsity.density, config.sparsity.distribution, random_mask, seed=config.seed)

    optim = config.optim
    transform = random_crop_flip if data.augment else None
    loader = DeviceLoader(data.x_train, data.y_train, config.data.batch_size, shuffle=True, drop_last=True,
                          seed=config.seed, transform=transform)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {config.data.batch_size} exceeds the {data.x_train.shape[0]} training examples; lower --batch-size")
    total_steps = optim.epochs * steps_per_epoch
    objective = None
    extras: dict[str, Any] = {}
    if method.svi:  # the KL term replaces weight decay on the maskable weights
        keep, rescale = 1.0 - config.random_mask.drop_rate, config.random_mask.rescale
        scale = 1.0 / keep if rescale else 1.0
        num_data = data.x_train.shape[0]
        precision = config.bayes.prior_precision or prior_precision_for_weight_decay(optim.weight_decay, keep, num_data, scale=scale)
        bayes_model = SparseBayesModel(model, num_data, precision, keep, rescale, kl=config.bayes.kl, slab_scale=config.bayes.slab_scale)
        guide = HierarchicalGuide(model, keep, rescale, config.bayes.slab_scale, kl=config.bayes.kl)
        objective = NegativeELBO(bayes_model, guide, num_data)
        extras = {"bayes_model": bayes_model, "guide": guide, "prior_precision": precision}
    optimizer = build_sgd(model, optim.lr, optim.momentum, optim.nesterov, 0.0 if method.svi else optim.weight_decay)
    lr_scheduler = build_lr_scheduler(optimizer, total_steps, optim.warmup_epochs * steps_per_epoch, optim.schedule,
                                      optim.decay_every, optim.decay_factor)
    gate = None
    step_wrapper: Callable | None = None
    if method.sparse:
        s = config.sparsity
        schedule = DropSchedule.for_run(total_steps, s.update_every, s.drop_fraction, s.end_fraction)
        gate = TopologyUpdater(model, optimizer, schedule, method.update, seed=config.seed)
        if method.random_mask and config.random_mask.mask_momentum:
            step_wrapper = mask_update_by_z(model, optimizer)

    averaging = None
    if method.averaging is not None:
        start = min(optim.epochs - 1, int(config.averaging.start_fraction * optim.epochs))
        averaging = SnapshotAveraging(model, start, data.x_train, batch_size=max(256, config.data.batch_size),
                                      mode=method.averaging, sample_mask=config.averaging.sample_mask,
                                      eval_inputs={"val": data.x_val, "test": data.x_test})
    trainer = Trainer(model, optimizer, loader, optim.epochs, objective=objective, lr_scheduler=lr_scheduler, gate=gate,
                      hooks=[averaging] if averaging else [], step_wrapper=step_wrapper,
                      checkpoint_path=checkpoint_path, checkpoint_extra={"config": config.to_dict()},
                      progress=progress, description=config.method)
    return Assembled(method, model, trainer, averaging, extras)


def final_predictions(parts: Assembled, config: RunConfig, data: DataSplits) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Validation and test probabilities of the model each method evaluates, and notes on how."""
    method, batch = parts.method, config.eval.batch_size
    inputs = {"val": data.x_val, "test": data.x_test}
    notes: dict[str, Any] = {}
    if parts.averaging is not None and parts.averaging.predictions is not None:
        notes["snapshots"] = parts.averaging.count
        return dict(parts.averaging.predictions.mean), notes
    model = parts.model
    if parts.averaging is not None:
        model = parts.averaging.weights.averaged
        notes["snapshots"] = parts.averaging.count
    notes["measured_density"] = measured_density(model)
    if method.svi:  # MC predictive through pyro.infer.Predictive over the guide
        notes["prior_precision"] = parts.extras["prior_precision"]
        mc = mc_predictive_probs(parts.extras["bayes_model"], parts.extras["guide"], data.x_test, config.eval.mc_samples, batch)
    elif method.random_mask:  # MC predictive over fresh random masks of the final network
        mc = mc_predict_probs(parts.model, data.x_test, config.eval.mc_samples, batch)
    if method.random_mask:
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


def final_model(parts: Assembled) -> nn.Module:
    """The model a method evaluates and saves (the averaged one for WMA methods)."""
    if parts.averaging is not None and parts.averaging.weights is not None:
        return parts.averaging.weights.averaged
    return parts.model


def run(config: RunConfig, out_dir: str | os.PathLike | None = None, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate one configuration; write ``metrics.json``, ``reliability.png``, ``checkpoint.pt``.

    Returns the record written to ``metrics.json``: test metrics (fractions), validation
    metrics, measured density, the config and the loss history.
    """
    validate(config)
    data = load_dataset(config.data.dataset, config.data.data_dir, config.data.val_fraction).to(config.device)
    out = Path(out_dir) if out_dir is not None else None
    checkpoint = out / "checkpoint.pt" if out is not None else None
    parts = assemble(config, data, checkpoint, progress)
    if resume and checkpoint is not None and checkpoint.is_file():
        _check_resumable(checkpoint, config)
        parts.trainer.resume(checkpoint)
    history = parts.trainer.fit()
    if checkpoint is not None:
        # Saved before evaluation: MC sampling draws from the global RNG, and a resumed run must
        # start from the end-of-training RNG state (else --resume changes MC-dropout metrics).
        parts.trainer.save(checkpoint, extra={"final_model": final_model(parts).state_dict()})
    probs, notes = final_predictions(parts, config, data)
    record: dict[str, Any] = {
        "method": config.method,
        "dataset": config.data.dataset,
        "model": config.model.name,
        "density": config.sparsity.density if parts.method.sparse else 1.0,
        "seed": config.seed,
        **evaluate_probs(probs["test"], data.y_test),
        "val": evaluate_probs(probs["val"], data.y_val),
        **notes,
        "train_loss": history.loss,
        "config": config.to_dict(),
    }
    if out is not None:
        from .metrics.plots import plot_reliability_diagram

        plot_reliability_diagram(probs["test"].cpu(), data.y_test.cpu(), out / "reliability.png",
                                 title=f"{config.method} on {config.data.dataset} (test)")
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
