"""experiments/bench_step.py: runs end to end, measures every arm side by side, needs no pyro."""

import importlib.util
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "bench_step.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_importing_the_benchmark_does_not_import_pyro():
    code = f"import runpy, sys; runpy.run_path({str(SCRIPT)!r}, run_name='not_main'); print('pyro' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_cnn_case_runs_and_reports_live_side_by_side_ratios(tmp_path, monkeypatch):
    bench = _load()
    monkeypatch.setattr(bench, "pyro_available", lambda: False)  # as on a machine without pyro-ppl
    out = tmp_path / "b.json"
    threads = torch.get_num_threads()
    try:
        bench.main(["--cases", "cnn", "--threads", "1", "--steps", "1", "--rounds", "2", "--max-rounds", "2",
                    "--mask-calls", "2", "--no-pipeline", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    (r,) = json.loads(out.read_text())["steps"]
    assert r["clock"] == "cpu" and r["threads"] == 1
    assert "cigl-svi" not in r["ms_per_step"] and "pyro" in r["skipped"][0]
    assert set(r["ms_per_step"]) == {"dense", "rigl", "cigl-1%", "cigl-10%", "official-rigl", "official-cigl-1%",
                                     "official-cigl-10%"}
    # every ratio is a median of per-round ratios of live numbers from the same run
    raw = r["raw_ms"]
    for key, s in r["step_ratios"].items():
        num, den = key.split("/")
        per_round = [a / b for a, b in zip(raw["steps"][num], raw["steps"][den])]
        assert math.isclose(s["median"], statistics.median(per_round))
    for kind in ("random_mask", "update"):
        assert len(raw[kind]["ours"]) == len(raw[kind]["official"]) >= 2
    assert r["topology_update_ms"]["ours"] < r["topology_update_ms"]["official"]


def test_official_restatement_update_keeps_layer_counts_and_masks_weights():
    bench = _load()
    official = bench.make_official("cnn", 10, torch.device("cpu"), 0.1)
    counts = {n: int(m.sum()) for n, m in official.mask.items()}
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(2):
        torch.nn.functional.cross_entropy(official.model(x), y).backward()
        official.update(0.3)
        assert {n: int(m.sum()) for n, m in official.mask.items()} == counts
        for n, w in official.weights.items():
            assert torch.all(w[official.mask[n] == 0] == 0)
        official.optimizer.zero_grad()


def test_floor_arms_price_only_the_unavoidable_masking_work(tmp_path, monkeypatch):
    """``--floor`` adds the lower-bound arms; a floor step masks the gradients by the support (the
    pass it prices) and draws from its own generator only when asked."""
    bench = _load()
    monkeypatch.setattr(bench, "pyro_available", lambda: False)
    out = tmp_path / "b.json"
    threads = torch.get_num_threads()
    try:
        bench.main(["--cases", "cnn", "--threads", "1", "--steps", "1", "--rounds", "2", "--max-rounds", "2",
                    "--mask-calls", "2", "--no-pipeline", "--floor", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    (r,) = json.loads(out.read_text())["steps"]
    assert {"floor-passes", "floor-passes+draw"} <= set(r["ms_per_step"])
    assert {"floor-passes/dense", "floor-passes+draw/dense"} <= set(r["step_ratios"])

    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    step = bench.FloorStep("cnn", torch.device("cpu"), 0.1, x, y, draw=True)
    state = torch.random.get_rng_state()
    step()
    assert torch.equal(torch.random.get_rng_state(), state)  # the draw uses the arm's own generator
    reference = bench.SparseNet(bench.build_model("cnn", (1, 8, 8), 10), 0.1, "erk", seed=0)
    params = dict(step.model.named_parameters())
    for name, mask in zip(reference.weight_names, reference.support.layers()):
        grad = params[name].grad
        assert grad is not None and torch.all(grad[~mask] == 0) and grad[mask].abs().sum() > 0
