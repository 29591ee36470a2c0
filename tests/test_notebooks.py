"""Execute every teaching notebook at its small size and check a key result of each.

The notebooks read ``REZERO_NOTEBOOK_SMALL=1`` in their parameters cell. The kernel is
started from a kernel spec written for this interpreter (``sys.executable``), so the
notebooks run in the environment under test, not in whatever ``python3`` kernel a
machine has installed. After the notebook's own cells, one appended cell prints the
checked variables as JSON, read back here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest
from ipykernel import kernelspec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL_NAME = "rezero-dynamics-test"
MARKER = "NOTEBOOK-CHECKS:"


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory):
    """A kernel spec directory whose only kernel runs this interpreter."""
    root = tmp_path_factory.mktemp("kernels")
    kernelspec.write_kernel_spec(root / KERNEL_NAME)
    spec = json.loads((root / KERNEL_NAME / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    return [str(root)]


def run_notebook(name: str, checked: list[str], kernel_dirs: list[str], monkeypatch) -> dict:
    """Execute ``name`` at the small size and return the values of its ``checked`` variables."""
    monkeypatch.setenv("REZERO_NOTEBOOK_SMALL", "1")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    names = ", ".join(f"{variable!r}: {variable}" for variable in checked)
    notebook.cells.append(
        nbformat.v4.new_code_cell(
            f"import json, sys\nprint({MARKER!r} + json.dumps({{'executable': sys.executable, 'SMALL': SMALL, {names}}}))"
        )
    )
    manager = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs))
    client = nbclient.NotebookClient(notebook, km=manager, timeout=300, resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError on the first cell that fails

    printed = "".join(output.get("text", "") for output in notebook.cells[-1].outputs)
    line = next(line for line in printed.splitlines() if line.startswith(MARKER))
    values = json.loads(line[len(MARKER):])
    assert values.pop("executable") == sys.executable
    assert values.pop("SMALL") is True
    return values


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == [
        "01_dynamical_isometry.ipynb",
        "02_spectra_of_your_model.ipynb",
        "03_alpha_and_gradients_over_training.ipynb",
    ]


def test_notebooks_have_no_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{path.name} is committed with outputs; clear them"


def test_dynamical_isometry_notebook(kernel_dirs, monkeypatch):
    values = run_notebook(
        "01_dynamical_isometry.ipynb", ["rezero_max_deviation", "product_max_error"], kernel_dirs, monkeypatch
    )
    # A stack of ReZero blocks at alpha = 0 is the identity map: every singular value is 1.
    assert values["rezero_max_deviation"] <= 1e-12
    # The Jacobian of a deep linear network is the product of its weight matrices.
    assert values["product_max_error"] <= 1e-12


def test_spectra_of_your_model_notebook(kernel_dirs, monkeypatch):
    values = run_notebook(
        "02_spectra_of_your_model.ipynb",
        ["lanczos_max_error", "profile_max_error", "chi_z_score", "finite_difference_max_error"],
        kernel_dirs,
        monkeypatch,
    )
    assert values["lanczos_max_error"] <= 1e-8
    assert values["profile_max_error"] <= 1e-10
    assert abs(values["chi_z_score"]) <= 4.0
    assert values["finite_difference_max_error"] <= 1e-6


def test_training_notebook(kernel_dirs, monkeypatch):
    values = run_notebook(
        "03_alpha_and_gradients_over_training.ipynb",
        ["rezero_step0_max_deviation", "initial_alphas_max", "final_alphas_max", "loss_drop"],
        kernel_dirs,
        monkeypatch,
    )
    assert values["rezero_step0_max_deviation"] <= 1e-12
    assert values["initial_alphas_max"] == 0.0
    assert values["final_alphas_max"] > 0.0
    assert values["loss_drop"] > 0.0
