"""Sparse export benchmark: file size and CPU inference latency, sparse vs dense.

Models (random ERK supports from ``SparseNet``, weights masked, non-trivial BatchNorm statistics):
MLP 784-2048-2048-10, the digits CNN (1x8x8) and WRN-22-2 (3x32x32).

* File size of ``export_sparse`` (bitmask / CSR float32, bitmask float16) over ``torch.save`` of
  the dense float32 state dict (MLP and CNN).
* CPU inference latency (``torch.inference_mode``) at batch 1 and 64, 1 and 2 threads, of
  ``dense`` (the model as users have it), ``dense_folded`` (BatchNorm folded into convs, no sparse
  layers: the fair dense baseline), ``sparse`` (``to_sparse_inference`` with its fixed rule) and
  ``sparse_probed`` (``to_sparse_inference(example_input=x)``: per-layer measured choice). All
  variants are timed in one run, interleaved, with the order rotated every round; medians.
  Each row also checks the outputs: max |sparse - dense| / max |dense|.

Run:  python3 experiments/bench_export.py [--rounds 30] [--out runs/bench_export.json] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cigl_bayes.export import SparseLinearInference, dense_state_bytes, export_sparse, to_sparse_inference
from cigl_bayes.models import MLP, build_model
from cigl_bayes.sparse.network import SparseNet
from cigl_bayes.sparse_inference import SparseConv2dInference, fold_batchnorm
from cigl_bayes.sparse_kernel import load_kernel

SHAPES = {"mlp": (784,), "cnn": (1, 8, 8), "wrn-22-2": (3, 32, 32)}


def masked_model(name: str, density: float, seed: int = 0) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """``name`` with a random ERK support of global ``density`` (zeros written) and random BN statistics."""
    torch.manual_seed(seed)
    shape = SHAPES[name]
    model = MLP(shape, 10, hidden_sizes=(2048, 2048)) if name == "mlp" else build_model(name, shape, 10)
    net = SparseNet(model, density, "erk", seed=seed)
    for m in net.module.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return net.module.eval(), shape


def interleaved_latency(models: dict[str, torch.nn.Module], x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median seconds per forward of each model; one call of each per round, order rotated every round."""
    names = list(models)
    times: dict[str, list[float]] = {k: [] for k in names}
    with torch.inference_mode():
        for m in models.values():
            for _ in range(3):
                m(x)
        for r in range(rounds):
            shift = r % len(names)
            for k in names[shift:] + names[:shift]:
                start = time.perf_counter()
                models[k](x)
                times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def size_ratios(model: torch.nn.Module, name: str, tmp: Path) -> dict[str, float]:
    dense_bytes = dense_state_bytes(model)
    sizes = {}
    for fmt, vd in (("bitmask", "float32"), ("csr", "float32"), ("bitmask", "float16")):
        path = export_sparse(model, tmp / f"{name}-{fmt}-{vd}.npz", {"model": name}, fmt, vd)
        sizes[f"{fmt}_{vd}"] = path.stat().st_size / dense_bytes
    return sizes


def count_sparse(model: torch.nn.Module) -> int:
    """Sparse layers (a ``SparseLinearInference``'s inner 1x1 kernel conv is not counted again)."""
    return sum(isinstance(m, (SparseLinearInference, SparseConv2dInference)) and not n.endswith(".kernel")
               for n, m in model.named_modules())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds per configuration")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_export.json"))
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 rounds, CNN and MLP only, 1 thread")
    args = parser.parse_args(argv)
    configs = [("mlp", 0.1), ("cnn", 0.1), ("cnn", 0.05), ("wrn-22-2", 0.1), ("wrn-22-2", 0.05)]
    if args.quick:
        args.rounds, args.threads = 3, [1]
        configs = [("mlp", 0.1), ("cnn", 0.1)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, density in configs:
            model, shape = masked_model(name, density)
            folded = copy.deepcopy(model)
            fold_batchnorm(folded)
            sizes = size_ratios(model, name, Path(tmp)) if name != "wrn-22-2" else None
            for threads in args.threads:
                torch.set_num_threads(threads)
                sparse = to_sparse_inference(model)
                for batch in args.batches:
                    x = torch.randn(batch, *shape)
                    probed = to_sparse_inference(model, example_input=x)
                    variants = {"dense": model, "dense_folded": folded, "sparse": sparse, "sparse_probed": probed}
                    with torch.inference_mode():
                        ref = model(x)
                        scale = float(ref.abs().max())
                        err = {k: float((m(x) - ref).abs().max()) / scale for k, m in variants.items() if k != "dense"}
                    lat = interleaved_latency(variants, x, args.rounds)
                    rows.append({
                        "model": name, "density": density, "threads": threads, "batch": batch,
                        "size_ratio": sizes,
                        "sparse_layers": {"sparse": count_sparse(sparse), "sparse_probed": count_sparse(probed)},
                        "latency_ms": {k: v * 1e3 for k, v in lat.items()},
                        "ratio": {"sparse/dense": lat["sparse"] / lat["dense"],
                                  "sparse/dense_folded": lat["sparse"] / lat["dense_folded"],
                                  "probed/dense": lat["sparse_probed"] / lat["dense"],
                                  "probed/dense_folded": lat["sparse_probed"] / lat["dense_folded"]},
                        "max_rel_diff": err,
                    })
                    r = rows[-1]
                    print(f"{name:8} d={density:4.2f} t={threads} b={batch:3d}  dense {lat['dense'] * 1e3:8.3f} ms  "
                          f"folded {lat['dense_folded'] * 1e3:8.3f}  sparse {lat['sparse'] * 1e3:8.3f} "
                          f"({r['sparse_layers']['sparse']:2d} layers)  probed {lat['sparse_probed'] * 1e3:8.3f} "
                          f"({r['sparse_layers']['sparse_probed']:2d})  sparse/dense {r['ratio']['sparse/dense']:.2f}  "
                          f"sparse/folded {r['ratio']['sparse/dense_folded']:.2f}  probed/dense "
                          f"{r['ratio']['probed/dense']:.2f}  max rel diff {max(err.values()):.1e}", flush=True)
    print(f"\n{'model':8} {'dens':>4} {'thr':>3} {'batch':>5} {'sp/dense':>8} {'sp/fold':>7} "
          f"{'pr/dense':>8} {'pr/fold':>7}")
    for r in rows:
        q = r["ratio"]
        print(f"{r['model']:8} {r['density']:4.2f} {r['threads']:3d} {r['batch']:5d} {q['sparse/dense']:8.2f} "
              f"{q['sparse/dense_folded']:7.2f} {q['probed/dense']:8.2f} {q['probed/dense_folded']:7.2f}")
    sizes = [(r["model"], r["density"], r["size_ratio"]) for r in rows
             if r["size_ratio"] and r["threads"] == args.threads[0] and r["batch"] == args.batches[0]]
    if sizes:
        print(f"\nfile size / dense: {'model':5} {'dens':>4} {'bitmask32':>9} {'csr32':>6} {'bitmask16':>9}")
        for name, density, s in sizes:
            print(f"                   {name:5} {density:4.2f} {s['bitmask_float32']:9.3f} {s['csr_float32']:6.3f} "
                  f"{s['bitmask_float16']:9.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": args.rounds, "torch": torch.__version__,
                                    "kernel": load_kernel() is not None, "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
