"""Device-resident mini-batch iteration without ``torch.utils.data.DataLoader``."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

__all__ = ["DeviceLoader", "module_device"]

Transform = Callable[[Tensor, torch.Generator], Tensor]


def module_device(module: torch.nn.Module) -> torch.device | None:
    """The device of ``module``'s first parameter (else buffer), where batches for it belong;
    None for a module with neither."""
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return tensor.device if tensor is not None else None


class DeviceLoader:
    """Mini-batches from tensors already on the device.

    One permutation per epoch is drawn from the loader's own ``torch.Generator`` (on the
    same device as ``x``) and each batch is an ``index_select``; no DataLoader, no host
    syncs.  ``transform(batch, generator)``, if given, is applied to each feature batch
    with the same generator (e.g. augmentation).  :meth:`state_dict` captures the
    generator and, mid-epoch, the position, so a resumed run draws identical batches.

    Data-parallel sharding: with ``world_size > 1`` every rank draws the same global
    permutation (same ``seed`` on every rank) and yields only its contiguous slice
    ``rank`` of each global batch of ``batch_size`` examples (``batch_size`` must be a
    multiple of ``world_size``), so the ranks together see exactly the single-process
    batches. ``transform`` is applied to the rank's slice.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        transform: Transform | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}; they must match")
        if x.device != y.device:
            raise ValueError(f"x is on {x.device} but y is on {y.device}; move both to the same device")
        self.x, self.y = x, y
        self.set_shard(rank, world_size, batch_size)
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.transform = transform
        self.device = x.device
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self._n = int(x.shape[0])
        self._epoch_start: Tensor | None = None  # generator state when the current epoch began
        self._position: int | None = None  # next batch index within the current epoch
        self._resume: tuple[Tensor, Tensor, int] | None = None

    def set_shard(self, rank: int, world_size: int, batch_size: int | None = None) -> None:
        """Yield only shard ``rank`` of ``world_size`` of every global batch (see class doc)."""
        batch_size = self.batch_size if batch_size is None else batch_size
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by the world size {world_size}; "
                             "choose a global batch size that is a multiple of the number of processes")
        self.rank, self.world_size = int(rank), int(world_size)

    @property
    def num_examples(self) -> int:
        return self._n

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self._n // self.batch_size
        return math.ceil(self._n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self._epoch()

    def _epoch(self) -> Iterator[tuple[Tensor, Tensor]]:
        gen = self.generator
        if self._resume is not None:  # continue a partially consumed epoch restored from a checkpoint
            start_state, current_state, position = self._resume
            self._resume = None
            gen.set_state(start_state)
        else:
            start_state, current_state, position = gen.get_state(), None, 0
        self._epoch_start, self._position = start_state, position
        perm = torch.randperm(self._n, generator=gen, device=self.device) if self.shuffle else None
        if current_state is not None:
            gen.set_state(current_state)
        bs = self.batch_size
        for b in range(position, len(self)):
            lo, hi = b * bs, min((b + 1) * bs, self._n)
            if perm is None:
                if self.world_size > 1:
                    lo, hi = [t[self.rank] for t in _shard_bounds(lo, hi, self.world_size)]
                xb, yb = self.x[lo:hi], self.y[lo:hi]
            else:
                idx = perm[lo:hi]
                if self.world_size > 1:
                    idx = idx.tensor_split(self.world_size)[self.rank]
                xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
            if self.transform is not None:
                xb = self.transform(xb, gen)
            self._position = b + 1
            yield xb, yb
        self._epoch_start, self._position = None, None

    def state_dict(self) -> dict[str, Any]:
        """Generator state (and mid-epoch position) so a resumed run draws the same batches."""
        mid_epoch = self._position is not None and self._position < len(self)
        return {
            "generator": self.generator.get_state(),
            "epoch_start": self._epoch_start.clone() if mid_epoch and self._epoch_start is not None else None,
            "position": self._position if mid_epoch else None,
            "num_examples": self._n,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the next ``iter()`` continues exactly where it was saved."""
        for key, mine in (("num_examples", self._n), ("batch_size", self.batch_size)):
            if key in state and state[key] is not None and int(state[key]) != mine:
                raise ValueError(f"loader state has {key}={state[key]} but this loader has {mine}")
        gen_state = state["generator"].detach().to("cpu", torch.uint8).clone()
        self.generator.set_state(gen_state)
        self._epoch_start, self._position, self._resume = None, None, None
        if state.get("position") is not None and state.get("epoch_start") is not None:
            start = state["epoch_start"].detach().to("cpu", torch.uint8).clone()
            self._resume = (start, gen_state, int(state["position"]))


def _shard_bounds(lo: int, hi: int, world_size: int) -> tuple[list[int], list[int]]:
    """Per-rank ``[lo, hi)`` of ``tensor_split(world_size)`` over the range ``[lo, hi)``."""
    n = hi - lo
    sizes = [n // world_size + (1 if r < n % world_size else 0) for r in range(world_size)]
    starts = [lo + sum(sizes[:r]) for r in range(world_size)]
    return starts, [s + z for s, z in zip(starts, sizes)]
