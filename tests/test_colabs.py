"""Specification of colabs/: every notebook runs top to bottom on CPU, and is committed clean.

Each notebook keeps its knobs in one cell tagged ``parameters`` (the papermill convention). The
test inserts, right after it, a cell tagged ``injected-parameters`` with tiny sizes, as
``papermill -p NAME VALUE`` would, and executes the notebook with nbclient in a kernel running this
interpreter. The kernel inherits the environment set by tests/conftest.py (8 simulated CPU devices)
and sees this working tree's ``mmssl_jax`` first on its path.

To add a notebook: put it in colabs/ with a ``parameters`` cell and add it to ``NOTEBOOKS`` with
the overrides that make it run in seconds, and the lines its own checks print on success.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
COLABS = REPO / "colabs"
CELL_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class Notebook:
    name: str  # file name in colabs/
    parameters: dict  # overrides for names assigned in the notebook's parameters cell
    expected_output: tuple[str, ...] = ()  # lines the notebook prints when its own checks pass


_SCRATCH = tempfile.mkdtemp(prefix="mmssl_colabs_")  # datasets and runs the notebooks write

NOTEBOOKS = [
    Notebook(
        "01_quickstart.ipynb",
        parameters={
            "STEPS": 6,
            "BATCH": 32,
            "IMAGE_SIZE": 16,
            "NUM_TRAIN": 256,
            "PROBE_TRAIN": 128,
            "WIDTH": 4,
            "DATA_DIR": f"{_SCRATCH}/tfds",
            "WORKDIR": f"{_SCRATCH}/runs",
        },
        expected_output=("simclr trained", "clip trained", "retrieval grid drawn"),
    ),
    Notebook(
        "04_modalities.ipynb",
        parameters={
            "STEPS": 4,
            "BATCH": 32,
            "IMAGE_SIZE": 16,
            "NUM_TRAIN": 256,  # 01_quickstart's sizes and folder: run by the same worker, the data is prepared once
            "WIDTH": 4,
            "RATES": (0.0, 0.5, 1.0),
            "PROBE_ITERS": 20,
            "TOP_K": 3,
            "DATA_DIR": f"{_SCRATCH}/tfds",
            "WORKDIR": f"{_SCRATCH}/modalities",
        },
        expected_output=("clip trained", "robustness curves drawn", "counterfactual contributions drawn",
                         "top samples drawn"),
    ),
    Notebook(
        "02_losses_in_your_project.ipynb",
        parameters={
            "TRAIN_STEPS": 60,
            "TRAIN_BATCH": 64,
            "NUM_CLUSTERS": 256,
            "EMBED_DIM": 32,
            "AGREE_BATCH": 256,
            "GLOBAL_BATCH": 1024,
        },
        expected_output=(
            "sharded == unsharded: OK",
            "logit_scale gradient under shard_map == unsharded: OK",
        ),
    ),
]


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _parameters_cell_index(nb: nbformat.NotebookNode) -> int:
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected exactly one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def _assigned_names(source: str) -> set[str]:
    tree = ast.parse(source)
    return {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _with_parameters(nb: nbformat.NotebookNode, parameters: dict) -> nbformat.NotebookNode:
    """``nb`` with a cell setting ``parameters`` right after its parameters cell (as papermill)."""
    index = _parameters_cell_index(nb)
    unknown = set(parameters) - _assigned_names(nb.cells[index].source)
    assert not unknown, f"overrides {sorted(unknown)} are not assigned in the notebook's parameters cell"
    source = "# Injected by tests/test_colabs.py\n" + "".join(f"{k} = {v!r}\n" for k, v in parameters.items())
    injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, injected)
    return nb


def _use_this_interpreter_as_python3(jupyter_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes the ``python3`` kernel run this interpreter, whatever kernelspecs the machine has.

    ``$JUPYTER_PATH`` is searched before the user's and the environment's kernelspecs.
    """
    spec_dir = jupyter_dir / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(jupyter_dir), os.environ.get("JUPYTER_PATH")])))


def _stream_text(nb: nbformat.NotebookNode) -> str:
    return "".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )


def _require_kernel_modules() -> None:
    # The kernel imports these; without them it dies or a cell fails with less helpful errors.
    missing = [m for m in ("ipykernel", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"{missing} not installed in {sys.executable}; run pip install -e '.[test]'")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda n: n.name)
def test_notebook_runs_on_cpu_with_tiny_parameters(notebook, tmp_path, monkeypatch):
    _require_kernel_modules()
    _use_this_interpreter_as_python3(tmp_path / "jupyter", monkeypatch)
    # The kernel inherits this environment: conftest.py's 8 CPU devices, and this working tree's
    # mmssl_jax ahead of any installed copy.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    nb = _with_parameters(_read(COLABS / notebook.name), notebook.parameters)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(COLABS)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell's traceback, if any cell fails
    print(f"{notebook.name}: {time.perf_counter() - start:.1f} s")

    printed = _stream_text(nb)
    for line in notebook.expected_output:
        assert line in printed, f"{notebook.name} did not print {line!r}; it printed:\n{printed}"


NOT_EXECUTED = {
    # Needs MS-COCO (about 20 GB) and hours of TPU/GPU time; its code cells are compiled below and
    # every library call it makes is exercised by tests/test_evaluate.py and tests/test_train.py.
    "03_coco_clip.ipynb": "needs MS-COCO and an accelerator",
}


def test_every_notebook_is_executed_by_the_tests():
    executed = {n.name for n in NOTEBOOKS}
    assert sorted(p.name for p in COLABS.glob("*.ipynb")) == sorted(executed | set(NOT_EXECUTED))


@pytest.mark.parametrize("name", sorted(NOT_EXECUTED))
def test_notebooks_not_executed_here_at_least_compile(name):
    """Every code cell parses as Python once IPython's ``%``/``!`` lines are set aside."""
    nb = _read(COLABS / name)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            lines = [line[: len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("%", "!")) else line
                     for line in cell.source.splitlines()]
            compile("\n".join(lines), f"{name} cell {i}", "exec")


@pytest.mark.parametrize("path", sorted(COLABS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebook_is_valid_and_has_no_outputs(path):
    nb = _read(path)
    nbformat.validate(nb)
    _parameters_cell_index(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {i} has outputs; clear them before committing"
            assert cell.execution_count is None, f"{path.name}: cell {i} has an execution count"
