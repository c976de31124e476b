"""Every notebook under notebooks/ runs top to bottom without an error.

Each notebook starts (and stops) its own server and asserts its key claims in its cells, so a wrong
claim fails here as a cell error. Notebooks are committed without outputs; this checks that too.
"""

from __future__ import annotations

import time
from pathlib import Path

import ipykernel  # noqa: F401 - the kernel the notebooks run in; fail here, clearly, if it is missing
import nbclient
import nbformat
import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT_SECONDS = 300
# Cheap checks on the printed outputs (the notebooks assert their claims themselves as well).
EXPECTED_TEXT = {
    "01-quickstart.ipynb": ["labels agree on every row", "labels agree with plaintext on 100.0%"],
    "02-bring-your-own-model.ipynb": [
        "refused: layer 1 (ReLU)", "multiplicative depth 5", "CKKS N = 16384", "same labels with the fewest keys",
    ],
    "04-privacy.ipynb": ["NotFoundError 404", "ciphertext/key windows found: 0"],
    "03-benchmark.ipynb": ["every shipped model (8) measured in both layouts"],
}


def test_there_are_notebooks():
    assert {"01-quickstart.ipynb", "02-bring-your-own-model.ipynb", "04-privacy.ipynb"} <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    monkeypatch.delenv("HESERVE_URL", raising=False)  # the quickstart starts its own server
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_SECONDS,
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    started = time.monotonic()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{path.name} failed after {time.monotonic() - started:.0f} s:\n{exc}", pytrace=False)
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.get("output_type") == "error"
    ]
    assert not errors
    text = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.get("output_type") == "stream"
    )
    assert "Traceback" not in text
    for expected in EXPECTED_TEXT.get(path.name, []):
        assert expected in text, f"{path.name}: {expected!r} not in the output"
