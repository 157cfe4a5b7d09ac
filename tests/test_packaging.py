"""The package ships its ``py.typed`` marker (PEP 561), so type checkers read its annotations."""

from __future__ import annotations

import importlib.resources
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_py_typed_is_in_the_installed_package() -> None:
    marker = importlib.resources.files("cigl_bayes") / "py.typed"
    assert marker.is_file()


def test_pyproject_ships_py_typed_as_package_data() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["cigl_bayes"]
    assert config["project"]["optional-dependencies"]["metrics"] == ["torchmetrics>=1.3"]


@pytest.mark.slow
def test_built_wheel_contains_py_typed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(REPO / "cigl_bayes", src / "cigl_bayes", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", str(src), "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"cannot build a wheel offline here: {proc.stderr.strip()[-300:]}")
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert "cigl_bayes/py.typed" in zipfile.ZipFile(wheel).namelist()
