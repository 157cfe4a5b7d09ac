"""The notebooks under ``notebooks/``: they execute end to end in small mode, and are committed clean.

Each notebook reads ``CIGL_NOTEBOOK_SMALL=1`` in its first code cell and shrinks every size (a few epochs,
few MC draws), so one execution takes well under a minute on one CPU thread. The kernel is a subprocess
that inherits this process's environment, so the variables are set with ``monkeypatch`` before it starts.
Executed notebooks are kept in memory only; the committed files must hold no outputs, so that they can
never show stale results.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = ("dgp_equivalence.ipynb", "posterior_predictive_uncertainty.ipynb")
KERNEL = "python3"


def _require_kernel() -> None:
    from jupyter_client.kernelspec import find_kernel_specs

    specs = find_kernel_specs()
    if KERNEL not in specs:
        pytest.fail(f"Jupyter kernelspec {KERNEL!r} not found (have: {sorted(specs) or 'none'}); "
                    "install it with `python3 -m ipykernel install --user`", pytrace=False)


def _execute(name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[nbformat.NotebookNode, float]:
    from nbclient import NotebookClient

    _require_kernel()
    monkeypatch.setenv("CIGL_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name=KERNEL, resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    return nb, time.perf_counter() - start


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def _text(nb: nbformat.NotebookNode) -> str:
    """Everything printed (streams) and every text/plain or text/markdown or text/html display, joined."""
    parts = []
    for out in _outputs(nb):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        for mime in ("text/plain", "text/markdown", "text/html"):
            if mime in out.get("data", {}):
                parts.append(out["data"][mime])
    return "\n".join(parts)


def _count(nb: nbformat.NotebookNode, mime: str) -> int:
    return sum(mime in out.get("data", {}) for out in _outputs(nb))


def _printed_float(text: str, label: str) -> float:
    match = re.search(re.escape(label) + r"\s*=\s*([-+0-9.eE]+)", text)
    assert match, f"{label!r} not printed"
    return float(match.group(1))


@pytest.mark.slow
def test_dgp_equivalence_notebook_runs(monkeypatch):
    nb, seconds = _execute("dgp_equivalence.ipynb", monkeypatch)
    print(f"dgp_equivalence.ipynb (small mode) executed in {seconds:.1f} s")
    assert not [o for o in _outputs(nb) if o["output_type"] == "error"]
    text = _text(nb)
    # kernel convergence plot, kernel matrices, comparison figure, own predictive plot, KL plot
    assert _count(nb, "image/png") >= 5
    # the DGP comparison table is displayed as Markdown with all three rows
    markdown = "\n".join(o["data"]["text/markdown"] for o in _outputs(nb) if "text/markdown" in o.get("data", {}))
    for row in ("cigl-mc", "cigl-wma", "dgp"):
        assert f"| {row} |" in markdown
    assert "gap_variance_ratio" in markdown
    assert "least-squares slope of log error vs log W" in text
    # the KL gradient is the weight-decay gradient to rounding
    assert _printed_float(text, "max |dKL/N - omega V|") < 1e-12
    assert _printed_float(text, "max |step(CE + KL/N) - step(CE, weight_decay=2 lambda)|") < 1e-12


@pytest.mark.slow
def test_posterior_predictive_uncertainty_notebook_runs(monkeypatch):
    nb, seconds = _execute("posterior_predictive_uncertainty.ipynb", monkeypatch)
    print(f"posterior_predictive_uncertainty.ipynb (small mode) executed in {seconds:.1f} s")
    assert not [o for o in _outputs(nb) if o["output_type"] == "error"]
    # reliability grid, ArviZ grid, entropy bars, rotation curves
    assert _count(nb, "image/png") >= 4
    html = "\n".join(o["data"]["text/html"] for o in _outputs(nb) if "text/html" in o.get("data", {}))
    for column in ("ECE", "NLL", "Brier", "lpd", "psis_reweighted_lpd", "draw_disagreement"):
        assert column in html, column
    for row in ("dense", "rigl", "cigl (WMA)", "cigl (MC masks)", "cigl-svi (guide MC)", "deep GP"):
        assert row in html, row
    for shifted in ("noise", "inverted", "rotated", "photos", "uniform"):
        assert shifted in html, shifted


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_committed_without_outputs(name):
    path = NOTEBOOKS_DIR / name
    assert path.is_file(), f"{path} is missing"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells, "no code cells"
    for i, cell in enumerate(code_cells):
        assert cell.get("outputs") == [], f"code cell {i} of {name} holds outputs; strip them before committing"
        assert cell.get("execution_count") is None, f"code cell {i} of {name} has an execution count"
    assert "SMALL = os.environ.get(\"CIGL_NOTEBOOK_SMALL\", \"0\") == \"1\"" in code_cells[0].source
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL


def test_no_other_notebooks_escape_the_checks():
    """Every committed notebook is one of those executed above."""
    found = sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb"))
    assert found == sorted(NOTEBOOKS)
