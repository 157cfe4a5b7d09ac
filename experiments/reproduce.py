"""Reproduce one of the papers' CIFAR tables (see ``experiments/tables.py``) from a local CIFAR folder.

    python3 experiments/reproduce.py --list
    python3 experiments/reproduce.py cigl-c10-resnet50 --data-dir ~/data --device cuda --out runs/cigl-c10-resnet50
    python3 experiments/reproduce.py moon-c10-resnet18 --smoke --out /tmp/smoke      # CI: a few steps on random data

Runs the grid (methods x densities x seeds) with ``cigl_bayes.runner.run`` (one folder per run under
OUT), writes OUT/results.csv and OUT/results.json and prints mean ± std next to the paper's numbers.
``--smoke`` swaps the data for ``synthetic:3,32,32:K:256`` (K = the dataset's classes), one density,
2 epochs of batch 32 and a small model where the paper's is too slow on a CPU (said in the output).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tables import SMOKE_DENSITY, SMOKE_EXAMPLES, SMOKE_OVERRIDES, TABLES  # noqa: E402

ID_COLUMNS = ("method", "density", "seed", "accuracy", "ece", "ece_15", "nll", "brier", "mce")
OOD_METRICS = ("auroc", "fpr95", "aupr_in", "aupr_out")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _parse_list(text: str | None, cast, flag: str) -> list | None:
    if text is None:
        return None
    try:
        values = [cast(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError:
        _fail(f"could not parse {flag} {text!r} as a comma-separated list")
    if not values:
        _fail(f"{flag} needs at least one value")
    return values


def build_grid(table: dict[str, Any], args: argparse.Namespace) -> tuple[list, list[str]]:
    """The configurations of the table (after --smoke / subsets) and notes on what was changed."""
    from cigl_bayes.config import recipe
    from cigl_bayes.methods import validate

    notes: list[str] = []
    methods = _parse_list(args.methods, str, "--methods") or list(table["methods"])
    densities = _parse_list(args.densities, float, "--densities") or list(table["densities"])
    seeds = _parse_list(args.seeds, int, "--seeds") or list(table["seeds"])
    dataset, model, changes = table["dataset"], table["model"], dict(table["overrides"])
    if args.smoke:
        k = NUM_CLASSES[dataset]
        dataset = f"synthetic:3,32,32:{k}:{SMOKE_EXAMPLES}"
        smoke_model = args.smoke_model or table.get("smoke_model", model)
        if smoke_model != model:
            notes.append(f"smoke: model {model} -> {smoke_model} (the paper's is too slow on a CPU; --smoke-model {model} keeps it)")
            model = smoke_model
        if args.densities is None:
            densities = [SMOKE_DENSITY]
        if args.seeds is None:
            seeds = [0]
        changes.update(SMOKE_OVERRIDES)
        notes.append(f"smoke: random data {dataset}, {changes['optim__epochs']} epochs of batch {changes['data__batch_size']}, "
                     f"densities {densities}, seeds {seeds}: the numbers mean nothing")
    configs = []
    for method in methods:
        for density in densities:
            for seed in seeds:
                config = recipe(table["dataset"], table["model"]).with_(
                    method=method, seed=seed, device=args.device, data__dataset=dataset, data__data_dir=args.data_dir,
                    model__name=model, sparsity__density=density, **changes)
                try:
                    validate(config)
                except ValueError as exc:
                    _fail(str(exc))
                configs.append(config)
    return configs, notes


def check_data(dataset: str, data_dir: str | None) -> None:
    """A one-line error naming --data-dir when the CIFAR folder is missing."""
    from cigl_bayes.data.datasets import _CIFAR_SPECS, DataError, _default_data_dir, _find_cifar_root

    base = Path(data_dir).expanduser() if data_dir is not None else _default_data_dir()
    try:
        _find_cifar_root(base, _CIFAR_SPECS[dataset], "CIFAR-10" if dataset == "cifar10" else "CIFAR-100")
    except DataError as exc:
        _fail(f"{exc} (or use --smoke for random data)")


def run_dir(out: Path, config) -> Path:
    return out / f"{config.method}-d{config.sparsity.density:g}-s{config.seed}"


def run_one(config, directory: Path, ood: bool, resume: bool, progress: bool) -> dict[str, Any]:
    """Run (or, with --resume, reuse a finished run of the same configuration)."""
    from cigl_bayes.runner import run

    metrics = directory / "metrics.json"
    if resume and metrics.is_file():
        record = json.loads(metrics.read_text())
        if record.get("config") == json.loads(json.dumps(config.to_dict())) and (not ood or "ood" in record):
            return record
    return run(config, directory, progress=progress, resume=resume, ood=ood)


def row_of(record: dict[str, Any], ood: bool) -> dict[str, Any]:
    row = {k: record.get(k) for k in ID_COLUMNS}
    if "mc_predictive" in record:  # random-mask methods: MC predictive over fresh masks
        row.update({f"mc_{k}": record["mc_predictive"][k] for k in ("accuracy", "ece", "nll", "brier")})
    if ood:
        sets = record.get("ood", {})
        for m in OOD_METRICS:  # mean over the OOD sets, then per set
            row[m] = sum(r[m] for r in sets.values()) / len(sets) if sets else None
        for name, report in sets.items():
            row.update({f"{m}:{name}": report[m] for m in OOD_METRICS})
    return row


def comparison_table(rows: list[dict[str, Any]], table: dict[str, Any], metrics: tuple[str, ...], title: str):
    """mean ± std per (method, density) with the paper's number beside each reported metric."""
    from rich.table import Table

    from cigl_bayes.results import summarise

    reported = table.get("reported", {})
    out = Table(title=title)
    for col in ("method", "density", "runs"):
        out.add_column(col)
    for m in metrics:
        out.add_column(m, justify="right")
        if m in reported:
            out.add_column(f"paper {m}", justify="right")
    for entry in summarise(rows, metrics=metrics):
        cells = [str(entry["method"]), f"{entry['density']:g}", str(entry["runs"])]
        for m in metrics:
            mean = entry[f"{m}_mean"]
            cells.append("—" if mean is None else f"{mean:.4f} ± {entry[f'{m}_std']:.4f}")
            if m in reported:
                paper = reported[m].get(entry["method"], {}).get(entry["density"])
                cells.append("—" if paper is None else f"{paper:.4f}")
        out.add_row(*cells)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", nargs="?", help="table name (see --list)")
    parser.add_argument("--list", action="store_true", help="print the tables and exit")
    parser.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py / cifar-100-python (default $CIGL_BAYES_DATA_DIR or ./data)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the table's, 0,1,2; smoke: 0)")
    parser.add_argument("--methods", default=None, help="subset of the table's methods, comma-separated")
    parser.add_argument("--densities", default=None, help="subset of the table's densities, comma-separated")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/TABLE, smoke: runs/TABLE-smoke)")
    parser.add_argument("--smoke", action="store_true", help="a few steps on random data (CI)")
    parser.add_argument("--smoke-model", default=None, help="model for --smoke (default: the table's smoke model)")
    parser.add_argument("--resume", action="store_true", help="reuse finished runs of the same config; resume from checkpoints")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars (default: on a terminal, not with --smoke)")
    args = parser.parse_args(argv)

    if args.list:
        for name, table in TABLES.items():
            print(f"{name:20s} {table['title']}")
            print(f"{'':20s} methods {','.join(table['methods'])}; densities {','.join(f'{d:g}' for d in table['densities'])}; "
                  f"seeds {','.join(map(str, table['seeds']))}{'; OOD' if table['ood'] else ''}")
        return
    if args.table is None:
        _fail(f"name a table: {', '.join(TABLES)} (or --list)")
    if args.table not in TABLES:
        _fail(f"unknown table {args.table!r}; choose one of: {', '.join(TABLES)}")
    table = TABLES[args.table]
    configs, notes = build_grid(table, args)
    if not args.smoke:
        check_data(table["dataset"], args.data_dir)
    out = args.out or Path("runs") / (args.table + ("-smoke" if args.smoke else ""))
    progress = args.progress if args.progress is not None else (not args.smoke and sys.stderr.isatty())
    for note in notes:
        print(note)

    rows, start = [], time.perf_counter()
    for i, config in enumerate(configs, 1):
        print(f"[{i}/{len(configs)}] {config.method} density={config.sparsity.density:g} seed={config.seed}", flush=True)
        try:
            record = run_one(config, run_dir(out, config), table["ood"], args.resume, progress)
        except ValueError as exc:  # data / configuration errors: one line
            _fail(str(exc))
        rows.append(row_of(record, table["ood"]))
    from rich.console import Console

    from cigl_bayes.results import write_results

    csv_path, json_path = write_results(rows, out)

    metrics = ("accuracy", "ece", "nll", "brier") + (OOD_METRICS if table["ood"] else ())
    if any("mc_ece" in r for r in rows):
        metrics += ("mc_accuracy", "mc_ece")
    console = Console() if Console().is_terminal else Console(width=220)
    title = f"{args.table}: {table['title']}" + (" [SMOKE: random data]" if args.smoke else "")
    console.print(comparison_table(rows, table, metrics, title))
    if table.get("reported_note"):
        print(f"paper: {table['reported_note']}")
    print(f"{len(configs)} runs in {time.perf_counter() - start:.1f} s; wrote {csv_path} and {json_path}")


if __name__ == "__main__":
    main()
