"""Data-parallel training (2 CPU processes, gloo) matches one process on the combined batch.

A tiny BatchNorm-free sparse MLP is trained with CigL's parts (SparseNet + RandomMask +
RigL TopologyUpdater, updates every 2 steps) through the real ``Trainer`` made distributed by
``cigl_bayes.train.distributed.distribute`` -- on cross-entropy (through DDP), on MOON's
objective (alpha tuned from a reduced batch statistic) and on the SVI objective ``-ELBO/N``
(gradients all-reduced; guide draws identical on every rank). Both ranks must end with
bit-identical supports, weights and momentum, equal (up to float rounding) to a
single-process run over the same global batches. Float64 keeps RigL's top-k selections
away from rounding ties.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from cigl_bayes.bayes import HierarchicalGuide, NegativeELBO, SparseBayesModel
from cigl_bayes.cigl import RandomMask
from cigl_bayes.ood.diagnostics import MoonDiagnostics
from cigl_bayes.ood.moon import AlphaSchedule, MoonObjective
from cigl_bayes.data import DeviceLoader
from cigl_bayes.sparse import DropSchedule, SparseNet, TopologyUpdater
from cigl_bayes.train import Trainer
from cigl_bayes.train.distributed import all_reduce_mean_, distribute, is_distributed, rank, world_size

EPOCHS, BATCH, N = 2, 16, 64
OBJECTIVES = ("cross-entropy", "moon", "svi")


def _objective(kind: str, net: SparseNet, steps_per_epoch: int):
    if kind == "moon":  # one warm-up epoch, then the re-weighted loss with a non-trivial alpha
        return MoonObjective(net, AlphaSchedule(warmup_epochs=1, epochs=EPOCHS, rho=1.0, alpha_final=4.0), steps_per_epoch)
    if kind == "svi":
        model = SparseBayesModel(net, N, prior_precision=1.0, keep=0.9, kl="mc")
        return NegativeELBO(model, HierarchicalGuide(net, keep=0.9, kl="mc"), N)
    return None


def _train(world: int, rank_: int, kind: str = "cross-entropy") -> dict[str, object]:
    """Build and train the tiny CigL run; returns its final state (the same code on every rank)."""
    torch.manual_seed(0)
    x = torch.randn(N, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (N,))
    outputs = 4 if kind == "moon" else 3  # MOON: K + 1 outputs
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, outputs)).double()
    net = SparseNet(model, density=0.4, distribution="erk", random_mask=RandomMask(0.1, seed=3), seed=1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    loader = DeviceLoader(x, y, BATCH, shuffle=True, drop_last=True, seed=2)
    total = EPOCHS * len(loader)
    gate = TopologyUpdater(net, optimizer, DropSchedule.for_run(total, update_every=2, drop_fraction=0.5, end_fraction=1.0))
    objective = _objective(kind, net, len(loader))
    diagnostics = MoonDiagnostics(net, {"test": x}, objective.schedule) if kind == "moon" else None
    if diagnostics is not None:
        diagnostics.attach(objective, nn.functional.cross_entropy)
    trainer = Trainer(net, optimizer, loader, EPOCHS, objective=objective, gate=gate, progress=False,
                      hooks=[diagnostics] if diagnostics is not None else [])
    distribute(SimpleNamespace(model=net, trainer=trainer))
    if world > 1:
        assert is_distributed() and gate.reduce_grads is all_reduce_mean_
        assert (trainer.forward_model is not net) if objective is None else (trainer.grad_reducer is not None)
        assert loader.world_size == world and loader.rank == rank_
        if kind == "moon":
            assert objective.schedule.reduce_stat is all_reduce_mean_
    trainer.fit()
    return {
        "support": net.support.flat.clone(),
        "weights": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "momentum": [optimizer.state[p]["momentum_buffer"].clone() for p in net.parameters()],
        "updates_done": gate.updates_done,
        "steps": gate.step,
        "beta": objective.schedule.beta.clone() if kind == "moon" else None,
        "diagnostics": diagnostics.report() if diagnostics is not None else None,
    }


def _worker(rank_: int, world: int, port: int, out_dir: str, kind: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank_, world_size=world)
    try:
        assert rank() == rank_ and world_size() == world
        torch.save(_train(world, rank_, kind), Path(out_dir) / f"rank{rank_}.pt")
        dist.barrier()  # neither rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("kind", OBJECTIVES)
def test_two_ranks_match_each_other_and_one_process(kind: str, tmp_path: Path) -> None:
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path), kind), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    single = _train(1, 0, kind)

    assert single["updates_done"] >= 3  # RigL drop/grow really happened (steps 2, 4, 6)
    for state in ranks:
        assert state["updates_done"] == single["updates_done"] and state["steps"] == single["steps"]
    # identical on every rank
    a, b = ranks
    assert torch.equal(a["support"], b["support"])
    assert a["weights"].keys() == b["weights"].keys()
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    for ma, mb in zip(a["momentum"], b["momentum"]):
        assert torch.equal(ma, mb)
    # the same as one process on the combined batches
    assert torch.equal(a["support"], single["support"])
    for k in a["weights"]:
        torch.testing.assert_close(a["weights"][k], single["weights"][k], atol=1e-5, rtol=0)
    for ma, ms in zip(a["momentum"], single["momentum"]):
        torch.testing.assert_close(ma, ms, atol=1e-5, rtol=0)
    if kind == "moon":  # the alpha tuner saw the global batches
        assert torch.equal(a["beta"], b["beta"])
        torch.testing.assert_close(a["beta"], single["beta"], atol=1e-10, rtol=0)
        # the per-epoch diagnostics are those of the global batches, on every rank
        assert a["diagnostics"] == b["diagnostics"]
        for key in ("alpha", "train_error", "pushes_unknown_up"):
            assert a["diagnostics"][key] == pytest.approx(single["diagnostics"][key], abs=1e-5), key
        for name, values in a["diagnostics"]["mean_q"].items():
            assert values == pytest.approx(single["diagnostics"]["mean_q"][name], abs=1e-5), name
    # training moved the weights and the support (not a vacuous comparison)
    torch.manual_seed(0)
    start = SparseNet(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)).double(),
                      density=0.4, distribution="erk", seed=1)
    assert not torch.equal(start.support.flat, single["support"])


def test_loader_shards_cover_the_global_batches() -> None:
    x = torch.arange(40, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(40)
    full = [yb for _, yb in DeviceLoader(x, y, 8, seed=5, drop_last=True)]
    shards = [[yb for _, yb in DeviceLoader(x, y, 8, seed=5, drop_last=True, rank=r, world_size=2)] for r in range(2)]
    for b, batch in enumerate(full):
        assert torch.equal(torch.cat([shards[0][b], shards[1][b]]), batch)
    unshuffled = [[yb for _, yb in DeviceLoader(x, y, 8, shuffle=False, rank=r, world_size=2)] for r in range(2)]
    assert torch.equal(torch.cat([torch.cat([unshuffled[0][b], unshuffled[1][b]]) for b in range(5)]), y)
    with pytest.raises(ValueError, match="divisible"):
        DeviceLoader(x, y, 7, rank=0, world_size=2)


def test_helpers_are_no_ops_without_a_process_group() -> None:
    t = torch.ones(3)
    all_reduce_mean_([t])
    assert torch.equal(t, torch.ones(3)) and not is_distributed() and rank() == 0 and world_size() == 1


def test_sync_batchnorm_conversion_keeps_parameters_and_eval_outputs(tiny_config, digits_data) -> None:
    """The layers DDP on CUDA switches to SyncBatchNorm share the original tensors, so the optimiser,
    averaging and checkpoints are untouched, and eval-mode outputs do not change."""
    from cigl_bayes.methods import assemble
    from cigl_bayes.train.distributed import convert_sync_batchnorm_

    parts = assemble(tiny_config("cigl"), digits_data, progress=False)
    parts.trainer.fit()
    net = parts.model
    before_params = dict(net.named_parameters())
    x = digits_data.x_test[:64]
    net.eval()
    expected = net(x)
    assert convert_sync_batchnorm_(net) == 2  # the MLP's two BatchNorm1d layers
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in net.modules()) == 2
    assert all(p is before_params[k] for k, p in net.named_parameters())
    optimised = {id(p) for group in parts.trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in net.parameters())
    torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="CUDA"):
        distribute(parts, sync_batchnorm=True)
