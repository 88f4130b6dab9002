"""The quickstart notebook executes without error and draws its figure."""
from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path):
    copy = tmp_path / NOTEBOOK.name
    shutil.copy(NOTEBOOK, copy)
    nb = nbformat.read(copy, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert "test/dice_swapped_text" in str(outputs[-1])


def test_text_steering_notebook_trains_saves_loads_and_segments_per_text(tmp_path, monkeypatch):
    monkeypatch.setenv("LANGSEG_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("LANGSEG_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    nb = nbformat.read(NOTEBOOK.with_name("text_steering.ipynb"), as_version=4)
    path = str(NOTEBOOK.parent)  # the notebook writes only under LANGSEG_NOTEBOOK_RUNS
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": path}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert (tmp_path / "runs" / "himix" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert any("image/png" in o.get("data", {}) for o in outputs)
