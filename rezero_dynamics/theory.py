"""Random-matrix predictions for input-output Jacobian spectra, for tests and overlays.

Notation: J is the Jacobian of a network of L layers of width N, lambda = s^2 the
squared singular values, and m_k = lim_{N -> inf} E tr((J J^T)^k) / N their moments.
Weights are real Gaussian with variance sigma^2 / N unless stated otherwise. Every
formula is for the large-width limit (N -> inf at fixed L) unless marked exact.

Sources:

* Marchenko and Pastur (1967): the spectrum of W W^T for one Gaussian matrix.
* Penson and Zyczkowski, "Product of Ginibre matrices: Fuss-Catalan and Raney
  distributions", Phys. Rev. E 83 (2011), arXiv:1103.3453: products of L Gaussian
  matrices. The density's parametrisation is from Haagerup and Moller, "The law of large
  numbers for the free multiplicative convolution" (2012), and Neuschel, "Plancherel-
  Rotach formulae for average characteristic polynomials of products of Ginibre random
  matrices and the Fuss-Catalan distribution" (2014); NOTE: it was checked here against
  the Fuss-Catalan moments and Marchenko-Pastur, not against those papers' text.
* Pennington, Schoenholz and Ganguli, "Resurrecting the sigmoid in deep learning through
  dynamical isometry", NeurIPS 2017, arXiv:1711.04735: tanh networks at criticality.
* Biane (1997), free multiplicative Brownian motion; applied to residual networks by
  Tarnowski, Warchol, Jastrzebski, Tabor and Nowak, "Dynamical isometry is achieved in
  residual networks in a universal way for any activation function", AISTATS 2019.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.optimize import brentq

# -- one Gaussian matrix ------------------------------------------------------------------


def marchenko_pastur_density(x: np.ndarray, ratio: float = 1.0, sigma2: float = 1.0) -> np.ndarray:
    """Density of the eigenvalues of W W^T / N for W of shape (N, M), M / N = 1 / ``ratio``,
    entries of variance ``sigma2``; large N. Support [sigma2 (1 - sqrt(r))^2, sigma2 (1 + sqrt(r))^2].

    At ``ratio`` <= 1 there is no atom; at ``ratio`` > 1 the atom at 0 (mass 1 - 1/ratio)
    is not included.
    """
    x = np.asarray(x, dtype=float)
    low, high = sigma2 * (1 - math.sqrt(ratio)) ** 2, sigma2 * (1 + math.sqrt(ratio)) ** 2
    inside = (x > low) & (x < high)
    density = np.zeros_like(x)
    density[inside] = np.sqrt((high - x[inside]) * (x[inside] - low)) / (2 * math.pi * sigma2 * ratio * x[inside])
    return density


# -- products of Gaussian matrices (deep linear networks) -----------------------------------


def fuss_catalan_moment(k: int, depth: int, sigma2: float = 1.0) -> float:
    """m_k of J = W_L ... W_1 with Gaussian W_l of variance sigma2 / N (large N).

    m_k = sigma2^(k L) binom((L + 1) k, k) / (L k + 1); m_1 = sigma2^L, m_2 = (L + 1) at
    sigma2 = 1 (Penson and Zyczkowski 2011). E[m̂_1] = sigma2^L is also exact at finite N.
    """
    if k < 0 or depth < 0:
        raise ValueError(f"k and depth must be >= 0, got {k} and {depth}")
    return sigma2 ** (k * depth) * math.comb((depth + 1) * k, k) / (depth * k + 1)


def fuss_catalan_edge(depth: int, sigma2: float = 1.0) -> float:
    """Right edge of the support of the Fuss-Catalan density: sigma2^L (L+1)^(L+1) / L^L."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return sigma2**depth * (depth + 1) ** (depth + 1) / depth**depth


def fuss_catalan_density(x: np.ndarray, depth: int, sigma2: float = 1.0, *, resolution: int = 20001) -> np.ndarray:
    """Density of lambda for a product of ``depth`` Gaussian matrices (large N).

    Uses the parametrisation of the Fuss-Catalan law with s = L (Haagerup and Moller
    2012; Neuschel 2014): for 0 < phi < pi / (s + 1),
    u(phi) = sin((s+1) phi)^(s+1) / (sin(phi) sin(s phi)^s) and
    rho(u) = sin(phi)^2 sin(s phi)^(s-1) / (pi sin((s+1) phi)^s), with lambda = sigma2^L u.
    The curve is evaluated at ``resolution`` angles and interpolated; zero outside
    (0, edge). At L = 1 this is Marchenko-Pastur at ratio 1.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    x = np.asarray(x, dtype=float)
    s = depth
    phi = np.linspace(0, math.pi / (s + 1), resolution)[1:-1]
    u = np.sin((s + 1) * phi) ** (s + 1) / (np.sin(phi) * np.sin(s * phi) ** s)
    rho = np.sin(phi) ** 2 * np.sin(s * phi) ** (s - 1) / (math.pi * np.sin((s + 1) * phi) ** s)
    order = np.argsort(u)
    scale = sigma2**depth
    density = np.interp(x / scale, u[order], rho[order], left=0.0, right=0.0) / scale
    density[(x <= 0) | (x >= fuss_catalan_edge(depth, sigma2))] = 0.0
    return density


# -- residual linear networks J = prod (I + alpha W_l) ---------------------------------------


def residual_linear_moments(alpha: float, depth: int) -> tuple[float, float, float]:
    """(m_1, m_2, m_3) of prod_l (I + alpha W_l), Gaussian W_l of variance 1 / N, large N.

    With a = alpha^2: m_1 = (1 + a)^L (exact at any N),
    m_2 = (1 + a)^(2L) [1 + L a (2 + a) / (1 + a)^2],
    m_3 = (1 + a)^(3L) [1 + (3 L^2 a^2 (2 + a)^2 + L a (5a^3 + 20a^2 + 24a + 12)) / (2 (1 + a)^4)].
    At alpha = 0.1, L = 64: 1.89046, 8.08065, 48.3067.
    """
    a, depth = alpha**2, int(depth)
    base = 1 + a
    m1 = base**depth
    m2 = base ** (2 * depth) * (1 + depth * a * (2 + a) / base**2)
    m3 = base ** (3 * depth) * (
        1 + (3 * depth**2 * a**2 * (2 + a) ** 2 + depth * a * (5 * a**3 + 20 * a**2 + 24 * a + 12)) / (2 * base**4)
    )
    return m1, m2, m3


def free_multiplicative_brownian_moment(k: int, t: float) -> float:
    """m_k in the limit L -> inf with alpha^2 L = t fixed (free multiplicative Brownian motion).

    m_k = (e^(k t) / k) sum_{j=0}^{k-1} binom(k, j+1) (2 k t)^j / j!; so m_1 = e^t and
    m_2 = e^(2t) (1 + 2t). Finite depth approaches it slowly (m_2 is 3% low at t = 1,
    L = 64), so prefer ``residual_linear_moments`` when L is known.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    total = sum(math.comb(k, j + 1) * (2 * k * t) ** j / math.factorial(j) for j in range(k))
    return math.exp(k * t) / k * total


def free_multiplicative_brownian_edges(t: float) -> tuple[float, float]:
    """Support [x-, x+] of lambda in the alpha^2 L = t limit; t = 1 gives [0.0474, 21.094]."""
    if t <= 0:
        raise ValueError(f"t must be positive, got {t}")
    edges = []
    for sign in (-1, 1):
        y = (-1 + sign * math.sqrt(1 + 2 / t)) / 2
        edges.append(math.exp(t * (1 + 2 * y)) * (1 + y) / y)
    return min(edges), max(edges)


def free_multiplicative_brownian_density(t: float, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Density of lambda in the alpha^2 L = t limit, on ``points`` values across its support.

    The S-transform of the limit is exp(-t (1 + 2z)) (read off the edge formula above and
    checked against the moments, not against Biane's text), so the moment generating function
    y = psi(1 / x) = sum_k m_k x^-k solves x = e^(t (1 + 2y)) (1 + y) / y, and
    rho(x) = |Im y(x + i0)| / (pi x). The complex root is followed by Newton's method from
    the lower edge (y = y-, where the root is double) to the upper one. Returns (lambda,
    density), lambda geometrically spaced strictly inside [x-, x+]; the density integrates to 1
    and its moments match ``free_multiplicative_brownian_moment`` (checked in the tests).
    """
    lower, upper = free_multiplicative_brownian_edges(t)
    y_lower = (-1 - math.sqrt(1 + 2 / t)) / 2
    lambdas = np.geomspace(lower, upper, points + 2)[1:-1]

    def residual(y: complex, x: float) -> complex:
        return np.exp(t * (1 + 2 * y)) * (1 + y) - x * y

    def slope(y: complex, x: float) -> complex:
        return np.exp(t * (1 + 2 * y)) * (2 * t * (1 + y) + 1) - x

    # Near the edge h(y) = (x- - x) y- + h''(y-) (y - y-)^2 / 2, which gives the first guess.
    curvature = np.exp(t * (1 + 2 * y_lower)) * (4 * t * t * (1 + y_lower) + 4 * t)
    y = y_lower + np.sqrt(complex(-2 * (lower - lambdas[0]) * y_lower / curvature))
    roots = np.empty(points, dtype=complex)
    for index, x in enumerate(lambdas):
        for _ in range(100):
            step = residual(y, x) / slope(y, x)
            y = y - step
            if abs(step) <= 1e-14 * max(1.0, abs(y)):
                break
        roots[index] = y
    return lambdas, np.abs(roots.imag) / (math.pi * lambdas)


# -- nonlinear networks at criticality --------------------------------------------------------

_HERMITE_POINTS = 201


@lru_cache(maxsize=1)
def _gauss_hermite() -> tuple[np.ndarray, np.ndarray]:
    points, weights = np.polynomial.hermite_e.hermegauss(_HERMITE_POINTS)
    return points, weights / math.sqrt(2 * math.pi)  # E over a standard normal z


def tanh_fixed_point(sigma_w2: float, sigma_b2: float) -> float:
    """q*: the stable fixed point of q = sigma_w2 E[tanh(sqrt(q) z)^2] + sigma_b2, z ~ N(0, 1).

    Found by Brent's method on [0, sigma_w2 + sigma_b2], where the map minus q changes sign
    once. With sigma_b2 = 0 and sigma_w2 <= 1 the only fixed point is q* = 0; iterating the
    map would approach it only like 1 / (2 n) at sigma_w2 = 1.
    """
    points, weights = _gauss_hermite()

    def excess(q: float) -> float:
        return sigma_w2 * float(weights @ np.tanh(math.sqrt(q) * points) ** 2) + sigma_b2 - q

    upper = sigma_w2 + sigma_b2
    if sigma_b2 == 0:
        if sigma_w2 <= 1:
            return 0.0
        # q = 0 is an unstable fixed point here; the stable one lies above where excess > 0.
        lower = 1e-12
        if excess(lower) <= 0:  # sigma_w2 within about 1e-12 of 1: critical to working precision
            return 0.0
        return brentq(excess, lower, upper, xtol=1e-15, rtol=4 * np.finfo(float).eps)
    return brentq(excess, 0.0, upper, xtol=1e-15, rtol=4 * np.finfo(float).eps)


def tanh_jacobian_moments(sigma_w2: float, sigma_b2: float, depth: int, *, weights: str = "gaussian") -> dict:
    """Moments of J J^T for a deep tanh network at its fixed point q* (large N).

    mu_k = E[tanh'(sqrt(q*) z)^(2k)], chi = sigma_w2 mu_1, m_1 = chi^L and
    m_2 = chi^(2L) [1 + L (mu_2 / mu_1^2 - 1 - s_1)] with s_1 = -1 for Gaussian and 0 for
    orthogonal weights (Pennington, Schoenholz and Ganguli 2017). The ratio
    m_2 / m_1^2 does not depend on chi, so test ratios: the raw m_1 varies from seed to
    seed. At q* = 0.5 on the critical line (sigma_w2 = 1.6880, sigma_b2 = 0.0380), L = 8:
    m_2 / m_1^2 = 11.39 (Gaussian), 3.394 (orthogonal).
    """
    if weights not in ("gaussian", "orthogonal"):
        raise ValueError(f"unknown weights {weights!r}; choose gaussian or orthogonal")
    q_star = tanh_fixed_point(sigma_w2, sigma_b2)
    points, quadrature = _gauss_hermite()
    derivative_squared = (1 - np.tanh(math.sqrt(q_star) * points) ** 2) ** 2
    mu1 = float(quadrature @ derivative_squared)
    mu2 = float(quadrature @ derivative_squared**2)
    chi = sigma_w2 * mu1
    s1 = -1.0 if weights == "gaussian" else 0.0
    ratio = 1 + depth * (mu2 / mu1**2 - 1 - s1)
    return {"q_star": q_star, "chi": chi, "mu1": mu1, "mu2": mu2, "m1": chi**depth, "m2": chi ** (2 * depth) * ratio,
            "m2_over_m1_squared": ratio}


def tanh_critical_sigma_w2(sigma_b2: float) -> float:
    """Return the sigma_w2 at which chi = sigma_w2 E[tanh'(sqrt(q*) z)^2] equals 1 for bias variance ``sigma_b2``.

    This is the mean-field order-to-chaos transition that ``tanh_jacobian_moments``
    assumes: below it chi < 1 and gradients vanish with depth, above it they explode.
    At sigma_b2 = 0 it is 1 (q* = 0); at sigma_b2 = 0.05 it is 1.76095.
    """
    if not (math.isfinite(sigma_b2) and sigma_b2 >= 0):
        raise ValueError(f"sigma_b2 must be a finite number >= 0, got {sigma_b2!r}")
    if sigma_b2 == 0:
        return 1.0
    return float(brentq(lambda w2: tanh_jacobian_moments(w2, sigma_b2, 1)["chi"] - 1, 1.0, 100.0, xtol=1e-12))


# -- overlays ----------------------------------------------------------------------------------


def log10_singular_value_density(lambdas: np.ndarray, density: np.ndarray) -> pd.DataFrame:
    """Convert a density of lambda = s^2 into a density of log10 s for histogram overlays.

    p(log10 s) = p(lambda) * d lambda / d log10 s = p(lambda) * 2 ln(10) lambda.
    Returns columns log10_singular_value and density.
    """
    lambdas = np.asarray(lambdas, dtype=float)
    keep = lambdas > 0
    return pd.DataFrame(
        {
            "log10_singular_value": 0.5 * np.log10(lambdas[keep]),
            "density": np.asarray(density, dtype=float)[keep] * 2 * math.log(10) * lambdas[keep],
        }
    )


def residual_linear_overlay(alpha: float, depth: int, points: int = 2000) -> pd.DataFrame:
    """Theory curve for prod_l (I + alpha W_l), Gaussian W_l of variance 1 / N, in log10 coordinates.

    The curve is the alpha^2 L = t limit (free multiplicative Brownian motion), so it
    holds for large width and many layers with small alpha. At t = 1 and L = 64 its m_2 is 3% above the
    finite-depth value, and shallower networks differ more.
    """
    if not (math.isfinite(alpha) and alpha != 0):
        raise ValueError(f"alpha must be a finite nonzero number (only alpha^2 matters), got {alpha!r}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth!r}")
    lambdas, density = free_multiplicative_brownian_density(alpha**2 * depth, points)
    return log10_singular_value_density(lambdas, density)


def fuss_catalan_overlay(depth: int, sigma2: float = 1.0, points: int = 400) -> pd.DataFrame:
    """Theory curve for a deep Gaussian linear network in log10-singular-value coordinates."""
    edge = fuss_catalan_edge(depth, sigma2)
    lambdas = np.geomspace(edge * 1e-8, edge * (1 - 1e-9), points)
    return log10_singular_value_density(lambdas, fuss_catalan_density(lambdas, depth, sigma2))
