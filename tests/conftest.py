"""Shared fixtures: the digits splits (loaded once) and tiny run configurations.

Everything here is sized for a shared 2-core CPU: an MLP on digits with batch 128 trains
an epoch (8 steps) in a few hundredths of a second.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import torch

from cigl_bayes.config import RunConfig, recipe
from cigl_bayes.data import DataSplits, load_dataset


def tiny(method: str = "rigl", **changes: Any) -> RunConfig:
    """The digits recipe shrunk to a quick MLP run (override anything with ``section__field``)."""
    base = dict(
        method=method,
        model__name="mlp",
        optim__epochs=2,
        data__batch_size=128,
        sparsity__update_every=2,
        eval__mc_samples=2,
        moon__warmup_epochs=1,
    )
    base.update(changes)
    return recipe("digits").with_(**base)


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """One intra-op thread for the whole test session (restored after).

    On a shared, oversubscribed CPU two spinning torch threads make these tiny models up to
    100x slower; results are bit-identical either way.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits_data() -> DataSplits:
    """The embedded digits splits (1078 train / 180 val / 539 test, 10 classes, 1x8x8)."""
    return load_dataset("digits")


@pytest.fixture
def tiny_config() -> Callable[..., RunConfig]:
    return tiny


def write_npz(path: Path, n_train: int = 240, n_test: int = 60, features: int = 12, classes: int = 3, seed: int = 0, **overrides: np.ndarray) -> Path:
    """A small learnable flat dataset (class-dependent means) saved as an ``npz:`` file."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(classes, features))
    y_train = np.arange(n_train) % classes
    y_test = np.arange(n_test) % classes
    arrays = {
        "x_train": centres[y_train] + rng.normal(size=(n_train, features)),
        "y_train": y_train,
        "x_test": centres[y_test] + rng.normal(size=(n_test, features)),
        "y_test": y_test,
    }
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def npz_file(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "small.npz")


@pytest.fixture
def make_npz() -> Callable[..., Path]:
    return write_npz


# ----------------------------------------------------------------------------- README snippets
REPO = Path(__file__).resolve().parents[1]


def readme_section(heading: str) -> str:
    """The README text under ``heading`` (e.g. ``"## Design"``, ``"### In Lightning"``), up to the next
    heading of the same or a higher level; lines inside fenced code blocks are never headings."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = (REPO / "README.md").read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == heading]
    assert starts, f"README has no {heading!r} heading"
    body, in_fence = [], False
    for line in lines[starts[0] + 1:]:
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        elif not in_fence and re.match(rf"#{{1,{level}}} ", line):
            break
        body.append(line)
    return "".join(body)


def readme_python_blocks(heading: str) -> list[str]:
    """The ```` ```python ```` blocks of ``readme_section(heading)``, in order."""
    return re.findall(r"```python\n(.*?)```", readme_section(heading), flags=re.S)


def run_python(code: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (this checkout importable, one OpenMP thread), as a user would."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="session")
def readme() -> Callable[[str], str]:
    """``readme(heading)``: that README section (see ``readme_section``)."""
    return readme_section


@pytest.fixture(scope="session")
def readme_blocks() -> Callable[[str], list[str]]:
    """``readme_blocks(heading)``: the python blocks of that README section."""
    return readme_python_blocks


@pytest.fixture(scope="session")
def python_run() -> Callable[..., subprocess.CompletedProcess]:
    """``python_run(code, cwd, timeout=300)``: run a snippet as written in a fresh interpreter."""
    return run_python
