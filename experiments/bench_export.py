"""Sparse export benchmark: file size and CPU inference latency, sparse vs dense.

For an MLP 784-2048-2048-10 and the digits CNN at densities 0.1 and 0.05 (random ERK supports
from ``SparseNet``, weights masked), measures

* file size of ``export_sparse`` (bitmask and CSR, float32 values; bitmask also float16) divided
  by the size of ``torch.save`` of the dense float32 state dict;
* CPU inference latency (2 threads, ``torch.inference_mode``, median over repeats, dense and
  sparse interleaved in one run) at batch 1 and 64: dense model vs ``to_sparse_inference``.

Run:  python3 experiments/bench_export.py [--repeats 200] [--out runs/bench_export.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cigl_bayes.export import dense_state_bytes, export_sparse, to_sparse_inference
from cigl_bayes.models import MLP, build_model
from cigl_bayes.sparse.network import SparseNet


def masked_model(name: str, density: float, seed: int = 0) -> tuple[torch.nn.Module, tuple[int, ...]]:
    torch.manual_seed(seed)
    if name == "mlp":
        shape = (784,)
        model = MLP(shape, 10, hidden_sizes=(2048, 2048))
    else:
        shape = (1, 8, 8)  # digits
        model = build_model("cnn", shape, 10)
    net = SparseNet(model, density, "erk", seed=seed)  # zeroes the weights off the random support
    return net.module.eval(), shape


def interleaved_latency(models: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per forward for each model, calls interleaved so load drifts hit all alike."""
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            for _ in range(10):
                m(x)
        for _ in range(repeats):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(x)
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_export.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("mlp", "cnn"):
            for density in (0.1, 0.05):
                model, shape = masked_model(name, density)
                dense_bytes = dense_state_bytes(model)
                sizes = {}
                for fmt, vd in (("bitmask", "float32"), ("csr", "float32"), ("bitmask", "float16")):
                    path = export_sparse(model, Path(tmp) / f"{name}-{density}-{fmt}-{vd}.npz", {"model": name}, fmt, vd)
                    sizes[f"{fmt}_{vd}"] = path.stat().st_size / dense_bytes
                sparse_model = to_sparse_inference(model)
                swapped = sum(type(m).__name__ == "SparseLinearInference" for m in sparse_model.modules())
                row = {"model": name, "density": density, "dense_bytes": dense_bytes, "size_ratio": sizes,
                       "sparse_linear_layers": swapped, "latency_ms": {}, "latency_ratio": {}}
                for batch in (1, 64):
                    x = torch.randn(batch, *shape)
                    with torch.inference_mode():
                        err = float((model(x) - sparse_model(x)).abs().max())
                    lat = interleaved_latency({"dense": model, "sparse": sparse_model}, x, args.repeats)
                    row["latency_ms"][f"b{batch}"] = {k: v * 1e3 for k, v in lat.items()}
                    row["latency_ratio"][f"b{batch}"] = lat["sparse"] / lat["dense"]
                    row[f"max_abs_diff_b{batch}"] = err
                rows.append(row)
    header = (f"{'model':5} {'dens':>5} {'bitmask32':>9} {'csr32':>7} {'bitmask16':>9} {'#sp':>3} "
              f"{'b1 dense ms':>11} {'b1 sparse':>9} {'b1 ratio':>8} {'b64 dense':>9} {'b64 sparse':>10} {'b64 ratio':>9}")
    print(header)
    for r in rows:
        s, l, q = r["size_ratio"], r["latency_ms"], r["latency_ratio"]
        print(f"{r['model']:5} {r['density']:5.2f} {s['bitmask_float32']:9.3f} {s['csr_float32']:7.3f} {s['bitmask_float16']:9.3f} "
              f"{r['sparse_linear_layers']:3d} {l['b1']['dense']:11.3f} {l['b1']['sparse']:9.3f} {q['b1']:8.2f} "
              f"{l['b64']['dense']:9.3f} {l['b64']['sparse']:10.3f} {q['b64']:9.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
                                    "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
