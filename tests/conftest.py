"""Shared test helpers: a brute-force Jacobian reference and small model factories."""

from __future__ import annotations

import pytest
import torch


def autograd_row_loop(fn, x: torch.Tensor) -> torch.Tensor:
    """Build the Jacobian of ``fn`` at ``x`` one row at a time with plain ``torch.autograd.grad``.

    This is the reference the torch.func paths are checked against; (m, n).
    """
    x = x.detach().clone().requires_grad_(True)
    out = fn(x).reshape(-1)
    rows = []
    for i in range(out.numel()):
        (grad,) = torch.autograd.grad(out[i], x, retain_graph=True)
        rows.append(grad.reshape(-1))
    return torch.stack(rows)


@pytest.fixture
def float64_default():
    """Run a test with float64 as the default dtype, restoring the previous default after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(autouse=True)
def seeded_torch():
    """Seed torch's global RNG before every test, so random weights and inputs repeat."""
    torch.manual_seed(0)


def run_cli(argv, capsys):
    """Run the CLI and return (exit status, stdout, stderr); argparse errors exit with 2."""
    from rezero_dynamics.cli import main

    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err
