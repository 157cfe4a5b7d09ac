"""The README as a newcomer meets it: the Pyro snippet runs as written, the main job says how long
it takes, and an ordinary machine is told how to get the CPU wheel of torch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _section(heading: str) -> str:
    start = README.index(f"\n## {heading}")
    end = README.find("\n## ", start + 1)
    return README[start: end if end != -1 else None]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_pyro_snippet_runs_as_written(tmp_path: Path) -> None:
    (snippet,) = _python_blocks(_section("The Bayesian view (Pyro)"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    accuracy = float(re.search(r"MC predictive accuracy ([0-9.]+)", proc.stdout).group(1))
    assert accuracy > 0.8


def test_main_job_states_its_run_time_and_the_cpu_wheel() -> None:
    first = _section("Two commands (fresh CPU machine)")
    assert "cigl_bayes compare" in first
    assert re.search(r"takes about \d+ min", first), "the main job's run time is not given"
    assert "--index-url https://download.pytorch.org/whl/cpu" in first


def test_own_loop_example_runs_as_written(tmp_path: Path) -> None:
    """The first block of "In your own training loop" (masks, RigL updates, CigL averaging by hand)."""
    snippet = _python_blocks(_section("In your own training loop"))[0]
    assert "TopologyUpdater" in snippet and "averaged_model()" in snippet
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    accuracy = float(re.search(r"tensor\(([0-9.]+)\)", proc.stdout).group(1))
    assert accuracy > 0.9
