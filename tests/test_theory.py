"""Theory module against worked values, and measured spectra against theory."""

import math

import numpy as np
import pytest
import torch

from rezero_dynamics import theory
from rezero_dynamics.models import DeepMLP
from rezero_dynamics.spectra import jacobian_spectrum

WIDTH = 256


def test_fuss_catalan_table():
    table = {1: (1, 2, 5, 14), 2: (1, 3, 12, 55), 4: (1, 5, 35, 285), 8: (1, 9, 117, 1785)}
    for depth, moments in table.items():
        assert tuple(theory.fuss_catalan_moment(k, depth) for k in range(1, 5)) == moments


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_fuss_catalan_density_moments(depth):
    edge = theory.fuss_catalan_edge(depth)
    x = np.geomspace(1e-12, edge, 400_001)
    density = theory.fuss_catalan_density(x, depth)
    for k in (1, 2, 3):
        assert np.trapezoid(density * x**k, x) == pytest.approx(theory.fuss_catalan_moment(k, depth), rel=1e-4)


def test_fuss_catalan_depth_one_is_marchenko_pastur():
    x = np.linspace(0.05, 3.95, 40)
    np.testing.assert_allclose(theory.fuss_catalan_density(x, 1), theory.marchenko_pastur_density(x), rtol=1e-5)


def test_residual_and_brownian_worked_values():
    assert theory.residual_linear_moments(0.1, 64) == pytest.approx((1.89046, 8.08065, 48.3067), rel=1e-5)
    assert theory.residual_linear_moments(1.0, 8)[:2] == pytest.approx((256.0, 458752.0))
    assert theory.free_multiplicative_brownian_moment(2, 1.0) == pytest.approx(math.exp(2) * 3)
    assert theory.free_multiplicative_brownian_moment(3, 0.5) == pytest.approx(math.exp(1.5) * (1 + 3 + 1.5))
    low, high = theory.free_multiplicative_brownian_edges(1.0)
    assert (low, high) == pytest.approx((0.0474, 21.094), abs=1e-3)


def test_tanh_criticality_worked_values():
    gaussian = theory.tanh_jacobian_moments(1.6880, 0.0380, 8)
    orthogonal = theory.tanh_jacobian_moments(1.6880, 0.0380, 8, weights="orthogonal")
    assert gaussian["q_star"] == pytest.approx(0.5, abs=1e-3)
    assert gaussian["chi"] == pytest.approx(1.0, abs=1e-3)
    assert gaussian["m2_over_m1_squared"] == pytest.approx(11.39, abs=0.01)
    assert orthogonal["m2_over_m1_squared"] == pytest.approx(3.394, abs=0.01)


def measured_moments(depth, seeds=range(5), **model_options):
    """Per-seed (m1, m2, m3) of s^2 for linear networks of width 256, float64."""
    rows = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        model = DeepMLP(WIDTH, depth, activation="linear", bias=False, generator=generator, **model_options)
        spectrum = jacobian_spectrum(model, torch.randn(1, WIDTH, generator=generator), dtype=torch.float64)
        squared = spectrum.singular_values[0].square().numpy()
        rows.append([np.mean(squared**k) for k in (1, 2, 3)])
    return np.array(rows)


@pytest.mark.parametrize("depth", [1, 2, 4, 8])
def test_deep_linear_fuss_catalan(depth):
    per_seed = measured_moments(depth)
    mean = per_seed.mean(axis=0)
    stderr = per_seed.std(axis=0, ddof=1) / math.sqrt(len(per_seed))
    for k in (1, 2, 3):
        expected = theory.fuss_catalan_moment(k, depth)
        # Finite width biases m_k up by about k(k-1)/2 * L / N relative; allow it plus 4 standard errors.
        bias = expected * k * (k - 1) / 2 * depth / WIDTH
        assert abs(mean[k - 1] - expected) <= 4 * stderr[k - 1] + 1.5 * bias + 1e-9, (k, mean[k - 1], expected)


def test_residual_linear_moments_measured():
    per_seed = measured_moments(64, variant="rezero", alpha_init=0.1)
    expected = theory.residual_linear_moments(0.1, 64)
    for k, tolerance in zip((1, 2, 3), (0.012, 0.03, 0.058)):
        assert per_seed.mean(axis=0)[k - 1] == pytest.approx(expected[k - 1], rel=tolerance)


def test_overlay_is_a_density_in_log10():
    overlay = theory.fuss_catalan_overlay(2)
    x = overlay["log10_singular_value"].to_numpy()
    assert np.trapezoid(overlay["density"].to_numpy(), x) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("t", [0.25, 1.0, 4.0])
def test_brownian_density_moments(t):
    x, density = theory.free_multiplicative_brownian_density(t, 4000)
    low, high = theory.free_multiplicative_brownian_edges(t)
    assert low < x.min()
    assert x.max() < high
    assert np.all(density > 0)
    # Trapezoid sums miss the square-root edges, about 1e-4 of the mass at 4000 points.
    assert np.trapezoid(density, x) == pytest.approx(1.0, rel=2e-3)
    for k in (1, 2, 3):
        expected = theory.free_multiplicative_brownian_moment(k, t)
        assert np.trapezoid(density * x**k, x) == pytest.approx(expected, rel=2e-3)


def test_residual_overlay_matches_measured_quantiles():
    """Measured s^2 of prod(I + alpha W), t = alpha^2 L = 1, against the Brownian-limit law."""
    alpha, depth = 0.125, 64
    lambdas, density = theory.free_multiplicative_brownian_density(alpha**2 * depth, 4000)
    cdf = np.concatenate([[0.0], np.cumsum(np.diff(lambdas) * (density[1:] + density[:-1]) / 2)])
    cdf /= cdf[-1]
    measured = []
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        model = DeepMLP(WIDTH, depth, activation="linear", variant="rezero", alpha_init=alpha, bias=False,
                        generator=generator)
        spectrum = jacobian_spectrum(model, torch.randn(1, WIDTH, generator=generator), dtype=torch.float64)
        measured.append(spectrum.singular_values[0].square().numpy())
    measured = np.concatenate(measured)
    for quantile in (0.1, 0.5, 0.9):
        threshold = np.interp(quantile, cdf, lambdas)
        # Finite depth (L = 64) and width (N = 256) move about 1% of the mass; t 30% off moves 5%.
        assert np.mean(measured <= threshold) == pytest.approx(quantile, abs=0.03)
    overlay = theory.residual_linear_overlay(alpha, depth)
    integral = np.trapezoid(overlay["density"], overlay["log10_singular_value"])
    assert integral == pytest.approx(1.0, rel=5e-3)
