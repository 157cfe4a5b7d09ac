"""Atomic checkpoints: a failed write leaves the previous file intact and no temporary behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cigl_bayes.train import load_checkpoint, save_checkpoint



def _state(value: float) -> dict:
    return {
        "epoch": 3,
        "weights": torch.full((64, 32), value),
        "nested": {"ints": torch.arange(10), "list": [1.5, "x", None]},
        "rng": torch.get_rng_state(),
        "bools": torch.rand(100) > 0.5,
    }


def _assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert a["epoch"] == b["epoch"]
    for key in ("weights", "rng", "bools"):
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert torch.equal(a["nested"]["ints"], b["nested"]["ints"])
    assert a["nested"]["list"] == b["nested"]["list"]


def test_round_trip(tmp_path: Path) -> None:
    state = _state(1.25)
    path = save_checkpoint(state, tmp_path / "deep" / "er" / "ck.pt")  # parents are created
    assert path == tmp_path / "deep" / "er" / "ck.pt" and path.is_file()
    _assert_state_equal(load_checkpoint(path), state)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck.pt"]


def test_overwrite_replaces_content(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(_state(1.0), path)
    save_checkpoint(_state(2.0), path)
    assert torch.equal(load_checkpoint(path)["weights"], torch.full((64, 32), 2.0))
    assert os.listdir(tmp_path) == ["ck.pt"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_save_keeps_previous_checkpoint_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    path = tmp_path / "ck.pt"
    old = _state(1.0)
    save_checkpoint(old, path)
    old_bytes = path.read_bytes()
    real_save = torch.save
    calls = []

    def partial_save(obj, handle, *args, **kwargs):
        # write a real prefix of the new file, then die half-way
        import io

        buffer = io.BytesIO()
        real_save(obj, buffer)
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 3])
        calls.append(handle)
        raise error

    monkeypatch.setattr(torch, "save", partial_save)
    with pytest.raises(type(error)):
        save_checkpoint(_state(2.0), path)
    assert calls, "the patched torch.save was not used"
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    _assert_state_equal(load_checkpoint(path), old)
    assert os.listdir(tmp_path) == ["ck.pt"], "a temporary file was left behind"


def test_failed_rename_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(_state(1.0), path)

    def broken_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_checkpoint(_state(2.0), path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["weights"], torch.full((64, 32), 1.0))
    assert os.listdir(tmp_path) == ["ck.pt"]


def test_failed_first_save_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half")
        raise RuntimeError("boom")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(_state(1.0), tmp_path / "ck.pt")
    assert os.listdir(tmp_path) == []


def test_load_missing_names_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "checkpoint.pt"
    with pytest.raises(FileNotFoundError) as info:
        load_checkpoint(missing)
    message = str(info.value)
    assert str(missing) in message
    assert "--resume" in message and "train first" in message


def test_load_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path)


class _Payload:
    """Unpickling this runs ``touch MARKER`` (what a crafted checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_load_refuses_code_in_a_crafted_checkpoint(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 1, "config": {"method": "rigl"}, "payload": _Payload(marker)}, path)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    assert not marker.exists(), "loading the checkpoint ran its payload"
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "system" in message


@pytest.mark.parametrize("content", [b"", b"garbage, not a zip" * 10, "truncated"], ids=["empty", "garbage", "truncated"])
def test_load_damaged_checkpoint_is_a_value_error(tmp_path: Path, content) -> None:
    path = tmp_path / "checkpoint.pt"
    if content == "truncated":
        save_checkpoint(_state(1.0), path)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "not a readable checkpoint" in message


def test_weights_round_trip_as_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from cigl_bayes.train import save_weights

    state = {"w": torch.randn(4, 3), "view": torch.arange(12.0).view(3, 4)[:, 1], "mask": torch.rand(5) > 0.5}
    path = save_weights(state, tmp_path / "model.safetensors", metadata={"method": "rigl"})
    loaded = load_file(path)
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
