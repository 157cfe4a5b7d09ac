"""Data-parallel training with ``torch.distributed`` (``torchrun``, DDP).

Every rank builds the same run from the same config and seed, so the initial weights, the
support ``M``, the random-mask generator (``Z`` identical on every rank), the SET generator
and the data permutation are already identical; ``distribute`` additionally broadcasts the
model state (parameters, support, BN buffers) from rank 0. Then, per step:

* each rank takes its contiguous shard of the global batch (``DeviceLoader.set_shard``);
* the forward goes through ``DistributedDataParallel`` wrapping the ``SparseNet`` itself:
  ``SparseNet.forward`` computes ``W * E`` from its stored parameters, so gradients reach those
  parameters and DDP averages them (mean over ranks) during ``backward``;
* RigL's growth scores are the gradients w.r.t. the *masked* (non-leaf) weights, which DDP does
  not reduce: ``TopologyUpdater.reduce_grads = all_reduce_mean_`` averages them before growth, so
  every rank drops and grows the same connections;
* averaging / BN recalibration run on identical weights with identical data on every rank, so
  they are deterministic and identical; only rank 0 writes checkpoints and results.

With a loss that is a mean over examples and equal shards, one step on ``world_size`` ranks
equals one single-process step on the global batch, except for BatchNorm: each rank normalises
with the statistics of its own shard (and running statistics are copied from rank 0 at each
forward, DDP's default buffer sync). On CUDA ``distribute`` therefore converts BN layers to
``nn.SyncBatchNorm`` (statistics of the global batch; ``sync_batchnorm=False`` opts out);
PyTorch's SyncBatchNorm has no CPU kernel, so CPU ranks keep per-shard statistics.
Objectives that do not call the model's forward (SVI's ``-ELBO``, MOON) use an explicit
gradient all-reduce after ``backward`` instead of DDP (same result, no overlap).
The training-loss history stays rank-local (each rank's shard).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "all_reduce_mean_",
    "broadcast_module_",
    "broadcast_support_",
    "convert_sync_batchnorm_",
    "distribute",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "rank",
    "world_size",
    "wrap_ddp",
]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 (or no process group): the process that writes checkpoints and results."""
    return rank() == 0


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group from ``torchrun``'s environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``/``PORT``); returns whether it did. Backend: NCCL on CUDA,
    else gloo. Without those variables (a plain ``python`` run) nothing happens."""
    if "WORLD_SIZE" not in os.environ or (dist.is_available() and dist.is_initialized()):
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return True


@torch.no_grad()
def all_reduce_mean_(tensors: Iterable[Tensor]) -> None:
    """Average ``tensors`` in place over all ranks (one coalesced all-reduce per dtype).
    A no-op without a multi-rank process group."""
    tensors = [t for t in tensors if t is not None]
    if not is_distributed() or not tensors:
        return
    n = world_size()
    by_dtype: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault((t.dtype, t.device), []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        flat.div_(n)
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


@torch.no_grad()
def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Copy every parameter and buffer (support mask included) of ``module`` from rank ``src``."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


@torch.no_grad()
def broadcast_support_(net: nn.Module, src: int = 0) -> None:
    """Copy the support ``M`` of a ``SparseNet`` from rank ``src`` (after editing it by hand)."""
    if not is_distributed():
        return
    flat = net.support.flat
    as_uint8 = flat.to(torch.uint8)
    dist.broadcast(as_uint8, src)
    flat.copy_(as_uint8.bool())
    net.topology_changed()


def wrap_ddp(module: nn.Module, **kwargs: Any) -> nn.Module:
    """``DistributedDataParallel(module)`` for a ``SparseNet`` (or any module); identity when
    not distributed.

    DDP wraps the ``SparseNet`` itself: its forward builds ``W * E`` from the stored parameters,
    so their gradients are averaged by DDP's hooks. All parameters are used in every forward
    (entries outside ``M * Z`` get zero, not missing, gradients), so ``find_unused_parameters``
    stays off. Buffers (BN running statistics) are synchronised from rank 0 at every forward
    (DDP's default), except the support ``M``: it is broadcast once here and then kept
    identical by the reduced RigL decisions, so it is excluded from DDP's buffer sync (which
    would otherwise send the whole boolean mask every step and bypass ``topology_changed``).
    """
    if not is_distributed():
        return module
    support = getattr(module, "support", None)
    if support is not None:
        broadcast_support_(module)
        ignore = [name for name, buf in module.named_buffers() if buf is support.flat]
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignore)
    device = next(module.parameters()).device
    if device.type == "cuda":
        kwargs.setdefault("device_ids", [device.index])
    kwargs.setdefault("find_unused_parameters", False)
    return nn.parallel.DistributedDataParallel(module, **kwargs)


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def convert_sync_batchnorm_(model: nn.Module) -> int:
    """Replace every BatchNorm layer inside ``model`` by ``nn.SyncBatchNorm`` in place; returns the
    count. The new layers hold the *same* parameter and buffer tensors, so optimisers, averaging
    and checkpoints keep working; outside training (or without a process group) they compute
    exactly what the old layers did."""
    count = 0
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
            count += 1
        else:
            count += convert_sync_batchnorm_(child)
    return count


def distribute(parts: Any, sync_batchnorm: bool | None = None) -> Any:
    """Make an ``Assembled`` run (``cigl_bayes.methods.assemble``) data-parallel, in place.

    Shards its loader, broadcasts the model from rank 0, reduces RigL's growth gradients,
    routes the training forward through DDP (or all-reduces gradients after ``backward`` for
    objective-based methods, and MOON's batch statistic), and lets only rank 0 write checkpoints.
    ``sync_batchnorm`` (default: on for CUDA models) converts BN layers to ``nn.SyncBatchNorm``;
    requesting it on CPU is an error. A no-op (returns ``parts`` unchanged) without a multi-rank
    process group.
    """
    on_cuda = next(parts.model.parameters()).device.type == "cuda"
    if sync_batchnorm and not on_cuda:
        raise ValueError("SyncBatchNorm needs CUDA tensors (PyTorch has no CPU kernel); use sync_batchnorm=False on CPU")
    if not is_distributed():
        return parts
    if sync_batchnorm or (sync_batchnorm is None and on_cuda):
        convert_sync_batchnorm_(parts.model)
    trainer = parts.trainer
    trainer.loader.set_shard(rank(), world_size())
    broadcast_module_(parts.model)
    if trainer.gate is not None and hasattr(trainer.gate, "reduce_grads"):
        trainer.gate.reduce_grads = all_reduce_mean_
    if trainer.objective is None:
        trainer.forward_model = wrap_ddp(parts.model)
    else:
        params = _optimizer_params(trainer.optimizer)

        def reduce_all() -> None:
            all_reduce_mean_([p.grad for p in params if p.grad is not None])

        trainer.grad_reducer = reduce_all
        schedule = getattr(trainer.objective, "schedule", None)
        if hasattr(schedule, "reduce_stat"):  # MOON: the alpha tuner's EWMA sees the global batch
            schedule.reduce_stat = all_reduce_mean_
    if not is_main_process():
        trainer.checkpoint_path = None
        trainer.progress = False
    return parts
