"""Matrix-free spectra against the materialised Jacobian and known spectra."""


import numpy as np
import pytest
import torch
from torch import nn

from rezero_dynamics.models import DeepMLP, TransformerEncoder
from rezero_dynamics.spectra import jacobian_matrix
from rezero_dynamics.spectra.matrix_free import (
    JacobianOperator,
    extreme_singular_values,
    jacobian_moments,
    spectral_density,
)


@pytest.fixture(scope="module")
def tanh_case():
    torch.manual_seed(3)
    model = DeepMLP(96, 3, activation="tanh", variant="residual", sigma_w=1.2)
    x = torch.randn(1, 96, dtype=torch.float64)
    exact = torch.linalg.svdvals(jacobian_matrix(model, x, dtype=torch.float64)).numpy()
    return JacobianOperator(model, x, dtype=torch.float64), exact


def test_operator_products_match_matrix(tanh_case):
    operator, _ = tanh_case
    matrix = jacobian_matrix(operator.fn, operator.x)
    vectors = torch.randn(96, 3, dtype=torch.float64)
    torch.testing.assert_close(operator.matvec(vectors), matrix @ vectors)
    torch.testing.assert_close(operator.rmatvec(vectors), matrix.T @ vectors)
    torch.testing.assert_close(operator.matvec(vectors[:, 0]), matrix @ vectors[:, 0])
    torch.testing.assert_close(operator.jvp_matvec(vectors), matrix @ vectors)
    scipy_view = operator.to_scipy()
    np.testing.assert_allclose(scipy_view.matvec(vectors[:, 1].numpy()), (matrix @ vectors[:, 1]).numpy(), rtol=1e-12)


@pytest.mark.parametrize(
    "method, block_size", [("lanczos", None), ("lanczos", 1), ("lanczos", 5), ("lanczos", 16), ("arpack", None)]
)
@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_extreme_values_match_svdvals(tanh_case, method, block_size, which):
    operator, exact = tanh_case
    result = extreme_singular_values(operator, 8, which=which, method=method, block_size=block_size)
    reference = exact[:8] if which == "largest" else exact[::-1][:8]
    np.testing.assert_allclose(result.values, reference, rtol=1e-6)
    assert result.converged
    assert len(np.unique(np.round(result.values, 10))) == 8  # no ghost copies
    assert result.residuals.max() <= 1e-6


def test_lanczos_small_values_of_ill_conditioned_map():
    torch.manual_seed(0)
    model = DeepMLP(64, 4, activation="tanh", variant="none", sigma_w=1.5)
    x = torch.randn(1, 64, dtype=torch.float64)
    exact = torch.linalg.svdvals(jacobian_matrix(model, x, dtype=torch.float64)).numpy()
    result = extreme_singular_values(JacobianOperator(model, x, dtype=torch.float64), 4, which="smallest")
    # Golub-Kahan keeps an absolute accuracy of about eps * max(s), far below these values.
    np.testing.assert_allclose(result.values, exact[::-1][:4], rtol=1e-6, atol=1e-13 * exact[0])


@pytest.mark.parametrize("block_size", [None, 1, 7])
@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_identity_and_zero_maps(which, block_size):
    x = torch.randn(40, dtype=torch.float64)
    identity = extreme_singular_values(JacobianOperator(nn.Identity(), x), 6, which=which, block_size=block_size)
    np.testing.assert_allclose(identity.values, np.ones(6), rtol=0, atol=1e-15)
    assert identity.converged
    zero = extreme_singular_values(JacobianOperator(lambda v: 0.0 * v, x), 6, which=which, block_size=block_size)
    np.testing.assert_array_equal(zero.values, np.zeros(6))
    assert zero.converged


def test_rezero_at_init_returns_ones():
    encoder = TransformerEncoder(8, 6, heads=2, variant="rezero")
    operator = JacobianOperator(encoder, torch.randn(4, 8, dtype=torch.float64))
    result = extreme_singular_values(operator, 5)
    np.testing.assert_allclose(result.values, np.ones(5), atol=1e-12)


@pytest.mark.parametrize("block_size", [1, 4, 30])
def test_block_lanczos_on_wide_and_tall_maps(block_size):
    """Non-square J: the Krylov space stops at min(m, n), where every residual is zero."""
    torch.manual_seed(1)
    for shape in ((30, 50), (50, 30)):
        weight = torch.randn(*shape, dtype=torch.float64) / shape[1] ** 0.5
        x = torch.randn(shape[1], dtype=torch.float64)
        operator = JacobianOperator(lambda v, w=weight: torch.tanh(w @ v), x)
        exact = torch.linalg.svdvals(jacobian_matrix(operator.fn, x)).numpy()
        for which, reference in (("largest", exact[:6]), ("smallest", exact[::-1][:6])):
            result = extreme_singular_values(operator, 6, which=which, block_size=block_size)
            np.testing.assert_allclose(result.values, reference, rtol=1e-6)
            assert result.converged


def test_extreme_values_bad_arguments(tanh_case):
    operator, _ = tanh_case
    with pytest.raises(ValueError, match="k must be an integer between 1 and min"):
        extreme_singular_values(operator, 0)
    with pytest.raises(ValueError, match="unknown method 'power'"):
        extreme_singular_values(operator, 2, method="power")
    with pytest.raises(ValueError, match="unknown which 'middle'"):
        extreme_singular_values(operator, 2, which="middle")
    with pytest.raises(ValueError, match="block_size must be a positive integer, got 0"):
        extreme_singular_values(operator, 2, block_size=0)
    with pytest.raises(ValueError, match="max_steps must be a positive integer or None, got -3"):
        extreme_singular_values(operator, 2, max_steps=-3)


def known_spectrum_operator(singular_values, seed=0):
    """A linear map U diag(s) V^T with random orthogonal U and V, as an operator."""
    generator = torch.Generator().manual_seed(seed)
    n = len(singular_values)
    left, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    matrix = left @ torch.diag(torch.tensor(np.array(singular_values), dtype=torch.float64)) @ right.T
    return JacobianOperator(lambda v: matrix @ v, torch.randn(n, dtype=torch.float64)), matrix


def test_slq_density_matches_eigvalsh():
    rng = np.random.default_rng(0)
    singular_values = np.sort(10 ** rng.uniform(-1, 1, 200))[::-1]  # log10 s uniform on [-1, 1]
    operator, matrix = known_spectrum_operator(singular_values)
    truth = np.sort(0.5 * np.log10(torch.linalg.eigvalsh(matrix.T @ matrix).numpy()))
    density = spectral_density(operator, probes=20, steps=100, bandwidth=0.05, seed=1)
    # Compare cumulative distributions of log10 s: SLQ's quadrature against the truth.
    cdf = np.cumsum(density.density) * (density.grid[1] - density.grid[0])
    true_cdf = np.searchsorted(truth, density.grid, side="right") / len(truth)
    assert np.abs(cdf - true_cdf).max() < 0.05
    assert density.zero_fraction == 0.0
    assert np.isclose(np.trapezoid(density.density, density.grid), 1.0, atol=0.02)


def test_slq_zero_fraction_and_seed():
    singular_values = np.concatenate([np.ones(150), np.zeros(50)])
    operator, _ = known_spectrum_operator(singular_values)
    density = spectral_density(operator, probes=30, steps=30, seed=2)
    assert density.zero_fraction == pytest.approx(0.25, abs=0.05)
    again = spectral_density(operator, probes=30, steps=30, seed=2)
    np.testing.assert_array_equal(density.density, again.density)


def test_probe_moments_converge_like_inverse_sqrt():
    singular_values = np.linspace(0.2, 2.0, 300)
    operator, _ = known_spectrum_operator(singular_values)
    exact_chi = float(np.mean(singular_values**2))
    exact_m2 = float(np.mean(singular_values**4))
    errors = {}
    for probes in (4, 64):
        trials = [jacobian_moments(operator, probes=probes, seed=s) for s in range(40)]
        errors[probes] = np.sqrt(np.mean([(t.chi - exact_chi) ** 2 for t in trials]))
        mean_stderr = np.mean([t.chi_stderr for t in trials])
        assert mean_stderr == pytest.approx(errors[probes], rel=0.4)
        m2_mean = np.mean([t.m2 for t in trials])
        assert m2_mean == pytest.approx(exact_m2, rel=0.05)
    # 16 times more probes: the root-mean-square error shrinks about 4 times.
    assert errors[4] / errors[64] == pytest.approx(4.0, rel=0.35)
