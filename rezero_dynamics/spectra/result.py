"""Result types for Jacobian spectra: singular values with their summaries and tidy frames."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch


@dataclass(frozen=True)
class JacobianSpectrum:
    """Singular values of input-output Jacobians, one row per input sample.

    Each sample's Jacobian J maps the flattened input (``in_shape``, n = prod) to the
    flattened output (``out_shape``, m = prod) and has k = min(m, n) singular values.

    Attributes:
        singular_values: (B, k) float64 on the CPU, each row in descending order. Exact
            zeros are kept here.
        in_shape, out_shape: per-sample shapes of the map's input and output.
        zero_rtol: a singular value s counts as zero when s <= zero_rtol * max(s) of its
            sample. The default, max(m, n) * machine epsilon of ``dtype``, is the rank
            tolerance of ``numpy.linalg.matrix_rank``.
        mode: ``forward`` (JVPs, one per input dimension) or ``reverse`` (VJPs, one per
            output dimension): how the Jacobian was built.
        dtype: floating type the Jacobian was computed in, e.g. ``float64``.
        module_mode: ``eval``, ``train`` or ``as_is``: the mode the module ran in for the
            analysis (it decides dropout and BatchNorm behaviour).
    """

    singular_values: torch.Tensor
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    zero_rtol: float
    mode: str
    dtype: str
    module_mode: str
    labels: dict[str, object] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return self.singular_values.shape[0]

    @property
    def in_dim(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_dim(self) -> int:
        return math.prod(self.out_shape)

    @property
    def max(self) -> torch.Tensor:
        """Largest singular value per sample; (B,)."""
        return self.singular_values[:, 0]

    @property
    def min(self) -> torch.Tensor:
        """Smallest singular value per sample, zeros included; (B,)."""
        return self.singular_values[:, -1]

    @property
    def zero_mask(self) -> torch.Tensor:
        """True where a singular value is zero to working precision; (B, k)."""
        return self.singular_values <= self.zero_rtol * self.max[:, None]

    @property
    def num_zeros(self) -> torch.Tensor:
        """Number of zero singular values per sample (the rank deficiency); (B,)."""
        return self.zero_mask.sum(dim=1)

    @property
    def min_nonzero(self) -> torch.Tensor:
        """Smallest singular value that is not zero, per sample; (B,)."""
        masked = self.singular_values.masked_fill(self.zero_mask, math.inf)
        return masked.min(dim=1).values

    @property
    def condition_number(self) -> torch.Tensor:
        """max / min per sample; inf when the Jacobian has zero singular values; (B,)."""
        ratio = self.max / self.min
        return ratio.masked_fill(self.num_zeros > 0, math.inf)

    @property
    def chi(self) -> torch.Tensor:
        """tr(J^T J) / n per sample: the mean squared singular value over input dimensions; (B,)."""
        return self.singular_values.square().sum(dim=1) / self.in_dim

    def log10_singular_values(self) -> np.ndarray:
        """Return log10 of every nonzero singular value of all samples, flattened.

        Zeros are left out, not mapped to -inf; ``num_zeros`` counts them.
        """
        values = self.singular_values[~self.zero_mask]
        return torch.log10(values).numpy()

    def to_frame(self) -> pd.DataFrame:
        """Return one row per singular value, tidy, with the ``labels`` as extra columns.

        Columns: sample, index (0 = largest), singular_value, log10_singular_value (NaN for
        zeros), is_zero, then one column per label.
        """
        values = self.singular_values.numpy()
        zeros = self.zero_mask.numpy()
        num_samples, k = values.shape
        with np.errstate(divide="ignore"):
            log10 = np.where(zeros, np.nan, np.log10(np.where(zeros, 1.0, values)))
        frame = pd.DataFrame(
            {
                "sample": np.repeat(np.arange(num_samples), k),
                "index": np.tile(np.arange(k), num_samples),
                "singular_value": values.ravel(),
                "log10_singular_value": log10.ravel(),
                "is_zero": zeros.ravel(),
            }
        )
        for name, value in self.labels.items():
            frame[name] = value
        return frame

    def summary(self) -> pd.DataFrame:
        """Return one row per sample: chi, max, min, min_nonzero, condition_number, num_zeros.

        Also records n_in, n_out, mode, dtype, module_mode and the ``labels``.
        """
        frame = pd.DataFrame(
            {
                "sample": np.arange(self.num_samples),
                "n_in": self.in_dim,
                "n_out": self.out_dim,
                "chi": self.chi.numpy(),
                "max": self.max.numpy(),
                "min": self.min.numpy(),
                "min_nonzero": self.min_nonzero.numpy(),
                "condition_number": self.condition_number.numpy(),
                "num_zeros": self.num_zeros.numpy(),
                "mode": self.mode,
                "dtype": self.dtype,
                "module_mode": self.module_mode,
            }
        )
        for name, value in self.labels.items():
            frame[name] = value
        return frame
