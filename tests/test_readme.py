"""The README as a newcomer meets it: the Pyro snippet and the own-loop example run as written, the
main job says how long it takes, and an ordinary machine is told how to get the CPU wheel of torch."""

from __future__ import annotations

import re
from pathlib import Path


def test_pyro_snippet_runs_as_written(tmp_path: Path, readme_blocks, python_run) -> None:
    (snippet,) = readme_blocks("## The Bayesian view (Pyro)")
    proc = python_run(snippet, tmp_path)
    assert proc.returncode == 0, proc.stderr
    accuracy = float(re.search(r"MC predictive accuracy ([0-9.]+)", proc.stdout).group(1))
    assert accuracy > 0.8


def test_main_job_states_its_run_time_and_the_cpu_wheel(readme) -> None:
    first = readme("## Two commands (fresh CPU machine)")
    assert "cigl_bayes compare" in first
    assert re.search(r"takes about \d+ min", first), "the main job's run time is not given"
    assert "--index-url https://download.pytorch.org/whl/cpu" in first


def test_own_loop_example_runs_as_written(tmp_path: Path, readme_blocks, python_run) -> None:
    """The first block of "In your own training loop" (masks, RigL updates, CigL averaging by hand)."""
    snippet = readme_blocks("## In your own training loop")[0]
    assert "TopologyUpdater" in snippet and "averaged_model()" in snippet
    proc = python_run(snippet, tmp_path)
    assert proc.returncode == 0, proc.stderr
    accuracy = float(re.search(r"tensor\(([0-9.]+)\)", proc.stdout).group(1))
    assert accuracy > 0.9
