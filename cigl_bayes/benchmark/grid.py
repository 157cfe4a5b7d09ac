"""Arms (a method plus config overrides) and the resumable, parallel grid of runs."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..config import RunConfig, recipe
from ..results import flat_record

#: Short names for the overrides users try most (``cigl+drop_rate=0.01``); any other key is
#: ``section.field`` of :class:`~cigl_bayes.config.RunConfig` (``cigl+optim.lr=0.02``).
ALIASES = {
    "drop_rate": "random_mask__drop_rate", "hold_lr": "averaging__hold_lr", "sample_mask": "averaging__sample_mask",
    "epochs": "optim__epochs", "lr": "optim__lr", "model": "model__name", "batch_size": "data__batch_size",
}


@dataclass(frozen=True)
class Arm:
    """One row of the benchmark: ``method`` with ``overrides`` (``RunConfig.with_`` keys); ``label`` names it."""

    label: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def config(self, dataset: str, density: float, seed: int, base: dict[str, Any] | None = None) -> RunConfig:
        """The dataset's recipe with ``base`` (benchmark-wide) and then this arm's overrides."""
        changes = {**(base or {}), **self.overrides}
        return recipe(dataset, changes.get("model__name")).with_(method=self.method, seed=seed, sparsity__density=density, data__dataset=dataset, **changes)


def _value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def _key(name: str) -> str:
    name = name.strip()
    if name in ALIASES:
        return ALIASES[name]
    section, _, attr = name.partition(".")
    if not attr or section not in {f.name for f in fields(RunConfig)}:
        raise ValueError(f"unknown override {name!r} in an arm; use one of {', '.join(ALIASES)} or section.field "
                         "(e.g. random_mask.drop_rate)")
    return f"{section}__{attr}"


def parse_overrides(pairs: Sequence[str], context: str) -> dict[str, Any]:
    """``["drop_rate=0.01", "optim.lr=0.02"]`` -> ``RunConfig.with_`` keys and typed values."""
    overrides = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise ValueError(f"bad override {pair!r} in {context!r}: expected key=value, e.g. drop_rate=0.01")
        overrides[_key(key)] = _value(value)
    return overrides


def parse_arms(spec: str) -> list[Arm]:
    """``"rigl,cigl,cigl+drop_rate=0.01"`` -> arms; each is ``METHOD[+key=value...]`` and is labelled by its text."""
    from ..methods import get_method

    arms = []
    for text in (t.strip() for t in spec.split(",")):
        if not text:
            continue
        method, *pairs = text.split("+")
        get_method(method.strip())
        arms.append(Arm(text, method.strip(), parse_overrides(pairs, text)))
    if not arms:
        raise ValueError("no methods given; e.g. --methods rigl,cigl")
    if len({a.label for a in arms}) != len(arms):
        raise ValueError(f"an arm is listed twice in {spec!r}")
    return arms


@dataclass(frozen=True)
class Job:
    """One cell of the grid and where its record goes."""

    dataset: str
    arm: Arm
    density: float
    seed: int
    path: Path
    base: dict[str, Any]
    ood: bool = False


def _record_path(out: Path, dataset: str, arm: Arm, density: float, seed: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in arm.label)
    return out / "records" / dataset / f"{safe}-d{density:g}-s{seed}.json"


OOD_METRICS = ("auroc", "fpr95")


def ood_summary(ood: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per-set ``ood_<set>_<metric>`` and ``<metric>_near`` / ``<metric>_far``, the means over the
    near- and far-OOD sets (``metrics.ood.near_far_means``), of AUROC and FPR95."""
    from ..metrics.ood import near_far_means

    flat: dict[str, float] = {}
    for name, report in ood.items():
        flat.update({f"ood_{name}_{m}": report[m] for m in OOD_METRICS})
    for group, means in near_far_means(ood).items():
        flat.update({f"{m}_{group}": means[m] for m in OOD_METRICS})
    return flat


def _run_job(job: Job, threads: int) -> dict[str, Any]:
    import torch

    from ..runner import run

    torch.set_num_threads(threads)
    config = job.arm.config(job.dataset, job.density, job.seed, job.base)
    start = time.perf_counter()
    record = run(config, None, progress=False, ood=job.ood)
    flat = {
        "dataset": job.dataset, "arm": job.arm.label, "method": job.arm.method, "density": job.density, "seed": job.seed,
        "model": config.model.name, **{k: record[k] for k in ("accuracy", "ece", "ece_15", "nll", "brier")},
        "confidence": record["confidence"], **{f"val_{k}": record["val"][k] for k in ("accuracy", "ece", "nll")},
        "final_train_loss": record["train_loss"][-1], "seconds": time.perf_counter() - start,
        **flat_record(record, ()),
    }
    if "random_mask" in record:
        flat["drop_rate"] = record["random_mask"]["drop_rate"]
    if "mc_predictive" in record:
        flat.update({f"mc_{k}": record["mc_predictive"][k] for k in ("accuracy", "ece", "nll")})
    if job.ood:
        flat.update(ood_summary(record["ood"]))
    write_text_atomic(job.path, json.dumps(flat, indent=1))
    return flat


def _worker(args: tuple[Job, int]) -> dict[str, Any]:
    return _run_job(*args)


def run_grid(
    datasets: Sequence[str],
    arms: Sequence[Arm],
    densities: Sequence[float],
    seeds: Sequence[int],
    out: str | os.PathLike,
    jobs: int = 1,
    threads: int = 1,
    base: dict[str, Any] | None = None,
    on_record: Callable[[dict[str, Any], int, int], None] | None = None,
    ood: bool = False,
) -> list[dict[str, Any]]:
    """Train every dataset x arm x density x seed (dense arms once per seed) and return the records.

    ``ood=True`` also scores every OOD set of the dataset (``runner.run(..., ood=True)``); records
    then hold per-set AUROC / FPR95 and their near- / far-OOD means (``ood_summary``).

    Each run writes ``OUT/records/<dataset>/<arm>-d<density>-s<seed>.json`` atomically; a cell
    whose record exists is read instead of trained, so an interrupted benchmark resumes. ``jobs``
    worker processes (spawned) run ``threads`` torch threads each. All configs are built and
    validated before anything runs.
    """
    from ..methods import get_method, validate

    out = Path(out)
    todo, records = [], []
    for dataset in datasets:
        for arm in arms:
            for density in ([1.0] if not get_method(arm.method).sparse else densities):
                for seed in seeds:
                    validate(arm.config(dataset, density, seed, base))
                    path = _record_path(out, dataset, arm, density, seed)
                    if path.is_file():
                        records.append(json.loads(path.read_text()))
                    else:
                        todo.append(Job(dataset, arm, density, seed, path, dict(base or {}), ood))
    total = len(todo) + len(records)
    if jobs <= 1 or len(todo) <= 1:
        results = (_run_job(job, threads) for job in todo)
    else:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(jobs)
        results = pool.imap_unordered(_worker, [(job, threads) for job in todo])
    try:
        for record in results:
            records.append(record)
            if on_record is not None:
                on_record(record, len(records), total)
    finally:
        if jobs > 1 and len(todo) > 1:
            pool.terminate()
    return records
