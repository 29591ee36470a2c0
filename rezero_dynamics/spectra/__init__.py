"""Jacobian spectra of any ``nn.Module`` or function; independent of the toolkit's models."""

from .exact import (
    DEFAULT_MEMORY_BUDGET,
    JACOBIAN_MODES,
    MODULE_MODES,
    JacobianTooLargeError,
    NonFiniteError,
    SVDConvergenceError,
    analysis_call,
    jacobian_matrix,
    jacobian_spectrum,
    singular_values,
)
from .result import JacobianSpectrum

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "JACOBIAN_MODES",
    "MODULE_MODES",
    "JacobianSpectrum",
    "JacobianTooLargeError",
    "NonFiniteError",
    "SVDConvergenceError",
    "analysis_call",
    "jacobian_matrix",
    "jacobian_spectrum",
    "singular_values",
]
