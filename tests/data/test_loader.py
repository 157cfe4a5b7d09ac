"""Tests for cigl_bayes.data.loader.DeviceLoader."""

from __future__ import annotations

import io

import pytest
import torch

from cigl_bayes.data import DeviceLoader, random_crop_flip

N = 103


def _data(n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(n)
    x = y.to(torch.float32).view(n, 1).repeat(1, 3)  # row i carries its own index
    return x, y


def _epoch(loader: DeviceLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(xb.clone(), yb.clone()) for xb, yb in loader]


def _order(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([yb for _, yb in batches])


def test_every_example_once_per_epoch() -> None:
    x, y = _data()
    loader = DeviceLoader(x, y, batch_size=10, shuffle=True, seed=0)
    assert len(loader) == 11
    for _ in range(3):
        batches = _epoch(loader)
        assert [len(yb) for _, yb in batches] == [10] * 10 + [3]
        order = _order(batches)
        assert torch.equal(order.sort().values, y)
        for xb, yb in batches:  # features and labels stay paired
            assert torch.equal(xb[:, 0].long(), yb) and xb.shape[1:] == (3,)


def test_drop_last() -> None:
    x, y = _data()
    loader = DeviceLoader(x, y, batch_size=10, drop_last=True, seed=1)
    assert len(loader) == 10
    seen = []
    for _ in range(2):
        batches = _epoch(loader)
        assert len(batches) == 10 and all(len(yb) == 10 for _, yb in batches)
        order = _order(batches)
        assert len(order.unique()) == 100  # no duplicates within an epoch
        seen.append(set(order.tolist()))
    assert seen[0] != seen[1]  # the dropped examples change between epochs
    assert len(DeviceLoader(x, y, batch_size=200, drop_last=True)) == 0
    assert list(DeviceLoader(x, y, batch_size=200, drop_last=True)) == []


def test_len_variants() -> None:
    x, y = _data(100)
    assert len(DeviceLoader(x, y, 10)) == 10
    assert len(DeviceLoader(x, y, 33)) == 4
    assert len(DeviceLoader(x, y, 33, drop_last=True)) == 3
    assert len(DeviceLoader(x, y, 1000)) == 1
    assert len(DeviceLoader(x[:0], y[:0], 4)) == 0


def test_order_changes_across_epochs_and_is_seeded() -> None:
    x, y = _data()
    a = DeviceLoader(x, y, 16, seed=7)
    b = DeviceLoader(x, y, 16, seed=7)
    c = DeviceLoader(x, y, 16, seed=8)
    a1, a2 = _order(_epoch(a)), _order(_epoch(a))
    b1, b2 = _order(_epoch(b)), _order(_epoch(b))
    assert not torch.equal(a1, a2)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, _order(_epoch(c)))
    assert not torch.equal(a1, y)  # actually shuffled


def test_global_rng_does_not_matter() -> None:
    x, y = _data()
    torch.manual_seed(0)
    o1 = _order(_epoch(DeviceLoader(x, y, 8, seed=3)))
    torch.manual_seed(99)
    o2 = _order(_epoch(DeviceLoader(x, y, 8, seed=3)))
    assert torch.equal(o1, o2)


def test_no_shuffle_keeps_order() -> None:
    x, y = _data()
    loader = DeviceLoader(x, y, 10, shuffle=False)
    assert torch.equal(_order(_epoch(loader)), y)
    assert torch.equal(_order(_epoch(loader)), y)


def test_state_dict_resumes_at_epoch_boundary() -> None:
    x, y = _data()
    a = DeviceLoader(x, y, 12, seed=5)
    _epoch(a)
    state = a.state_dict()
    expected = [_order(_epoch(a)) for _ in range(2)]
    b = DeviceLoader(x, y, 12, seed=123)
    b.load_state_dict(state)
    assert [torch.equal(_order(_epoch(b)), e) for e in expected] == [True, True]


def _noise(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return xb + torch.rand(xb.shape, generator=g, device=xb.device)


def test_state_dict_resumes_mid_epoch_with_transform() -> None:
    x, y = _data()
    a = DeviceLoader(x, y, 10, seed=2, transform=_noise)
    _epoch(a)
    it = iter(a)
    for _ in range(4):
        next(it)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # must survive a checkpoint round-trip
    rest = [(xb.clone(), yb.clone()) for xb, yb in it]
    following = _epoch(a)
    assert len(rest) == 7

    buf.seek(0)
    b = DeviceLoader(x, y, 10, seed=999, transform=_noise)
    b.load_state_dict(torch.load(buf))
    rest_b = _epoch(b)
    following_b = _epoch(b)
    assert len(rest_b) == len(rest)
    for (xa, ya), (xb, yb) in zip(rest + following, rest_b + following_b):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    # the resumed epoch completes the interrupted one: all examples seen exactly once overall
    first4 = DeviceLoader(x, y, 10, seed=2, transform=_noise)
    _epoch(first4)
    head = [yb for _, (_, yb) in zip(range(4), first4)]
    assert torch.equal(torch.cat(head + [yb for _, yb in rest_b]).sort().values, y)


def test_new_iter_after_break_starts_fresh_epoch() -> None:
    x, y = _data()
    loader = DeviceLoader(x, y, 10, seed=4)
    it = iter(loader)
    next(it)
    del it
    assert torch.equal(_order(_epoch(loader)).sort().values, y)


def test_load_state_dict_rejects_other_dataset() -> None:
    x, y = _data()
    state = DeviceLoader(x, y, 10).state_dict()
    with pytest.raises(ValueError, match="num_examples"):
        DeviceLoader(x[:50], y[:50], 10).load_state_dict(state)


def test_transform_gets_loader_generator() -> None:
    x, y = _data()
    calls = []

    def tf(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        calls.append(g)
        return xb * 2

    loader = DeviceLoader(x, y, 50, transform=tf)
    batches = _epoch(loader)
    assert len(calls) == 3 and all(g is loader.generator for g in calls)
    for xb, yb in batches:
        assert torch.equal(xb[:, 0], 2 * yb.float())


def test_with_augmentation_transform() -> None:
    x = torch.randn(40, 3, 8, 8)
    y = torch.arange(40)
    loader = DeviceLoader(x, y, 16, transform=random_crop_flip)
    for xb, yb in loader:
        assert xb.shape == (len(yb), 3, 8, 8)


@pytest.mark.parametrize("bs", [0, -3, 2.5, True])
def test_bad_batch_size(bs: object) -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(x, y, bs)  # type: ignore[arg-type]


def test_length_mismatch() -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="103"):
        DeviceLoader(x, y[:-1], 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.filterwarnings("ignore:Synchronization debug mode")
def test_cuda_loader_stays_on_device() -> None:
    x, y = (t.cuda() for t in _data())
    loader = DeviceLoader(x, y, 10, seed=0, transform=_noise)
    assert loader.generator.device.type == "cuda"
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside an epoch raises
    try:
        batches = _epoch(loader)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(xb.is_cuda and yb.is_cuda for xb, yb in batches)
    assert torch.equal(_order(batches).sort().values.cpu(), torch.arange(N))
    state = loader.state_dict()
    expected = _order(_epoch(loader))
    other = DeviceLoader(x, y, 10, seed=1, transform=_noise)
    other.load_state_dict(state)
    assert torch.equal(_order(_epoch(other)), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_mid_epoch_resume_with_augmentation() -> None:
    x = torch.randn(64, 3, 8, 8, device="cuda")
    y = torch.arange(64, device="cuda")
    a = DeviceLoader(x, y, 8, seed=0, transform=random_crop_flip)
    it = iter(a)
    next(it), next(it)
    state = a.state_dict()
    rest = [xb.clone() for xb, _ in it] + [xb.clone() for xb, _ in a]
    b = DeviceLoader(x, y, 8, seed=5, transform=random_crop_flip)
    b.load_state_dict(state)
    rest_b = [xb for xb, _ in b] + [xb for xb, _ in b]
    assert len(rest) == len(rest_b) == 6 + 8
    assert all(torch.equal(p, q) for p, q in zip(rest, rest_b))
