"""Theory predictions for the statistics the diagnosis measures, where a regime is covered.

Covered (large width, see ``rezero_dynamics.theory`` for sources):

* ReZero at alpha = 0: every block is the identity, so J = I: chi = 1, spread 0, no
  near-zero singular values, activations unchanged.
* Deep linear MLP without skips: Gaussian weights give the Fuss-Catalan law (chi =
  sigma_w^(2L), spread = L); orthogonal weights give sigma_w^L times an orthogonal
  matrix (spread 0).
* Deep tanh MLP without skips, inputs at the mean-field fixed point q*: chi per layer
  sigma_w^2 E[tanh'(sqrt(q*) z)^2] and m2 / m1^2 from ``tanh_jacobian_moments``.
* ReZero linear MLP with Gaussian weights: J = prod (I + alpha W), moments from
  ``residual_linear_moments`` with alpha * sigma_w as the branch scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..theory import fuss_catalan_moment, residual_linear_moments, tanh_jacobian_moments


@dataclass(frozen=True)
class TheoryPrediction:
    """Predicted statistics of a model; None where the theory gives no value.

    Attributes:
        regime: the covered setting, in words.
        chi, spread, chi_per_block: as measured by ``diagnose_model``.
        near_zero_fraction: share of singular values below the near-zero cut.
        activation_rms_ratio: RMS after the last block over RMS into the first.
        assumption: the condition under which the numbers hold.
    """

    regime: str
    chi: float
    spread: float
    chi_per_block: float
    near_zero_fraction: float | None = None
    activation_rms_ratio: float | None = None
    assumption: str = "large width"

    def to_dict(self) -> dict:
        return asdict(self)


def identity_prediction() -> TheoryPrediction:
    """ReZero at alpha = 0: the network is the identity map."""
    return TheoryPrediction(
        "ReZero at alpha = 0 (identity map)", 1.0, 0.0, 1.0, 0.0, 1.0, "any width (exact)",
    )


def predict_mlp(
    *, depth: int, activation: str, variant: str, init: str, sigma_w: float, sigma_b: float, alpha_init: float
) -> TheoryPrediction | None:
    """Return the prediction for a toolkit ``DeepMLP`` stack, or None when no theory covers it."""
    sigma_w2 = sigma_w**2
    if variant == "rezero" and alpha_init == 0:
        return identity_prediction()
    if variant == "none" and activation == "linear":
        if init == "orthogonal":
            return TheoryPrediction(
                "deep linear network, orthogonal weights", sigma_w2**depth, 0.0, sigma_w2, 0.0, None,
                "any width (exact)",
            )
        m2 = fuss_catalan_moment(2, depth, sigma_w2)
        return TheoryPrediction(
            "deep linear network, Gaussian weights (Fuss-Catalan)", sigma_w2**depth,
            m2 / sigma_w2 ** (2 * depth) - 1, sigma_w2, None, None, "large width; chi is exact in expectation",
        )
    if variant == "none" and activation == "tanh":
        moments = tanh_jacobian_moments(sigma_w2, sigma_b**2, depth, weights=init)
        return TheoryPrediction(
            f"deep tanh network, {init} weights (mean field, q* = {moments['q_star']:.4g})", moments["m1"],
            moments["m2_over_m1_squared"] - 1, moments["chi"], None, 1.0,
            "large width and inputs at the fixed point q*, as --inputs fixed_point makes them",
        )
    if variant == "rezero" and activation == "linear" and init == "gaussian":
        m1, m2, _ = residual_linear_moments(alpha_init * sigma_w, depth)
        return TheoryPrediction(
            "ReZero linear network, Gaussian weights", m1, m2 / m1**2 - 1, 1 + (alpha_init * sigma_w) ** 2,
            None, None, "large width; chi is exact in expectation",
        )
    return None
