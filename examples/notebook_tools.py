"""Build a notebook from (kind, source) cells, execute it and write it with its outputs."""
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def write_executed(cells: list[tuple[str, str]], out: Path, timeout: int = 1200) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(out.parent)}}).execute()
    nbformat.write(nb, out)
