"""Step-time benchmark: ours vs dense, and ours vs a re-statement of the official CigL code, side by side.

Everything compared is measured in this one run, on the same model, batch and threads:

* step time of ``dense``, our ``rigl``, ``cigl-1%``, ``cigl-10%``, ``cigl-svi`` (Pyro -ELBO; skipped
  when pyro is not installed) and of the official procedure re-stated here (``official-rigl``,
  ``official-cigl-1%``, ``official-cigl-10%``); ratios to dense are taken per round (same round,
  same load) and their median is reported with a distribution-free 95 % interval;
* the random mask's per-step work in isolation: ours (``effective_mask(sample=True)``, a fresh
  Bernoulli mask over the active entries) vs the official's (per-layer ``apply_w_raw`` +
  ``apply_dropout`` over per-layer dicts);
* one RigL topology update: ours (``TopologyUpdater.update``) vs the official's
  (``truncate_weights``: full sorts, per-layer ``.item()`` counts, mask/momentum/gradient rewrites);
* with ``--floor``: ``floor-passes`` and ``floor-passes+draw`` (``FloorStep``), a dense step plus
  only the masking work no exact CigL implementation can skip, i.e. a lower bound on CigL / dense
  for this model on this machine.

``OfficialRestatement`` below is a minimal re-statement, written for this benchmark, of what the
official code (github StevenBoys/CigL, ``sparselearning/core.py``, ``funcs/prune.py``,
``funcs/grow.py``) does per step and per update, on the same model and support as ours. It is not
the official code and not a training method: it only reproduces the work done, for timing.

Method: variants are timed in blocks of ``--steps`` calls, one block of each per round, the
order rotated every round; ratios are per-round (numerator and denominator from the same round)
and rounds are added (up to ``--max-rounds``) until every ratio's 95 % interval is narrower than
``--tol`` and no ratio of a strictly larger computation to a smaller one lies below 1.0. On CPU
the clock is the process CPU time (immune to preemption by other processes; ``--clock wall`` to
change), on CUDA wall time with syncs only around timed blocks. The stored figures of the
official code from the spec are printed only as labelled references, never divided into live
numbers.

    python3 experiments/bench_step.py --cases cnn                         # digits CNN, CPU, 2 threads
    python3 experiments/bench_step.py --cases wrn-22-2 --threads 1        # the spec's WRN case
    python3 experiments/bench_step.py --cases cnn --floor --steps 10      # with the lower-bound arms
    python3 experiments/bench_step.py --device cuda --cases resnet50      # GPU case
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cigl_bayes.cigl import RandomMask  # noqa: E402
from cigl_bayes.models import build_model  # noqa: E402
from cigl_bayes.sparse import DropSchedule, SparseNet, TopologyUpdater  # noqa: E402
from cigl_bayes.train import build_sgd  # noqa: E402

CASES = {  # name: (model, input shape, classes, batch)
    "cnn": ("cnn", (1, 8, 8), 10, 64),
    "wrn-22-2": ("wrn-22-2", (3, 32, 32), 10, 32),
    "resnet50": ("resnet50", (3, 32, 32), 10, 128),
}
UPDATE_EVERY = 100  # the spec's dT: one topology update per 100 steps
DROP = {"cigl-1%": 0.01, "cigl-10%": 0.1, "cigl-svi": 0.1}
#: REFERENCE ONLY (spec cigl.md): the official code on another run: WRN-22-2 with a 100-way head,
#: batch 32, 2 threads. Printed for orientation; never used in a ratio with live numbers.
OFFICIAL_REFERENCE_WRN = {"dense_ms": 231.0, "rigl_ms": 233.0, "cigl_ms": 250.0, "update_ms": 140.0}


# --------------------------------------------------------------------------- official re-statement
class OfficialRestatement:
    """What the official CigL/RigL code does to a plain model, re-stated for timing (see module doc).

    Per-layer dicts keyed by parameter name: ``mask`` (float 0/1), ``dp`` (float Bernoulli mask),
    ``w_raw`` (the stored raw weights). ``dpnum = K``: ``Z = 1[randint(0, K) < K - 1]``, drop 1/K.
    """

    def __init__(self, model: torch.nn.Module, names: list[str], support_layers: list[torch.Tensor],
                 optimizer: torch.optim.Optimizer, dpnum: int | None) -> None:
        self.model, self.optimizer, self.dpnum = model, optimizer, dpnum
        params = dict(model.named_parameters())
        self.weights = {n: params[n] for n in names}
        self.mask = {n: m.to(params[n].dtype).clone() for n, m in zip(names, support_layers)}
        self.dp = {n: torch.ones_like(w) for n, w in self.weights.items()}
        self.w_raw = {n: w.data for n, w in self.weights.items()}
        self.apply_mask()

    @torch.no_grad()
    def apply_mask(self) -> None:
        for n, w in self.weights.items():
            w.data = w.data * self.mask[n]

    @torch.no_grad()
    def reset_momentum(self) -> None:
        for n, w in self.weights.items():
            state = self.optimizer.state.get(w, {})
            if state.get("momentum_buffer") is not None:
                state["momentum_buffer"] *= self.mask[n]

    @torch.no_grad()
    def random_mask_step(self) -> None:
        """Per step, before the optimizer step: save raw weights, restore, draw a new mask, apply it."""
        K = self.dpnum
        for n, w in self.weights.items():  # apply_w_raw
            dm = self.dp[n] * self.mask[n]
            self.w_raw[n] = self.w_raw[n] * (1 - dm) + w.data * dm * (K - 1) / K
        for n, w in self.weights.items():  # apply_dropout
            m = self.mask[n]
            w.data = w.data * self.dp[n] * m + self.w_raw[n] * (1 - self.dp[n] * m) * K / (K - 1)
            self.dp[n] = (torch.randint_like(w, 0, K) < K - 1).float()
            w.data = w.data * self.dp[n] * m

    def step(self) -> None:
        """``Masking.step``: (random mask), optimizer step, re-mask weights, mask momentum."""
        if self.dpnum is not None:
            self.random_mask_step()
        self.optimizer.step()
        self.apply_mask()
        self.reset_momentum()

    @torch.no_grad()
    def _counts(self) -> dict[str, tuple[int, int]]:
        """``gather_statistics``: per-layer non-zero / zero counts and the 'none' redistribution
        statistic, each read to the host."""
        out = {}
        for n, m in self.mask.items():
            _ = (m != 0).sum().item()
            out[n] = ((m == 1).sum().int().item(), (m == 0).sum().int().item())
        return out

    @torch.no_grad()
    def update(self, prune_rate: float) -> None:
        """``truncate_weights`` with magnitude pruning and absolute-gradient growth (full sorts)."""
        stats = self._counts()
        removed = {}
        for n, w in self.weights.items():  # magnitude prune
            nonzero, zeros = stats[n]
            num_remove = math.ceil(prune_rate * nonzero)
            if num_remove == 0:
                removed[n] = 0
                continue
            _, idx = torch.sort(torch.abs(w.data.view(-1)))
            self.mask[n].view(-1)[idx[: zeros + num_remove]] = 0.0
            removed[n] = nonzero - int(self.mask[n].sum().item())
        for n, w in self.weights.items():  # gradient growth
            new_mask = self.mask[n].bool()
            if (new_mask == 0).sum().item() == 0:
                continue
            grad = w.grad * (new_mask == 0).float()
            _, idx = torch.sort(torch.abs(grad).flatten(), descending=True)
            new_mask.view(-1)[idx[: removed[n]]] = 1.0
            w.data.view(-1)[idx[: removed[n]]] = 0.0
            _ = new_mask.sum().item()
            self.mask[n] = new_mask.float()
        self.apply_mask()
        self.reset_momentum()
        for n, w in self.weights.items():  # apply_mask_gradients
            w.grad = w.grad * self.mask[n]
        self._counts()


# --------------------------------------------------------------------------- arms
def pyro_available() -> bool:
    """Whether the ``cigl-svi`` arm can run (pyro-ppl installed); pyro itself is imported only by that arm."""
    try:
        return importlib.util.find_spec("pyro") is not None
    except (ImportError, ValueError):
        return False


def make_ours(case: str, variant: str, device: torch.device, density: float, seed: int = 0):
    """(model, optimizer, step gate, objective) of one of our variants."""
    name, shape, classes, _ = CASES[case]
    torch.manual_seed(seed)
    model = build_model(name, shape, classes).to(device)
    if variant != "dense":
        drop = DROP.get(variant)
        model = SparseNet(model, density, "erk", RandomMask(drop) if drop is not None else None, seed=seed)
    optimizer = build_sgd(model, 0.05, weight_decay=0.0 if variant == "cigl-svi" else 5e-4)
    gate = None
    if variant != "dense":
        gate = TopologyUpdater(model, optimizer, DropSchedule(end_step=10**9, update_every=10**9))
    objective = None
    if variant == "cigl-svi":  # -ELBO/N of the Pyro model + hierarchical guide (Monte-Carlo KL); imports pyro
        from cigl_bayes.bayes import HierarchicalGuide, NegativeELBO, SparseBayesModel

        num_data = 50_000
        objective = NegativeELBO(SparseBayesModel(model, num_data, 1.0, 0.9), HierarchicalGuide(model, 0.9), num_data)
    return model, optimizer, gate, objective


def make_official(case: str, dpnum: int | None, device: torch.device, density: float, seed: int = 0):
    """A plain model (same init and support as ours) driven by ``OfficialRestatement``."""
    name, shape, classes, _ = CASES[case]
    torch.manual_seed(seed)
    plain = build_model(name, shape, classes).to(device)
    reference = SparseNet(copy.deepcopy(plain), density, "erk", seed=seed)  # only for its support
    optimizer = build_sgd(plain, 0.05, weight_decay=5e-4)
    return OfficialRestatement(plain, reference.weight_names, reference.support.layers(), optimizer, dpnum)


class FloorStep:
    """A lower bound on any exact CigL step: a dense step plus only the work that no implementation
    of ``W_eff = W * M * Z * s`` with a fresh ``Z`` per step and a stock optimiser can skip:

    * one out-of-place pass ``W * E`` over the maskable weights (the rescaled ``s Z W`` must be
      materialised for the conv / linear kernels; kept alive until the step ends, as in a real step);
    * one pass ``grad * E`` over their gradients (``M`` and ``Z`` must reach the gradient before the
      optimiser reads it);
    * with ``draw``: the Bernoulli draw over the active entries as ours makes it (``nnz`` uniforms from
      its own generator; drawing only the dropped positions by geometric skips takes fewer uniforms
      but changes the random stream, and was not faster inside the step).

    It trains nothing meaningful (``E`` is the constant support, the forward uses the dense weights);
    it only prices the unavoidable memory work of masking on this machine, for this model."""

    def __init__(self, case: str, device: torch.device, density: float, x, y, draw: bool, seed: int = 0) -> None:
        name, shape, classes, _ = CASES[case]
        torch.manual_seed(seed)
        self.model = build_model(name, shape, classes).to(device)
        self.optimizer = build_sgd(self.model, 0.05, weight_decay=5e-4)
        reference = SparseNet(copy.deepcopy(self.model), density, "erk", seed=seed)
        params = dict(self.model.named_parameters())
        self.weights = [params[n] for n in reference.weight_names]
        self.masks = [m.to(self.weights[0].dtype) for m in reference.support.layers()]
        self.nnz = reference.support.nnz if draw else 0
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.x, self.y = x, y

    def __call__(self) -> None:
        with torch.no_grad():
            effective = torch._foreach_mul(self.weights, self.masks)
            if self.nnz:
                torch.rand(self.nnz, device=self.x.device, generator=self.generator)
        loss = F.cross_entropy(self.model(self.x), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for w, g in zip(self.weights, torch._foreach_mul([w.grad for w in self.weights], self.masks)):
                w.grad = g
        self.optimizer.step()
        del effective


def ours_step(model, optimizer, gate, objective, x, y) -> Callable[[], None]:
    def step():
        loss = objective(x, y) if objective is not None else F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if gate is None or gate():
            optimizer.step()
    return step


def official_step(official: OfficialRestatement, x, y) -> Callable[[], None]:
    def step():
        loss = F.cross_entropy(official.model(x), y)
        official.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        official.step()
    return step


# --------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Process CPU time (CPU) or wall time; syncs the device only around a timed block."""

    def __init__(self, device: torch.device, kind: str) -> None:
        self.device, self.kind = device, kind
        self.now = time.process_time if kind == "cpu" else time.perf_counter

    def block(self, fn: Callable[[], None], calls: int, before: Callable[[], None] | None = None) -> float:
        """ms per call of ``fn`` (``before`` runs untimed ahead of each call when given)."""
        if before is None:
            sync(self.device)
            start = self.now()
            for _ in range(calls):
                fn()
            sync(self.device)
            return (self.now() - start) / calls * 1e3
        total = 0.0
        for _ in range(calls):
            before()
            sync(self.device)
            start = self.now()
            fn()
            sync(self.device)
            total += self.now() - start
        return total / calls * 1e3


def median_ci(values: list[float]) -> tuple[float, float, float]:
    """Median and a distribution-free ~95 % interval (order statistics of the binomial(n, 1/2))."""
    v = sorted(values)
    n = len(v)
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = max(0, int(math.floor(n / 2 - half))), min(n - 1, int(math.ceil(n / 2 + half)) - 1)
    return statistics.median(v), v[lo], v[max(lo, hi)]


def interleaved(fns: dict[str, tuple[Callable[[], None], Callable[[], None] | None]], clock: Clock, calls: int,
                rounds: int, max_rounds: int, ratios: list[tuple[str, str, bool]], tol: float) -> tuple[dict, dict]:
    """Time every fn once per round in a rotated order; add rounds until the ratio intervals settle.

    ``ratios``: (numerator, denominator, numerator does strictly more work); returns per-variant
    ms lists and per-ratio lists of per-round ratios."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for k in names:  # warm-up
        clock.block(fns[k][0], 1, fns[k][1])
    r = 0
    while True:
        shift = r % len(names)
        for k in names[shift:] + names[:shift]:
            times[k].append(clock.block(fns[k][0], calls, fns[k][1]))
        r += 1
        per_round = {f"{a}/{b}": [x / y for x, y in zip(times[a], times[b])] for a, b, _ in ratios}
        if r < rounds:
            continue
        settled = True
        for a, b, larger in ratios:
            med, lo, hi = median_ci(per_round[f"{a}/{b}"])
            if hi - lo > 2 * tol or (larger and med < 1.0):
                settled = False
        if settled or r >= max_rounds:
            return times, per_round


# --------------------------------------------------------------------------- one case
def bench_case(case: str, device: torch.device, density: float, args) -> dict:
    _, shape, classes, batch = CASES[case]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=gen).to(device)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)
    clock = Clock(device, args.clock)
    ours = ["dense", "rigl", "cigl-1%", "cigl-10%"] + (["cigl-svi"] if pyro_available() else [])
    skipped = [] if pyro_available() else ["cigl-svi (pyro-ppl is not installed: pip install pyro-ppl)"]
    built = {v: make_ours(case, v, device, density) for v in ours}
    officials = {"official-rigl": make_official(case, None, device, density),
                 "official-cigl-1%": make_official(case, 100, device, density),
                 "official-cigl-10%": make_official(case, 10, device, density)}
    steps = {v: (ours_step(*built[v], x, y), None) for v in ours}
    steps.update({v: (official_step(o, x, y), None) for v, o in officials.items()})
    if args.floor:
        steps["floor-passes"] = (FloorStep(case, device, density, x, y, draw=False), None)
        steps["floor-passes+draw"] = (FloorStep(case, device, density, x, y, draw=True), None)
    step_ratios = [(v, "dense", True) for v in steps if v != "dense"] + [
        ("cigl-10%", "rigl", True), ("official-cigl-10%", "official-rigl", True)] + (
        [("cigl-svi", "cigl-10%", True)] if "cigl-svi" in steps else [])  # the Bayesian path vs plain CigL
    step_ms, step_per_round = interleaved(steps, clock, args.steps, args.rounds, args.max_rounds, step_ratios, args.tol)

    # the random mask's per-step work, isolated (ours: one flat draw; official: per-layer dict loops)
    ours_mask_net = built["cigl-10%"][0]
    mask_fns = {"ours": (lambda: ours_mask_net.effective_mask(sample=True), None),
                "official": (officials["official-cigl-10%"].random_mask_step, None)}
    mask_ms, mask_per_round = interleaved(mask_fns, clock, args.mask_calls, args.rounds, args.max_rounds,
                                          [("ours", "official", False)], args.tol)

    # one RigL topology update (dense gradient captured untimed before each)
    ours_net, ours_opt, _, _ = built["rigl"]
    updater = TopologyUpdater(ours_net, ours_opt, DropSchedule(end_step=10**9, update_every=1), "rigl")
    official = officials["official-rigl"]

    def capture_ours():
        ours_net.capture_dense_grad = True
        loss = F.cross_entropy(ours_net(x), y)
        ours_opt.zero_grad(set_to_none=True)
        loss.backward()

    def capture_official():
        loss = F.cross_entropy(official.model(x), y)
        official.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    update_fns = {"ours": (lambda: updater.update(0.3), capture_ours),
                  "official": (lambda: official.update(0.3), capture_official)}
    update_ms, update_per_round = interleaved(update_fns, clock, 1, args.rounds, args.max_rounds,
                                              [("ours", "official", False)], args.tol)

    def summary(per_round: dict) -> dict:
        return {k: dict(zip(("median", "ci95_low", "ci95_high"), median_ci(v))) | {"rounds": len(v)} for k, v in per_round.items()}

    med = {k: statistics.median(v) for k, v in step_ms.items()}
    result = {
        "case": case, "device": str(device), "threads": torch.get_num_threads(), "batch": batch, "density": density,
        "clock": args.clock, "skipped": skipped,
        "ms_per_step": med,
        "step_ratios": summary(step_per_round),
        "random_mask_in_step_ms": {"ours (cigl-10% - rigl)": med["cigl-10%"] - med["rigl"],
                                   "official (cigl-10% - rigl)": med["official-cigl-10%"] - med["official-rigl"]},
        "random_mask_isolated_ms": {k: statistics.median(v) for k, v in mask_ms.items()},
        "random_mask_isolated_ratio": summary(mask_per_round),
        "topology_update_ms": {k: statistics.median(v) for k, v in update_ms.items()},
        "topology_update_ratio": summary(update_per_round),
        "topology_update_amortised_ms_per_step": statistics.median(update_ms["ours"]) / UPDATE_EVERY,
        "raw_ms": {"steps": step_ms, "random_mask": mask_ms, "update": update_ms},
    }
    return result


def report(r: dict) -> None:
    print(f"\n== {r['case']} on {r['device']} (batch {r['batch']}, density {r['density']}, {r['threads']} threads, "
          f"{r['clock']} clock)")
    for s in r["skipped"]:
        print(f"   skipped: {s}")
    print("   ms/step: " + ", ".join(f"{k} {v:.2f}" for k, v in r["ms_per_step"].items()))
    print("   step-time ratios (median of per-round ratios [95% interval], rounds):")
    for k, s in r["step_ratios"].items():
        warn = "  <- below 1.0 for a strictly larger computation: noise; rerun with more --steps" if s["median"] < 1.0 else ""
        print(f"     {k:32s} {s['median']:.3f} [{s['ci95_low']:.3f}, {s['ci95_high']:.3f}]  ({s['rounds']}){warn}")
    m = r["random_mask_in_step_ms"]
    print(f"   random mask in the step (CigL10% - RigL): ours {m['ours (cigl-10% - rigl)']:.2f} ms, "
          f"official re-statement {m['official (cigl-10% - rigl)']:.2f} ms")
    iso, isr = r["random_mask_isolated_ms"], r["random_mask_isolated_ratio"]["ours/official"]
    print(f"   random mask isolated (per step): ours {iso['ours']:.3f} ms vs official re-statement {iso['official']:.3f} ms "
          f"= {isr['median']:.3f}x [{isr['ci95_low']:.3f}, {isr['ci95_high']:.3f}]")
    up, upr = r["topology_update_ms"], r["topology_update_ratio"]["ours/official"]
    print(f"   one topology update: ours {up['ours']:.2f} ms vs official re-statement {up['official']:.2f} ms "
          f"= {upr['median']:.3f}x [{upr['ci95_low']:.3f}, {upr['ci95_high']:.3f}]; "
          f"ours amortised at dT={UPDATE_EVERY}: {r['topology_update_amortised_ms_per_step']:.3f} ms/step")
    if r["case"] == "wrn-22-2":
        o = OFFICIAL_REFERENCE_WRN
        print(f"   REFERENCE ONLY (spec, official code, 100-way head, 2 threads, another run; not a live number): "
              f"dense {o['dense_ms']:.0f}, RigL {o['rigl_ms']:.0f}, CigL {o['cigl_ms']:.0f} ms/step, "
              f"update {o['update_ms']:.0f} ms")


def bench_pipeline(device: torch.device) -> list[dict]:
    """Data-pipeline cost per epoch: on-device batching (+ pad-4 crop/flip for CIFAR-shaped data)."""
    from cigl_bayes.data import DeviceLoader, load_dataset, random_crop_flip

    digits = load_dataset("digits").to(device)
    cifar_like = torch.randn(10_000, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    cases = [
        ("digits (1078 x 1x8x8, batch 64)", DeviceLoader(digits.x_train, digits.y_train, 64, drop_last=True)),
        ("CIFAR-shaped (10k x 3x32x32, batch 128, crop+flip)",
         DeviceLoader(cifar_like, torch.zeros(10_000, dtype=torch.long, device=device), 128, drop_last=True, transform=random_crop_flip)),
    ]
    results = []
    for name, loader in cases:
        for _ in loader:  # warm-up epoch
            pass
        times = []
        for _ in range(3):
            sync(device)
            start = time.perf_counter()
            for _ in loader:
                pass
            sync(device)
            times.append((time.perf_counter() - start) * 1e3)
        ms = statistics.median(times)
        results.append({"pipeline": name, "ms_per_epoch": ms, "ms_per_batch": ms / len(loader)})
        print(f"   data pipeline, {name}: {ms:.1f} ms/epoch ({ms / len(loader):.3f} ms/batch)")
    return results


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="cnn,wrn-22-2", help=f"comma-separated from {list(CASES)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed block")
    parser.add_argument("--mask-calls", type=int, default=10, help="random-mask draws per timed block")
    parser.add_argument("--rounds", type=int, default=15, help="minimum interleaved rounds")
    parser.add_argument("--max-rounds", type=int, default=60, help="rounds are added up to this until ratios settle")
    parser.add_argument("--tol", type=float, default=0.01, help="target half-width of each ratio's 95%% interval")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (the spec's WRN case: 1)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default=None, help="default: cpu for one CPU thread, else wall")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the data-pipeline timing")
    parser.add_argument("--floor", action="store_true",
                        help="add the lower-bound arms floor-passes(+draw): a dense step plus only the masking work "
                             "no exact CigL implementation can skip (see FloorStep)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_step.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available; use --device cpu")
    unknown = [c for c in args.cases.split(",") if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    # process CPU time is meaningful for one thread only (idle OpenMP workers spin and are counted)
    args.clock = args.clock or ("cpu" if device.type == "cpu" and args.threads == 1 else "wall")
    torch.set_num_threads(args.threads)
    results = []
    for case in args.cases.split(","):
        r = bench_case(case, device, args.density, args)
        report(r)
        results.append(r)
    pipeline = []
    if not args.no_pipeline:
        print("\n== data pipeline")
        pipeline = bench_pipeline(device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": results, "pipeline": pipeline}, indent=2))
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
