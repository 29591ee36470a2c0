"""Findings: one problem each, with its severity, the measured value and the threshold."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .thresholds import SEVERITIES, THRESHOLDS


@dataclass(frozen=True)
class Finding:
    """One problem found in a model or a run.

    Attributes:
        name: kind of problem, e.g. ``exploding`` or ``alpha_negative``.
        severity: ``info``, ``warning`` or ``critical``.
        subject: what it concerns: ``model``, or a run and layer such as
            ``rezero-L12-s0 blocks.3.gate.alpha``.
        measured: the measured value compared with the threshold.
        threshold: the threshold's value, or NaN for findings without one (a diverged run).
        threshold_name: key of the threshold in ``THRESHOLDS`` (empty when there is none).
        message: what it means and what usually helps.
    """

    name: str
    severity: str
    subject: str
    measured: float
    threshold: float
    threshold_name: str
    message: str

    def to_dict(self) -> dict:
        """Return the finding as JSON-ready values (NaN becomes None)."""
        values = asdict(self)
        for key in ("measured", "threshold"):
            if not math.isfinite(values[key]):
                values[key] = None
        return values


def crossed(name: str, subject: str, measured: float, threshold_name: str, message: str) -> Finding:
    """Build a finding whose severity and threshold come from ``THRESHOLDS[threshold_name]``."""
    limit = THRESHOLDS[threshold_name]
    return Finding(name, limit.severity, subject, float(measured), float(limit.value), threshold_name, message)


def worst(findings: list[Finding] | tuple[Finding, ...]) -> str | None:
    """Return the highest severity among ``findings``, or None when there are none."""
    if not findings:
        return None
    return max((f.severity for f in findings), key=SEVERITIES.index)


def verdict_of(findings: list[Finding] | tuple[Finding, ...], isometric: bool = False) -> str:
    """Summarise findings in a few words: ``isometric``, ``no problems found`` or the worst ones."""
    if not findings:
        return "isometric" if isometric else "no problems found"
    level = worst(findings)
    names = list(dict.fromkeys(f.name for f in findings if f.severity == level))
    return f"{level}: {', '.join(names)}"
