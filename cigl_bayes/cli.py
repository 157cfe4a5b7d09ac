"""``cigl-bayes`` command line: thin calls into the library.

Bad input (density outside (0, 1], unknown method/model/dataset, bad labels, a missing data
folder, a non-finite loss) prints one ``error:`` line and exits with code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from .config import RunConfig, recipe
from .data import DataError
from .train import NonFiniteLossError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Reliable sparse training: CigL, RigL and baselines with calibration metrics.")
console = Console(stderr=True)

# Options shared by `train` and `compare`; None means "the dataset recipe's default".
ModelOpt = typer.Option(None, "--model", help="mlp, cnn, resnet18, resnet50, wrn-22-2, vgg19")
DatasetOpt = typer.Option("digits", "--dataset", help="digits (embedded), cifar10, cifar100 or npz:PATH")
DataDirOpt = typer.Option(None, "--data-dir", help="folder holding cifar-10-batches-py / cifar-100-python")
EpochsOpt = typer.Option(None, "--epochs", help="training epochs")
BatchOpt = typer.Option(None, "--batch-size", help="mini-batch size")
LrOpt = typer.Option(None, "--lr", help="base learning rate")
DistributionOpt = typer.Option(None, "--distribution", help="erk or uniform layer densities")
UpdateEveryOpt = typer.Option(None, "--update-every", help="dT: iterations between topology updates")
DropRateOpt = typer.Option(None, "--drop-rate", help="CigL random-mask drop rate (paper 0.1; released code 0.01)")
DeviceOpt = typer.Option("cpu", "--device", help="cpu or cuda")
MoonWarmupOpt = typer.Option(None, "--moon-warmup", help="MOON: epochs of plain cross-entropy before the re-weighted loss (5)")
KlOpt = typer.Option(None, "--kl", help="cigl-svi KL term: mc (Monte Carlo through Trace_ELBO) or gal (closed form)")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="show a progress bar")


def _config(method: str, dataset: str, seed: int, device: str, **overrides: Any) -> RunConfig:
    """The dataset's recipe with the options the user gave."""
    names = {
        "model": "model__name", "data_dir": "data__data_dir", "epochs": "optim__epochs", "batch_size": "data__batch_size",
        "lr": "optim__lr", "density": "sparsity__density", "distribution": "sparsity__distribution",
        "update_every": "sparsity__update_every", "drop_rate": "random_mask__drop_rate", "kl": "bayes__kl",
        "moon_warmup": "moon__warmup_epochs",
    }
    changes = {names[k]: v for k, v in overrides.items() if v is not None}
    return recipe(dataset).with_(method=method, seed=seed, device=device, data__dataset=dataset, **changes)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _guarded(fn, *args, **kwargs):
    """Run ``fn`` turning input/data/training errors into one line and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, DataError, FileNotFoundError, NonFiniteLossError) as error:
        _fail(str(error))


@app.command()
def train(
    method: str = typer.Option("cigl", "--method", help="dense, static, set, rigl, rigl-mcdrop, rigl-ts, cigl, cigl-no-rm, cigl-pred-avg, cigl-svi"),
    model: Optional[str] = ModelOpt,
    dataset: str = DatasetOpt,
    data_dir: Optional[str] = DataDirOpt,
    density: Optional[float] = typer.Option(None, "--density", help="fraction of weights kept, in (0, 1]"),
    distribution: Optional[str] = DistributionOpt,
    epochs: Optional[int] = EpochsOpt,
    batch_size: Optional[int] = BatchOpt,
    lr: Optional[float] = LrOpt,
    update_every: Optional[int] = UpdateEveryOpt,
    drop_rate: Optional[float] = DropRateOpt,
    kl: Optional[str] = KlOpt,
    moon_warmup: Optional[int] = MoonWarmupOpt,
    seed: int = typer.Option(0, "--seed"),
    device: str = DeviceOpt,
    out: Path = typer.Option(Path("runs/train"), "--out", help="output folder"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/checkpoint.pt if present"),
    progress: bool = ProgressOpt,
) -> None:
    """Train one model; write OUT/metrics.json, OUT/reliability.png and OUT/checkpoint.pt."""
    from .methods import validate
    from .runner import run

    config = _guarded(_config, method, dataset, seed, device, model=model, data_dir=data_dir, density=density,
                      distribution=distribution, epochs=epochs, batch_size=batch_size, lr=lr,
                      update_every=update_every, drop_rate=drop_rate, kl=kl, moon_warmup=moon_warmup)
    _guarded(validate, config)
    record = _guarded(run, config, out, progress=progress, resume=resume)
    keys = ("accuracy", "ece", "nll", "brier")
    typer.echo(f"{method} on {dataset}: " + ", ".join(f"{k} {record[k]:.4f}" for k in keys) + f"  -> {out / 'metrics.json'}")


def _split(text: str, cast) -> list:
    try:
        return [cast(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError:
        _fail(f"could not parse {text!r} as a comma-separated list")


@app.command()
def compare(
    methods: str = typer.Option("dense,rigl,cigl", "--methods", help="comma-separated methods"),
    densities: str = typer.Option("0.1,0.05", "--densities", help="comma-separated densities"),
    seeds: str = typer.Option("0,1,2", "--seeds", help="comma-separated seeds"),
    model: Optional[str] = ModelOpt,
    dataset: str = DatasetOpt,
    data_dir: Optional[str] = DataDirOpt,
    distribution: Optional[str] = DistributionOpt,
    epochs: Optional[int] = EpochsOpt,
    batch_size: Optional[int] = BatchOpt,
    lr: Optional[float] = LrOpt,
    update_every: Optional[int] = UpdateEveryOpt,
    drop_rate: Optional[float] = DropRateOpt,
    kl: Optional[str] = KlOpt,
    device: str = DeviceOpt,
    out: Path = typer.Option(Path("runs/compare"), "--out", help="output folder"),
    progress: bool = ProgressOpt,
) -> None:
    """Run the grid methods x densities x seeds; print mean ± std; write OUT/results.csv and results.json."""
    from .methods import METHODS, validate
    from .runner import run
    from .results import SUMMARY_METRICS, flat_record, summarise, summary_table, write_results

    method_list, density_list, seed_list = _split(methods, str), _split(densities, float), _split(seeds, int)
    if not (method_list and density_list and seed_list):
        _fail("--methods, --densities and --seeds each need at least one value")
    common = dict(model=model, data_dir=data_dir, distribution=distribution, epochs=epochs, batch_size=batch_size,
                  lr=lr, update_every=update_every, drop_rate=drop_rate, kl=kl)
    configs = []
    for name in method_list:
        for density in ([1.0] if name in METHODS and not METHODS[name].sparse else density_list):
            for seed in seed_list:
                config = _guarded(_config, name, dataset, seed, device, density=density, **common)
                _guarded(validate, config)
                configs.append(config)
    rows = []
    columns = ("method", "density", "seed", "accuracy", "ece", "ece_15", "nll", "brier", "mce", "classwise_ece")
    for i, config in enumerate(configs, 1):
        run_dir = out / f"{config.method}-d{config.sparsity.density:g}-s{config.seed}"
        console.print(f"[{i}/{len(configs)}] {config.method} density={config.sparsity.density:g} seed={config.seed}")
        record = _guarded(run, config, run_dir, progress=progress)
        row = flat_record(record, columns)
        if "mc_predictive" in record:  # MC predictive over fresh masks (random-mask methods)
            row.update({f"mc_{k}": record["mc_predictive"][k] for k in ("accuracy", "ece", "nll", "brier")})
        rows.append(row)
    csv_path, json_path = write_results(rows, out)
    stdout = Console() if Console().is_terminal else Console(width=200)  # pipes: no wrapped cells
    metrics = SUMMARY_METRICS + (("mc_accuracy", "mc_ece", "mc_nll") if any("mc_ece" in r for r in rows) else ())
    stdout.print(summary_table(summarise(rows, metrics=metrics), metrics=metrics, title=f"{dataset}: mean ± std over seeds {seeds}"))
    typer.echo(f"wrote {csv_path} and {json_path}")


@app.command()
def ood(
    methods: str = typer.Option("rigl,cigl,moon", "--methods", help="comma-separated methods (moon, moon-set, moon-cigl, moon-vote, ...)"),
    density: float = typer.Option(0.1, "--density", help="fraction of weights kept, in (0, 1]"),
    seeds: str = typer.Option("0,1,2", "--seeds", help="comma-separated seeds"),
    model: Optional[str] = ModelOpt,
    dataset: str = DatasetOpt,
    data_dir: Optional[str] = DataDirOpt,
    epochs: Optional[int] = EpochsOpt,
    batch_size: Optional[int] = BatchOpt,
    lr: Optional[float] = LrOpt,
    moon_warmup: Optional[int] = MoonWarmupOpt,
    device: str = DeviceOpt,
    out: Path = typer.Option(Path("runs/ood"), "--out", help="output folder"),
    progress: bool = ProgressOpt,
) -> None:
    """Train each method and seed, score the ID test set against every OOD set (MSP), print
    AUROC / FPR95 / AUPR-In / AUPR-Out with ID accuracy and ECE (mean ± std), write OUT/results.json."""
    from .methods import validate
    from .results import summarise, summary_table, write_results
    from .runner import run

    method_list, seed_list = _split(methods, str), _split(seeds, int)
    if not (method_list and seed_list):
        _fail("--methods and --seeds each need at least one value")
    configs = []
    for name in method_list:
        for seed in seed_list:
            config = _guarded(_config, name, dataset, seed, device, density=density, model=model, data_dir=data_dir,
                              epochs=epochs, batch_size=batch_size, lr=lr, moon_warmup=moon_warmup)
            _guarded(validate, config)
            configs.append(config)
    rows, means = [], []
    for i, config in enumerate(configs, 1):
        console.print(f"[{i}/{len(configs)}] {config.method} seed={config.seed}")
        record = _guarded(run, config, out / f"{config.method}-s{config.seed}", progress=progress, ood=True)
        if not record["ood"]:
            _fail(f"no OOD sets are available for dataset {dataset!r}; add x_ood arrays to the npz or local folders")
        for ood_set, report in record["ood"].items():
            rows.append({"method": config.method, "seed": config.seed, "ood_set": ood_set, **report,
                         "accuracy": record["accuracy"], "ece": record["ece"]})
        per_set = list(record["ood"].values())
        means.append({"method": config.method, "seed": config.seed, "ood_set": "mean",
                      **{m: sum(r[m] for r in per_set) / len(per_set) for m in per_set[0]},
                      "accuracy": record["accuracy"], "ece": record["ece"]})
    write_results(rows, out)
    metrics = ("auroc", "fpr95", "aupr_in", "aupr_out", "accuracy", "ece")
    stdout = Console() if Console().is_terminal else Console(width=200)
    summary = summarise(rows + means, group_by=("method", "ood_set"), metrics=metrics)
    stdout.print(summary_table(summary, group_by=("method", "ood_set"), metrics=metrics,
                               title=f"{dataset}, density {density}: OOD detection (MSP), mean ± std over seeds {seeds}"))
    typer.echo(f"wrote {out / 'results.json'}, {out / 'results.csv'} and a score histogram per run (OUT/<method>-s<seed>/ood_scores.png)")


def main() -> None:
    """Entry point of the ``cigl-bayes`` script."""
    app()


if __name__ == "__main__":
    main()
