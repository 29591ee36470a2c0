"""Measured Jacobian spectra against published random-matrix results.

Moments m_k = E tr((J J^T)^k) / N of the squared singular values (lambda = s^2):

* Deep linear network, Gaussian weights of variance 1/N: the Fuss-Catalan moments
  m_k = binom((L+1)k, k) / (Lk + 1), so m_1 = 1 and m_2 = L + 1 (Penson and Zyczkowski,
  arXiv:1103.3453). At N = 256 the finite-N bias of m_2 is about L / (2N) relative.
* Orthogonal weights: J^T J = I exactly.
* Residual linear network prod(I + alpha W_l): m_1 = (1 + a)^L exactly and
  m_2 = (1 + a)^(2L) [1 + L a (2 + a) / (1 + a)^2] with a = alpha^2.
"""

import pytest
import torch

from rezero_dynamics.models import DeepMLP
from rezero_dynamics.spectra import jacobian_spectrum

WIDTH = 256
SEEDS = range(5)


def linear_net_moments(depth, *, variant="none", init="gaussian", alpha=0.0):
    """Mean over 5 seeds of the first two moments of s^2 of a linear network's Jacobian."""
    first, second = [], []
    for seed in SEEDS:
        generator = torch.Generator().manual_seed(seed)
        model = DeepMLP(
            WIDTH, depth, activation="linear", variant=variant, init=init, bias=False,
            alpha_init=alpha, generator=generator,
        )
        spectrum = jacobian_spectrum(model, torch.randn(1, WIDTH, generator=generator), dtype=torch.float64)
        squared = spectrum.singular_values[0].square()
        first.append(squared.mean())
        second.append(squared.square().mean())
    return torch.stack(first).mean().item(), torch.stack(second).mean().item()


def test_deep_linear_gaussian_fuss_catalan_depth_4():
    depth = 4
    m1, m2 = linear_net_moments(depth)
    assert m1 == pytest.approx(1.0, rel=0.07)
    assert m2 == pytest.approx(depth + 1, rel=0.07)


def test_deep_linear_gaussian_fuss_catalan_depth_1():
    # L = 1 is the Marchenko-Pastur law at ratio 1: m_2 = 2.
    m1, m2 = linear_net_moments(1)
    assert m1 == pytest.approx(1.0, rel=0.03)
    assert m2 == pytest.approx(2.0, rel=0.05)


def test_deep_linear_orthogonal_is_isometric():
    for seed in SEEDS:
        generator = torch.Generator().manual_seed(seed)
        model = DeepMLP(WIDTH, 8, activation="linear", init="orthogonal", bias=False, generator=generator)
        spectrum = jacobian_spectrum(model, torch.randn(1, WIDTH, generator=generator), dtype=torch.float64)
        # torch's orthogonal_ runs its QR in float32, so the weights are orthogonal to ~1e-6.
        torch.testing.assert_close(spectrum.singular_values[0], torch.ones(WIDTH, dtype=torch.float64), atol=1e-4, rtol=0)


def test_residual_linear_moments():
    alpha, depth = 0.1, 64
    a = alpha**2
    m1, m2 = linear_net_moments(depth, variant="rezero", alpha=alpha)
    assert m1 == pytest.approx((1 + a) ** depth, rel=0.012)  # 1.89046
    expected_m2 = (1 + a) ** (2 * depth) * (1 + depth * a * (2 + a) / (1 + a) ** 2)  # 8.08065
    assert m2 == pytest.approx(expected_m2, rel=0.03)
