"""Every threshold the diagnosis uses, in one table.

``docs/diagnose.md`` lists the same table with the reason for each value; a test checks
that the two agree. Change a value here and there together.
"""

from __future__ import annotations

from dataclasses import dataclass

SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")


@dataclass(frozen=True)
class Threshold:
    """One limit of the diagnosis.

    Attributes:
        name: key in ``THRESHOLDS`` and in the documentation table.
        value: the limit, in the unit of the quantity it is compared with.
        severity: severity of the finding raised when the limit is crossed, or ``setting``
            for values that define a measurement (a window, a cut-off) and raise nothing.
        rule: the comparison, e.g. ``chi > value``.
    """

    name: str
    value: float
    severity: str
    rule: str


_TABLE: tuple[Threshold, ...] = (
    # Models, and Jacobian spectra recorded during training.
    Threshold("isometry_chi_tolerance", 0.1, "setting", "isometric when |chi - 1| <= value"),
    Threshold("isometry_spread_tolerance", 0.1, "setting", "isometric when spread <= value"),
    Threshold("chi_exploding", 10.0, "warning", "chi > value"),
    Threshold("chi_exploding_critical", 1e3, "critical", "chi > value"),
    Threshold("chi_vanishing", 0.1, "warning", "chi < value"),
    Threshold("chi_vanishing_critical", 1e-3, "critical", "chi < value"),
    Threshold("chi_growth_per_block_high", 1.02, "warning", "chi growth per block > value"),
    Threshold("chi_growth_per_block_low", 0.98, "warning", "chi growth per block < value"),
    Threshold("spread_high", 1.0, "warning", "spread > value"),
    Threshold("near_zero_relative", 1e-3, "setting", "s counts as near zero when s < value * max(s)"),
    Threshold("near_zero_fraction", 0.05, "warning", "near-zero fraction > value"),
    Threshold("near_zero_fraction_critical", 0.25, "critical", "near-zero fraction > value"),
    Threshold("activation_rms_ratio_high", 10.0, "warning", "RMS after the last block / RMS into the first > value"),
    Threshold("activation_rms_ratio_low", 0.1, "warning", "RMS after the last block / RMS into the first < value"),
    # Run folders.
    Threshold("tail_fraction", 0.25, "setting", "the last part of training is this share of the recorded steps"),
    Threshold("alpha_near_zero", 1e-3, "warning", "max |alpha| over the tail < value"),
    Threshold("alpha_negative", -1e-3, "info", "mean alpha over the tail < value"),
    Threshold("grad_ratio_vanishing", 1e-2, "warning", "median grad norm first / last block over the tail < value"),
    Threshold("grad_ratio_vanishing_critical", 1e-4, "critical", "median grad norm first / last block over the tail < value"),
    Threshold("grad_ratio_exploding", 1e2, "warning", "median grad norm first / last block over the tail > value"),
    Threshold("loss_spike_factor", 2.0, "warning", "loss > value * median of the previous window"),
    Threshold("loss_spike_window", 20, "setting", "recorded steps in the window before each loss"),
)

THRESHOLDS: dict[str, Threshold] = {item.name: item for item in _TABLE}


def limit(name: str) -> float:
    """Return the value of threshold ``name``."""
    return THRESHOLDS[name].value
