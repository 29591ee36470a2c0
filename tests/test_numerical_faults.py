"""Numerical faults: where a non-finite Jacobian comes from, and SVD convergence fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from rezero_dynamics.models import DeepMLP
from rezero_dynamics.spectra import (
    NonFiniteError,
    SVDConvergenceError,
    jacobian_matrix,
    jacobian_spectrum,
    singular_values,
)
from rezero_dynamics.tracking import Tracker


class SquareRoot(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)


def test_nan_weight_names_block():
    model = DeepMLP(6, 4, variant="rezero").double()
    with torch.no_grad():
        model.stack.blocks[2].sublayer.linear.weight[3, 1] = float("nan")
    with pytest.raises(NonFiniteError) as caught:
        jacobian_spectrum(model.stack, torch.randn(2, 6, dtype=torch.float64))
    message = str(caught.value)
    assert message.startswith("sample 0: the model's output contains 6 non-finite value(s)")
    assert "Non-finite parameters or buffers: blocks.2.sublayer.linear.weight." in message
    # The Linear layer is the innermost module that finishes with NaN; its row 3 is the first.
    assert "The first module whose output is non-finite is 'blocks.2.sublayer.linear' (Linear)" in message
    assert "at output element (0, 3) (flat index 3)" in message


def test_nan_weight_names_block_in_matrix():
    model = DeepMLP(6, 3, activation="relu", variant="pre_norm").double()
    with torch.no_grad():
        model.stack.blocks[1].sublayer.linear.bias[0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"first module whose output is non-finite is 'blocks\.1\.sublayer\.linear'"):
        jacobian_matrix(model.stack, torch.randn(1, 6, dtype=torch.float64))


def test_non_finite_derivative_names_indices():
    model = nn.Sequential(nn.Identity(), SquareRoot())
    inputs = torch.ones(2, 3, dtype=torch.float64)
    inputs[1, 2] = 0.0  # d sqrt(x) / dx is infinite at 0, while sqrt(0) = 0 is finite
    with pytest.raises(NonFiniteError) as caught:
        jacobian_spectrum(model, inputs)
    message = str(caught.value)
    assert message.startswith("the Jacobian of sample 1 contains")
    assert "with respect to input element (0, 2) (flat index 2)" in message
    assert "Every module's output is finite, so the derivative itself is infinite or NaN" in message


def test_nan_probe_input_rejected():
    model = DeepMLP(4, 2).double()
    inputs = torch.randn(2, 4, dtype=torch.float64)
    inputs[1, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"inputs contains 1 non-finite value\(s\) \(NaN or inf\) out of 8"):
        jacobian_spectrum(model.stack, inputs)


@pytest.fixture
def failing_svdvals(monkeypatch):
    """Make torch.linalg.svdvals raise LinAlgError for the dtypes in ``failing``; record calls."""
    real = torch.linalg.svdvals
    calls: list[tuple[torch.dtype, str | None]] = []
    failing = {torch.float32, torch.float64}

    def svdvals(matrix, *, driver=None, out=None):
        calls.append((matrix.dtype, driver))
        if matrix.dtype in failing:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge (simulated)")
        return real(matrix, driver=driver)

    monkeypatch.setattr(torch.linalg, "svdvals", svdvals)
    return calls, failing


def test_svd_retries_in_float64(failing_svdvals):
    calls, failing = failing_svdvals
    failing.discard(torch.float64)
    matrix = torch.randn(7, 5, generator=torch.Generator().manual_seed(1))
    values = singular_values(matrix)
    assert [dtype for dtype, _ in calls] == [torch.float32, torch.float64]
    assert values.dtype == torch.float64
    reference = np.linalg.svd(matrix.double().numpy(), compute_uv=False)
    np.testing.assert_allclose(values.numpy(), reference, rtol=1e-12)


def test_svd_falls_back_to_gesvd(failing_svdvals):
    calls, _ = failing_svdvals
    matrix = torch.randn(6, 6, generator=torch.Generator().manual_seed(2))
    values = singular_values(matrix)
    assert [dtype for dtype, _ in calls] == [torch.float32, torch.float64]
    reference = np.linalg.svd(matrix.double().numpy(), compute_uv=False)
    np.testing.assert_allclose(values.numpy(), reference, rtol=1e-12)


def test_svd_failure_lists_attempts(failing_svdvals, monkeypatch):
    def no_convergence(*args, **kwargs):
        raise np.linalg.LinAlgError("SVD did not converge (simulated)")

    monkeypatch.setattr(scipy.linalg, "svd", no_convergence)
    with pytest.raises(SVDConvergenceError) as caught:
        singular_values(torch.eye(3))
    assert str(caught.value) == (
        "the SVD of the 3 x 3 matrix did not converge (torch.linalg.svdvals in float32: linalg.svd: The "
        "algorithm failed to converge (simulated); torch.linalg.svdvals in float64: linalg.svd: The algorithm "
        "failed to converge (simulated); scipy.linalg.svd in float64 with lapack_driver='gesvd': SVD did not "
        "converge (simulated)); check the matrix for NaN or very large entries, or analyse a smaller depth or width"
    )


def test_spectrum_survives_svd_failure(failing_svdvals):
    model = DeepMLP(5, 3, activation="tanh", variant="pre_norm").double()
    inputs = torch.randn(2, 5, dtype=torch.float64)
    failing_svdvals[1].clear()
    expected = jacobian_spectrum(model.stack, inputs).singular_values
    failing_svdvals[1].update({torch.float32, torch.float64})
    fallback = jacobian_spectrum(model.stack, inputs).singular_values
    torch.testing.assert_close(fallback, expected, rtol=1e-12, atol=1e-14)


def test_tracker_rejects_model_without_parameters():
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Identity(), nn.ReLU()])
    with pytest.raises(ValueError, match="has no parameters that require gradients"):
        Tracker(model)


def test_tracker_rejects_model_without_blocks():
    with pytest.raises(ValueError, match="Linear has no attribute 'blocks'; pass blocks="):
        Tracker(nn.Linear(2, 2))
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="the model has no blocks to track"):
        Tracker(model, blocks=[])
