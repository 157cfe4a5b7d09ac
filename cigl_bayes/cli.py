"""``cigl-bayes`` command line: thin calls into the library.

Bad input (density outside (0, 1], unknown method/model/dataset/device, bad labels, a missing data
folder, an unusable or busy --out, a damaged or untrusted checkpoint, a non-finite loss) prints one
``error:`` line and exits with code 2, before anything is trained or written. Help texts list the
registries (methods, models, datasets) and, for ``--set``, the config's fields. A run's config is
layered: defaults < the dataset's recipe < ``--config FILE`` < the options given < ``--set``
(:mod:`cigl_bayes.config_io`). This module imports only torch-free modules
(:mod:`cigl_bayes.names`, :mod:`cigl_bayes.registry`, the config and config_io); torch and the heavy libraries
(pyro, gpytorch, arviz, matplotlib) load in the command bodies after the input checks, so
``--help`` and input errors return at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console

from .config import RunConfig
from .config_io import check, fields_help, layered_config, load_config_file, nest, parse_sets
from .names import COMPARE_DATASETS, DATASET_NAMES, EXPORT_FORMATS, MODEL_NAMES
from .registry import METHODS, validate
from .train.errors import NonFiniteLossError
from .train.run_dir import check_writable_dir, check_writable_file

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Reliable sparse training: CigL, RigL and baselines with calibration metrics.")
console = Console(stderr=True)

# Options shared by `train` and `compare`; None means "the dataset recipe's default".
METHOD_LIST = ", ".join(METHODS)
DATASET_LIST = f"{', '.join(DATASET_NAMES)} or npz:PATH (mnist*: the 'mnist' extra; cifar*: --data-dir)"
ModelOpt = typer.Option(None, "--model", help=f"{', '.join(MODEL_NAMES)} (default: the dataset's recipe)")
DatasetOpt = typer.Option("digits", "--dataset", help=DATASET_LIST)
DataDirOpt = typer.Option(None, "--data-dir", help="folder holding cifar-10-batches-py / cifar-100-python")
EpochsOpt = typer.Option(None, "--epochs", help="training epochs")
BatchOpt = typer.Option(None, "--batch-size", help="mini-batch size")
LrOpt = typer.Option(None, "--lr", help="base learning rate")
DistributionOpt = typer.Option(None, "--distribution", help="erk or uniform layer densities")
UpdateEveryOpt = typer.Option(None, "--update-every", help="dT: iterations between topology updates")
DropRateOpt = typer.Option(None, "--drop-rate", help="CigL random-mask drop rate in [0, 1), or auto (chosen by validation NLL of short pilot runs)")
DeviceOpt = typer.Option("cpu", "--device", help="cpu or cuda")
LearnKeepOpt = typer.Option(None, "--learn-keep/--fixed-keep", help="cigl-svi: learn the keep probability (concrete dropout; needs --kl gal)")
MoonWarmupOpt = typer.Option(None, "--moon-warmup", help="MOON: epochs of plain cross-entropy before the re-weighted loss (5)")
KlOpt = typer.Option(None, "--kl", help="cigl-svi KL term: mc (Monte Carlo through Trace_ELBO) or gal (closed form)")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="show a progress bar")
PrecisionOpt = typer.Option(None, "--precision", help="fp32, or bf16 (training forward and loss under torch.autocast)")
CompileOpt = typer.Option(None, "--compile/--no-compile", help="train through torch.compile(model) (methods without their own objective)")
PRECEDENCE = "defaults < the dataset's recipe < --config < the options given < --set"
ConfigOpt = typer.Option(None, "--config", help="YAML or JSON file, a nested mapping of RunConfig's fields, e.g. "
                         "{method: cigl, sparsity: {density: 0.1}, optim: {lr: 0.05}} (OUT/config.yaml of a run "
                         f"reproduces it); precedence: {PRECEDENCE}")
SetsOpt = typer.Option(None, "--set", help="SECTION.FIELD=VALUE (or FIELD=VALUE at the top level), repeatable; VALUE is "
                       "read as YAML (0.05, 1e-3, true, null, [0.01, 0.1]); wins over every other source. "
                       f"Fields: {fields_help()}")


#: Option name -> the RunConfig field it sets.
OPTION_FIELDS = {
    "method": "method", "seed": "seed", "device": "device", "dataset": "data.dataset",
    "model": "model.name", "data_dir": "data.data_dir", "epochs": "optim.epochs", "batch_size": "data.batch_size",
    "lr": "optim.lr", "density": "sparsity.density", "distribution": "sparsity.distribution",
    "update_every": "sparsity.update_every", "drop_rate": "random_mask.drop_rate", "kl": "bayes.kl",
    "moon_warmup": "moon.warmup_epochs", "learn_keep": "bayes.learn_keep", "precision": "precision", "compile": "compile",
}


def _config(method: str | None, dataset: str | None, seed: int | None, device: str | None, regression_ok: bool = False, *,
            file: dict[str, Any] | None = None, sets: dict[str, Any] | None = None, **overrides: Any) -> RunConfig:
    """The run's config, validated (names, device): the dataset's recipe, then ``file`` (--config),
    then the options given (None: not given), then ``sets`` (--set)."""
    if overrides.get("drop_rate") not in (None, "auto"):
        try:
            overrides["drop_rate"] = float(overrides["drop_rate"])
        except ValueError:
            raise ValueError(f"--drop-rate takes a number in [0, 1) or auto, got {overrides['drop_rate']!r}") from None
    given = {"method": method, "seed": seed, "device": device, "dataset": dataset, **overrides}
    flags = check(nest({OPTION_FIELDS[k]: v for k, v in given.items() if v is not None}), "options")
    config = layered_config(file, flags, sets)
    validate(config, regression_ok=regression_ok)
    return config


def _layers(config_file: Path | None, sets: list[str] | None, axes: dict[str, str] | None = None) -> tuple[dict, dict]:
    """The checked mappings of --config and --set; ``axes`` (the command's grid: field -> option,
    e.g. ``{"seed": "--seeds"}``) cannot be --set."""
    file = _guarded(load_config_file, config_file) if config_file is not None else {}
    overrides = _guarded(parse_sets, sets or [])
    for axis, option in (axes or {}).items():
        section, _, name = axis.partition(".")
        if (name in overrides.get(section, {})) if name else section in overrides:
            _fail(f"--set {axis} is a grid axis of this command; give it with {option} instead")
    return file, overrides


def _given(ctx: typer.Context, name: str, value: Any) -> Any:
    """``value`` if the user typed option ``name``, else None (so --config may set it)."""
    source = ctx.get_parameter_source(name)  # typer's vendored click's ParameterSource: compare by name
    return None if source is None or source.name in ("DEFAULT", "DEFAULT_MAP") else value


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _guarded(fn, *args, **kwargs):
    """Run ``fn`` turning input/data/file/training errors into one line and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, OSError, NonFiniteLossError) as error:  # DataError, CheckpointError, OutputDirError: ValueError
        _fail(" ".join(str(error).splitlines()) or type(error).__name__)


@app.command()
def train(
    ctx: typer.Context,
    method: str = typer.Option("cigl", "--method", help=METHOD_LIST),
    model: Optional[str] = ModelOpt,
    dataset: str = DatasetOpt,
    data_dir: Optional[str] = DataDirOpt,
    density: Optional[float] = typer.Option(None, "--density", help="fraction of weights kept, in (0, 1]"),
    distribution: Optional[str] = DistributionOpt,
    epochs: Optional[int] = EpochsOpt,
    batch_size: Optional[int] = BatchOpt,
    lr: Optional[float] = LrOpt,
    update_every: Optional[int] = UpdateEveryOpt,
    drop_rate: Optional[str] = DropRateOpt,
    kl: Optional[str] = KlOpt,
    learn_keep: Optional[bool] = LearnKeepOpt,
    moon_warmup: Optional[int] = MoonWarmupOpt,
    precision: Optional[str] = PrecisionOpt,
    compile_model: Optional[bool] = CompileOpt,
    seed: int = typer.Option(0, "--seed"),
    device: str = DeviceOpt,
    out: Path = typer.Option(Path("runs/train"), "--out", help="output folder"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/checkpoint.pt if present"),
    progress: bool = ProgressOpt,
    config_file: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetsOpt,
) -> None:
    """Train one model; write OUT/config.yaml (--config OUT/config.yaml repeats the run), OUT/epochs.csv
    (one row per epoch, appended as training runs: epoch, train loss, lr, elapsed seconds), TensorBoard
    scalars in OUT/tensorboard/ (when the tensorboard package is installed), OUT/metrics.json,
    OUT/reliability.png, OUT/checkpoint.pt and the final weights as OUT/model.safetensors. OUT is
    locked while the run writes into it. Settings: defaults < the dataset's recipe < --config <
    the options given < --set."""
    file, overrides = _layers(config_file, sets)
    config = _guarded(_config, _given(ctx, "method", method), _given(ctx, "dataset", dataset), _given(ctx, "seed", seed),
                      _given(ctx, "device", device), file=file, sets=overrides, model=model, data_dir=data_dir,
                      density=density, distribution=distribution, epochs=epochs, batch_size=batch_size, lr=lr,
                      update_every=update_every, drop_rate=drop_rate, kl=kl, moon_warmup=moon_warmup,
                      learn_keep=learn_keep, precision=precision, compile=compile_model)
    method, dataset = config.method, config.data.dataset
    _guarded(check_writable_dir, out)  # before torch loads; the run then locks OUT
    from .metrics.calibration import ECE_BINS
    from .runner import run

    record = _guarded(run, config, out, progress=progress, resume=resume)
    labels = {"accuracy": "accuracy", "ece": f"ece ({ECE_BINS} bins)", "nll": "nll", "brier": "brier"}
    typer.echo(f"{method} on {dataset}: " + ", ".join(f"{v} {record[k]:.4f}" for k, v in labels.items())
               + f"  -> {out / 'metrics.json'}")


_LIST_TYPES = {int: "integers", float: "numbers", str: "names"}


def _split(text: str, cast, option: str) -> list:
    """``"a, b"`` -> ``[cast("a"), cast("b")]``; a value ``cast`` rejects is an error naming ``option``."""
    try:
        return [cast(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError:
        _fail(f"could not parse {option} {text!r} as comma-separated {_LIST_TYPES[cast]}")


@app.command()
def compare(
    ctx: typer.Context,
    methods: str = typer.Option("dense,rigl,cigl", "--methods", help=f"comma-separated, of: {METHOD_LIST}"),
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
    drop_rate: Optional[str] = DropRateOpt,
    kl: Optional[str] = KlOpt,
    learn_keep: Optional[bool] = LearnKeepOpt,
    precision: Optional[str] = PrecisionOpt,
    compile_model: Optional[bool] = CompileOpt,
    device: str = DeviceOpt,
    out: Path = typer.Option(Path("runs/compare"), "--out", help="output folder"),
    progress: bool = ProgressOpt,
    config_file: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetsOpt,
) -> None:
    """Run the grid methods x densities x seeds; print mean ± std; write OUT/results.csv and results.json
    (and each run's files, as `train` does, in OUT/<method>-d<density>-s<seed>/). The grid options
    win over --config; --set takes every other field."""
    file, overrides = _layers(config_file, sets, axes={"method": "--methods", "sparsity.density": "--densities", "seed": "--seeds"})
    method_list = _split(methods, str, "--methods")
    density_list, seed_list = _split(densities, float, "--densities"), _split(seeds, int, "--seeds")
    if not (method_list and density_list and seed_list):
        _fail("--methods, --densities and --seeds each need at least one value")
    common = dict(model=model, data_dir=data_dir, distribution=distribution, epochs=epochs, batch_size=batch_size,
                  lr=lr, update_every=update_every, drop_rate=drop_rate, kl=kl, learn_keep=learn_keep, precision=precision,
                  compile=compile_model)
    configs = []
    for name in method_list:
        for density in ([1.0] if name in METHODS and not METHODS[name].sparse else density_list):
            for seed in seed_list:
                config = _guarded(_config, name, _given(ctx, "dataset", dataset), seed, _given(ctx, "device", device),
                                  density=density, file=file, sets=overrides, **common)
                configs.append(config)
    _guarded(check_writable_dir, out)
    from .metrics.calibration import ECE_BINS
    from .results import flat_record, summarise, summary_table, write_results
    from .runner import run

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
    stdout = _stdout()
    stdout.print(f"{configs[0].data.dataset}: {_over_seeds(seed_list)}")
    stdout.print(summary_table(summarise(rows)))
    stdout.print(f"ece: {ECE_BINS} equal-width bins; nll in nats per example; every metric of every run is in "
                 f"{csv_path.name}\n")
    mc_rows = [r for r in rows if "mc_ece" in r]
    if mc_rows:
        mc_metrics = ("mc_accuracy", "mc_ece", "mc_nll", "mc_brier")
        stdout.print(summary_table(summarise(mc_rows, metrics=mc_metrics), metrics=mc_metrics))
        stdout.print(f"mc_*: MC predictive, predictions averaged over {configs[0].eval.mc_samples} fresh random masks "
                     "of the final network (random-mask methods); the table above scores the method's own model\n")
    typer.echo(f"wrote {csv_path} and {json_path}")


def _stdout() -> Console:
    """Console for result tables: the terminal's width, or 100 columns in a pipe or file."""
    return Console(highlight=False) if Console().is_terminal else Console(width=100, highlight=False)


def _over_seeds(seeds: list[int]) -> str:
    return f"mean ± std over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"


@app.command()
def ood(
    ctx: typer.Context,
    methods: str = typer.Option("rigl,cigl,moon", "--methods", help=f"comma-separated, of: {METHOD_LIST} (moon*: MOON's unknown class)"),
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
    config_file: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetsOpt,
) -> None:
    """Train each method and seed, score the ID test set against every OOD set (MSP), print
    AUROC / FPR95 / AUPR-In / AUPR-Out with ID accuracy and ECE (mean ± std), write OUT/results.json."""
    file, overrides = _layers(config_file, sets, axes={"method": "--methods", "seed": "--seeds"})
    method_list, seed_list = _split(methods, str, "--methods"), _split(seeds, int, "--seeds")
    if not (method_list and seed_list):
        _fail("--methods and --seeds each need at least one value")
    configs = []
    for name in method_list:
        for seed in seed_list:
            config = _guarded(_config, name, _given(ctx, "dataset", dataset), seed, _given(ctx, "device", device),
                              density=_given(ctx, "density", density), file=file, sets=overrides, model=model,
                              data_dir=data_dir, epochs=epochs, batch_size=batch_size, lr=lr, moon_warmup=moon_warmup)
            configs.append(config)
    _require_ood_sets(configs[0])
    _guarded(check_writable_dir, out)
    from .metrics.calibration import ECE_BINS
    from .metrics.ood import near_far_means
    from .results import summarise, summary_table, write_results
    from .runner import run

    rows, means = [], []
    for i, config in enumerate(configs, 1):
        console.print(f"[{i}/{len(configs)}] {config.method} seed={config.seed}")
        record = _guarded(run, config, out / f"{config.method}-s{config.seed}", progress=progress, ood=True)
        for ood_set, report in record["ood"].items():
            rows.append({"method": config.method, "seed": config.seed, "ood_set": ood_set, **report,
                         "accuracy": record["accuracy"], "ece": record["ece"]})
        for group, mean in near_far_means(record["ood"]).items():
            means.append({"method": config.method, "seed": config.seed, "ood_set": f"mean {group}-OOD", **mean,
                          "accuracy": record["accuracy"], "ece": record["ece"]})
    write_results(rows, out)
    stdout = _stdout()
    detection = ("auroc", "fpr95", "aupr_in", "aupr_out")
    summary = summarise(rows + means, group_by=("method", "ood_set"), metrics=detection)
    stdout.print(f"{configs[0].data.dataset}, density {configs[0].sparsity.density:g}: OOD detection (MSP score), "
                 f"{_over_seeds(seed_list)}")
    stdout.print(summary_table(summary, group_by=("method", "ood_set"), metrics=detection))
    in_distribution = ("accuracy", "ece")
    stdout.print(f"\nin-distribution test split (ece: {ECE_BINS} equal-width bins)")
    per_run = [m for m in means if m["ood_set"] == means[0]["ood_set"]]  # one row per run
    stdout.print(summary_table(summarise(per_run, group_by=("method",), metrics=in_distribution), group_by=("method",),
                               metrics=in_distribution))
    typer.echo(f"wrote {out / 'results.json'}, {out / 'results.csv'} and a score histogram per run (OUT/<method>-s<seed>/ood_scores.png)")


def _require_ood_sets(config: RunConfig) -> None:
    """Fail (one line, before any training) unless ``config``'s dataset has OOD sets."""
    from .data import load_dataset, ood_sets

    data = _guarded(load_dataset, config.data.dataset, config.data.data_dir, config.data.val_fraction)
    if not _guarded(ood_sets, data, config.data.data_dir):
        _fail(f"no OOD sets are available for dataset {config.data.dataset!r}; add x_ood (or x_ood_NAME) arrays to the "
              "npz, or the other CIFAR / SVHN test files under --data-dir")


ArmsHelp = ("comma-separated arms METHOD[+key=value...], e.g. cigl+drop_rate=0.01 "
            "(keys: drop_rate, hold_lr, sample_mask, epochs, lr, model, batch_size or section.field)")
SetOpt = typer.Option("", "--set", help="overrides for every arm, comma-separated key=value (same keys as in --methods)")
BenchConfigOpt = typer.Option(None, "--config", help="YAML or JSON file of RunConfig fields for every arm (as `train "
                              "--config`; method, seed, density and dataset come from the grid); precedence: the "
                              "dataset's recipe < --config < --set < the arm's own keys")
BaselineOpt = typer.Option("rigl", "--baseline", help="the arm the paired differences are taken against")
JobsOpt = typer.Option(2, "--jobs", help="runs trained side by side (worker processes)")
ThreadsOpt = typer.Option(1, "--threads", help="torch threads per worker")


BENCH_AXES = ("method", "seed", "sparsity.density", "data.dataset")


def _bench_base(settings: str, config_file: Path | None) -> dict[str, Any]:
    """The benchmark-wide ``RunConfig.with_`` overrides: --config (less the grid's axes), then --set,
    names and types checked."""
    from .benchmark import parse_overrides

    dotted = {k.replace("__", "."): v for k, v in _guarded(parse_overrides, _split(settings, str, "--set"), settings).items()}
    for axis in BENCH_AXES:
        if axis in dotted:
            _fail(f"--set {axis} is a grid axis; give it with --methods / --seeds / --densities / --datasets")
    checked = _guarded(check, nest(dotted), "--set")
    file = _guarded(load_config_file, config_file) if config_file is not None else {}
    flat = {}
    for layer in (file, checked):
        for key, value in layer.items():
            for name, item in (value.items() if isinstance(value, dict) else [(None, value)]):
                dotted_key = f"{key}.{name}" if name else key
                if dotted_key not in BENCH_AXES:
                    flat[dotted_key.replace(".", "__")] = item
    return flat


def _bench(kind: str, datasets: str, methods: str, densities: str, seeds: str, settings: str, baseline: str, jobs: int,
           threads: int, out: Path, config_file: Path | None = None) -> None:
    """The grid of ``bench-calibration`` (``kind="calibration"``) or ``bench-ood`` (``"ood"``):
    train (resumably), write the records, the markdown report and, for calibration, the plots."""
    from .benchmark import parse_arms

    arms = _guarded(parse_arms, methods)
    base = _bench_base(settings, config_file)
    dataset_list, density_list = _split(datasets, str, "--datasets"), _split(densities, float, "--densities")
    seed_list = _split(seeds, int, "--seeds")
    if not (dataset_list and density_list and seed_list):
        _fail("--datasets, --densities and --seeds each need at least one value")
    if baseline not in [a.label for a in arms]:
        _fail(f"--baseline {baseline!r} is not one of the arms in --methods ({methods})")
    if jobs < 1 or threads < 1:
        _fail("--jobs and --threads must be >= 1")
    if kind == "ood":
        for name in dataset_list:
            _require_ood_sets(_guarded(arms[0].config, name, density_list[0], seed_list[0], base))
    _guarded(check_writable_dir, out)
    from rich.progress import Progress

    from .benchmark import ood_report_markdown, plot_vs_sparsity, report_markdown, run_grid
    from .results import write_results

    with Progress(console=console) as bar:
        task = bar.add_task(f"bench-{kind}", total=None)

        def advance(record: dict, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total,
                       description=f"{record['dataset']} {record['arm']} d={record['density']:g} s={record['seed']}")

        records = _guarded(run_grid, dataset_list, arms, density_list, seed_list, out, jobs=jobs, threads=threads,
                           base=base, on_record=advance, ood=kind == "ood")
    records.sort(key=lambda r: (dataset_list.index(r["dataset"]), r["arm"], -r["density"], r["seed"]))
    write_results(records, out, stem="records")
    report = (ood_report_markdown if kind == "ood" else report_markdown)(records, baseline)
    (out / "report.md").write_text(report)
    if kind == "calibration":
        for name in dataset_list:
            plot_vs_sparsity(records, out / f"{name.replace(':', '_').replace('/', '_')}.png", dataset=name)
    typer.echo(report)
    typer.echo(f"wrote {out / 'report.md'}, {out / 'records.csv'} and {out / 'records.json'}"
               + (" and a plot per dataset" if kind == "calibration" else ""))


@app.command("bench-calibration")
def bench_calibration(
    datasets: str = typer.Option("digits-hard,mnist,mnist-hard", "--datasets", help=f"comma-separated, of: {DATASET_LIST}"),
    methods: str = typer.Option("rigl,cigl,cigl+drop_rate=0.1", "--methods", help=ArmsHelp),
    densities: str = typer.Option("0.2,0.1,0.05,0.02", "--densities", help="comma-separated densities"),
    seeds: str = typer.Option("0,1,2", "--seeds", help="comma-separated seeds"),
    settings: str = SetOpt,
    baseline: str = BaselineOpt,
    jobs: int = JobsOpt,
    threads: int = ThreadsOpt,
    out: Path = typer.Option(Path("runs/bench-calibration"), "--out", help="output folder (re-running resumes it)"),
    config_file: Optional[Path] = BenchConfigOpt,
) -> None:
    """Methods x densities x seeds on each dataset: OUT/report.md (mean ± std and the paired per-seed
    difference against --baseline), OUT/<dataset>.png (accuracy and ECE against sparsity) and
    OUT/records.{csv,json}. Finished runs are kept in OUT/records/ and not trained again."""
    _bench("calibration", datasets, methods, densities, seeds, settings, baseline, jobs, threads, out, config_file)


@app.command("bench-ood")
def bench_ood(
    datasets: str = typer.Option("digits-open,mnist-hard-open", "--datasets",
                                 help="comma-separated datasets with OOD sets (the *-open splits hold near-OOD classes)"),
    methods: str = typer.Option("rigl,rigl-avg,moon-ce,moon-no-avg,moon,moon-cigl", "--methods", help=ArmsHelp),
    densities: str = typer.Option("0.1,0.05", "--densities", help="comma-separated densities"),
    seeds: str = typer.Option("0,1,2,3,4", "--seeds", help="comma-separated seeds"),
    settings: str = SetOpt,
    baseline: str = BaselineOpt,
    jobs: int = JobsOpt,
    threads: int = ThreadsOpt,
    out: Path = typer.Option(Path("runs/bench-ood"), "--out", help="output folder (re-running resumes it)"),
    config_file: Optional[Path] = BenchConfigOpt,
) -> None:
    """Methods x densities x seeds, each run scored on every OOD set of its dataset (MSP):
    OUT/report.md (ID accuracy / ECE, near- and far-OOD AUROC / FPR95, mean ± std, and the paired
    per-seed difference against --baseline) and OUT/records.{csv,json} (every set's AUROC / FPR95)."""
    _bench("ood", datasets, methods, densities, seeds, settings, baseline, jobs, threads, out, config_file)


@app.command("dgp-compare")
def dgp_compare(
    ctx: typer.Context,
    dataset: str = typer.Option("all", "--dataset", help=f"comma-separated, of: {', '.join(COMPARE_DATASETS)} (or all)"),
    method: str = typer.Option("cigl", "--method", help=f"the network's method, of: {METHOD_LIST}"),
    seeds: str = typer.Option("0", "--seeds", help="comma-separated seeds"),
    model: Optional[str] = ModelOpt,
    density: Optional[float] = typer.Option(None, "--density", help="fraction of weights kept, in (0, 1]"),
    epochs: Optional[int] = EpochsOpt,
    lr: Optional[float] = LrOpt,
    drop_rate: Optional[str] = DropRateOpt,
    mc_samples: int = typer.Option(50, "--mc-samples", help="random masks in the network's MC predictive"),
    dgp_epochs: Optional[int] = typer.Option(None, "--dgp-epochs", help="deep-GP epochs (default: 200 regression / 100 classification, at least 2000 steps)"),
    inducing: int = typer.Option(64, "--inducing", help="inducing points per deep-GP layer"),
    device: str = DeviceOpt,
    out: Path = typer.Option(Path("runs/dgp-compare"), "--out", help="output folder"),
    progress: bool = ProgressOpt,
    config_file: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetsOpt,
) -> None:
    """Train the sparse network and a GPyTorch deep GP on the same split of each dataset; print the
    side-by-side test scores; write OUT/<dataset>/comparison.{json,png} and OUT/comparison.md.
    --config / --set configure the network's run (every field but the dataset and seed, which are
    --dataset and --seeds); the deep GP takes --dgp-epochs and --inducing."""
    import json

    file, overrides = _layers(config_file, sets, axes={"data.dataset": "--dataset", "seed": "--seeds"})

    names = list(COMPARE_DATASETS) if dataset.strip() == "all" else _split(dataset, str, "--dataset")
    unknown = [n for n in names if n not in COMPARE_DATASETS]
    if unknown or not names:
        _fail(f"unknown --dataset {dataset!r}; choose from {', '.join(COMPARE_DATASETS)} or all")
    seed_list = _split(seeds, int, "--seeds")
    if not seed_list:
        _fail("--seeds needs at least one value")
    if mc_samples < 2:
        _fail(f"--mc-samples must be >= 2, got {mc_samples}")
    configs = {n: _guarded(_config, _given(ctx, "method", method), n, 0, _given(ctx, "device", device), regression_ok=True,
                           file=file, sets=overrides, model=model, density=density, epochs=epochs, lr=lr,
                           drop_rate=drop_rate) for n in names}
    if any(c.random_mask.drop_rate == "auto" for c in configs.values()):  # --drop-rate, --config or --set
        _fail("dgp-compare takes a numeric --drop-rate (random_mask.drop_rate; auto scores classifier pilot runs); "
              "e.g. --drop-rate 0.01")
    from .dgp.compare import compare_with_dgp
    from .dgp.deep_gp import DGPConfig  # gpytorch

    dgp_config = _guarded(DGPConfig, epochs=dgp_epochs, num_inducing=inducing)
    _guarded(check_writable_dir, out)
    tables = []
    for i, name in enumerate(names, 1):
        console.print(f"[{i}/{len(names)}] {name}: {configs[name].method} network and deep GP, seeds {seed_list}")
        comparison = _guarded(compare_with_dgp, name, seed_list, configs[name], dgp_config, mc_samples, progress=progress)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "comparison.json").write_text(json.dumps(comparison.to_dict(), indent=2))
        comparison.plot(folder / "comparison.png")
        kernel = ", ".join(f"width {w}: {e:.3f}" for w, e in comparison.kernel_errors.items())
        tables.append(f"{comparison.to_markdown()}\n\nMC-predictive NLL minus the DGP's: {comparison.nll_difference():+.3f} nats "
                      f"({100 * comparison.nll_gap():+.1f} %); "
                      f"one-hidden-layer kernel vs arc-cosine, relative error: {kernel}\n")
        typer.echo(tables[-1])
    (out / "comparison.md").write_text("\n".join(tables))
    typer.echo(f"wrote {out / 'comparison.md'} and OUT/<dataset>/comparison.json, comparison.png")


@app.command()
def export(
    run_dir: Path = typer.Option(..., "--run", help="run folder holding checkpoint.pt (from `train`)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output file (default RUN/model-sparse.npz)"),
    format: str = typer.Option("bitmask", "--format", help="bitmask (packed bits + non-zeros) or csr"),
    values_dtype: str = typer.Option("float32", "--values-dtype", help="float32 (exact) or float16"),
) -> None:
    """Export a run's final model in a compressed sparse format; print its size against the dense state dict."""
    if format not in EXPORT_FORMATS:
        _fail(f"unknown --format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if not run_dir.is_dir():
        _fail(f"no run folder at {run_dir}; pass the --out folder of `cigl-bayes train`")
    checkpoint_path = run_dir / "checkpoint.pt"
    if not checkpoint_path.is_file():
        _fail(f"no checkpoint at {checkpoint_path}; train first (`cigl-bayes train --out {run_dir}`)")
    target = out if out is not None else run_dir / "model-sparse.npz"
    _guarded(check_writable_file, target)
    from .evaluate import measured_density
    from .export import dense_state_bytes, export_sparse, model_from_run
    from .train import load_checkpoint

    checkpoint = _guarded(load_checkpoint, checkpoint_path)  # tensors and plain data only: no code runs
    if not isinstance(checkpoint, dict):
        _fail(f"{checkpoint_path} is not a cigl-bayes checkpoint")
    model, meta = _guarded(model_from_run, checkpoint)
    path = _guarded(export_sparse, model, target, meta, format, values_dtype)
    size, dense = path.stat().st_size, dense_state_bytes(model)
    density = measured_density(model)
    typer.echo(f"wrote {path} ({format}, {values_dtype}): {size:,} bytes vs dense float32 state_dict {dense:,} bytes "
               f"= {size / dense:.3f} x (weight density {density:.3f})")


@app.command()
def predict(
    model_file: Path = typer.Option(..., "--model", help="file written by `cigl-bayes export`"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="digits or npz:PATH (default: the training dataset)"),
    data_dir: Optional[str] = DataDirOpt,
    out: Optional[Path] = typer.Option(None, "--out", help="CSV of class probabilities and predicted labels "
                                                           "(default: preds.csv beside the --model file)"),
    batch_size: int = typer.Option(512, "--batch-size", help="inference batch size"),
) -> None:
    """Predict the test split of a dataset with an exported model; write OUT (probabilities, labels), print accuracy."""
    out = out if out is not None else model_file.parent / "preds.csv"
    _guarded(check_writable_file, out)
    import csv

    import torch

    from .data import load_dataset
    from .export import load_sparse
    from .runner import known_class_probs

    model, meta = _guarded(load_sparse, model_file)
    name = dataset or meta.get("dataset") or "digits"
    data = _guarded(load_dataset, name, data_dir)
    if tuple(data.input_shape) != tuple(meta["input_shape"]):
        _fail(f"{name} has inputs of shape {tuple(data.input_shape)} but the model expects {tuple(meta['input_shape'])}")
    labels = int(meta.get("labels", data.num_classes))
    if labels != data.num_classes:
        _fail(f"{name} has {data.num_classes} classes but the model was trained on {labels}")
    if batch_size < 1:
        _fail(f"--batch-size must be >= 1, got {batch_size}")
    with torch.inference_mode():
        logits = torch.cat([model(x) for x in data.x_test.split(batch_size)])
    probs = known_class_probs(logits.softmax(-1), labels)
    pred = probs.argmax(-1)
    accuracy = float((pred == data.y_test).float().mean())
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "label", "pred", *[f"p{k}" for k in range(labels)]])
        for i, (y, p, row) in enumerate(zip(data.y_test.tolist(), pred.tolist(), probs.tolist())):
            writer.writerow([i, y, p, *[f"{v:.6g}" for v in row]])
    typer.echo(f"{name} test: accuracy {accuracy:.4f} over {len(pred)} examples -> {out}")


def main() -> None:
    """Entry point of the ``cigl-bayes`` script."""
    app()


if __name__ == "__main__":
    main()
