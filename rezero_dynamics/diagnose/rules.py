"""Rules that turn measured spectrum statistics into findings; shared by models and runs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .findings import Finding, crossed
from .thresholds import limit


@dataclass(frozen=True)
class Architecture:
    """Facts about a model's normalisation and residual variant, used in the advice of findings.

    Attributes:
        post_norm_blocks: residual blocks of the toolkit's ``post_norm`` variant.
        layer_norms: LayerNorm modules anywhere in the model.
        directions_per_norm: directions one LayerNorm removes from the Jacobian (one per
            normalised vector: the token count for a sequence), or 0 when unknown.
        variant: the residual variant shared by all of the toolkit's residual blocks in the
            model (``none`` for a plain stack without skips), or None when unknown.
    """

    post_norm_blocks: int = 0
    layer_norms: int = 0
    directions_per_norm: int = 0
    variant: str | None = None


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def chi_findings(subject: str, chi: float, growth: float | None) -> list[Finding]:
    """Flag exploding or vanishing gradients from chi and its growth per block (None: no profile)."""
    found = []
    per_block = f" and grows {growth:.3f}x per block" if growth is not None else ""
    if chi > limit("chi_exploding") or (growth is not None and growth > limit("chi_growth_per_block_high")):
        if chi > limit("chi_exploding_critical"):
            rule, measured = "chi_exploding_critical", chi
        elif chi > limit("chi_exploding"):
            rule, measured = "chi_exploding", chi
        else:
            rule, measured = "chi_growth_per_block_high", growth
        found.append(crossed(
            "exploding", subject, measured, rule,
            f"chi = {_fmt(chi)}{per_block}: input gradients are about sqrt(chi) times the output "
            f"gradients and grow exponentially with depth; lower the weight scale toward criticality, "
            f"or use ReZero (alpha = 0) or pre-norm, which start near chi = 1.",
        ))
    if chi < limit("chi_vanishing") or (growth is not None and growth < limit("chi_growth_per_block_low")):
        if chi < limit("chi_vanishing_critical"):
            rule, measured = "chi_vanishing_critical", chi
        elif chi < limit("chi_vanishing"):
            rule, measured = "chi_vanishing", chi
        else:
            rule, measured = "chi_growth_per_block_low", growth
        found.append(crossed(
            "vanishing", subject, measured, rule,
            f"chi = {_fmt(chi)}{per_block}: gradients shrink on their way to the first layers, so "
            f"those layers barely learn; raise the weight scale toward criticality, or use ReZero "
            f"(alpha = 0) or pre-norm, which start near chi = 1.",
        ))
    return found


def spread_findings(subject: str, spread: float) -> list[Finding]:
    """Flag a wide spectrum: spread = m2 / chi^2 - 1, the variance of s^2 over chi^2."""
    if not spread > limit("spread_high"):
        return []
    return [crossed(
        "wide_spectrum", subject, spread, "spread_high",
        f"spread = {_fmt(spread)}: squared singular values vary by more than their mean, so directions "
        f"of the gradient train at very different rates; orthogonal weights at criticality, ReZero "
        f"(alpha = 0) or pre-norm narrow it.",
    )]


def near_zero_findings(
    subject: str, count: float, size: int, num_zeros: float, architecture: Architecture
) -> list[Finding]:
    """Flag vanishing directions: singular values below ``near_zero_relative`` times the largest."""
    fraction = count / size
    if fraction > limit("near_zero_fraction_critical"):
        rule = "near_zero_fraction_critical"
    elif fraction > limit("near_zero_fraction"):
        rule = "near_zero_fraction"
    else:
        return []
    if num_zeros >= size:
        message = (
            f"all {size} singular values are exactly zero: the output does not depend on the input at "
            f"these inputs, so no gradient reaches the input; look for a layer with zero weights or "
            f"an activation that is flat (dead) on all of its inputs"
        )
        return [crossed("vanishing_directions", subject, fraction, rule, message)]
    message = (
        f"{count:g} of {size} singular values ({fraction:.1%}) are below {limit('near_zero_relative'):g} "
        f"of the largest ({num_zeros:g} exactly zero): gradients along those input directions vanish"
    )
    if architecture.post_norm_blocks:
        removed = f"{architecture.directions_per_norm} directions" if architecture.directions_per_norm else "one direction per normalised vector"
        message += (
            f". Post-norm at this depth: each of the {architecture.post_norm_blocks} LayerNorms after a "
            f"residual sum removes {removed} and the product shrinks the rest; ReZero or pre-norm keeps them."
        )
    elif architecture.layer_norms:
        message += (
            f". Each of the {architecture.layer_norms} LayerNorm layers removes the mean direction of every "
            f"normalised vector; LayerNorms on the residual path (post-norm) compound this, and ReZero or "
            f"pre-norm keep the path free of them."
        )
    elif architecture.variant not in (None, "none"):
        message += (
            f"; the skip path of {architecture.variant} blocks keeps directions, so look at the layers that "
            f"change the shape (a strided or zero-padded shortcut, a projection, the stem or the head)."
        )
    else:
        message += "; skip connections (x + F(x)) or ReZero keep these directions, and orthogonal weights help plain stacks."
    return [crossed("vanishing_directions", subject, count / size, rule, message)]


_GROWING_ADVICE = {
    "plain": (
        "without skip connections each layer scales the RMS by its weight scale times the "
        "activation's gain, so the weights are too large; lower the weight scale toward "
        "criticality, or use ReZero (alpha = 0), which starts as the identity."
    ),
    "residual": (
        "residual sums accumulate (pre-norm grows like sqrt(depth)) and push later LayerNorms "
        "and softmaxes into saturation; ReZero (alpha = 0), a smaller branch init or a final "
        "LayerNorm keep the scale."
    ),
    "unknown": (
        "with skip connections the residual sums accumulate (pre-norm grows like sqrt(depth)), and "
        "without them the weights are too large; ReZero (alpha = 0), a smaller init or a final "
        "LayerNorm keep the scale."
    ),
}


def _advice_kind(architecture: Architecture) -> str:
    if architecture.variant is None:
        return "unknown"
    return "plain" if architecture.variant == "none" else "residual"


def activation_findings(
    subject: str, ratio: float, growth: float, architecture: Architecture = Architecture()
) -> list[Finding]:
    """Flag activation RMS after the last block far from the RMS that enters the first block.

    The advice depends on ``architecture.variant``: a plain stack, a residual one, or unknown.
    """
    if not math.isfinite(ratio):
        return []
    per_block = f" ({growth:.3f}x per block)" if math.isfinite(growth) else ""
    tail = (
        f"activation RMS changes {_fmt(ratio)}x from the first block's input to the last block's "
        f"output{per_block}"
    )
    kind = _advice_kind(architecture)
    if ratio > limit("activation_rms_ratio_high"):
        return [crossed(
            "activations_growing", subject, ratio, "activation_rms_ratio_high",
            f"{tail}: {_GROWING_ADVICE[kind]}",
        )]
    if ratio < limit("activation_rms_ratio_low"):
        fix = "raise the weight scale" if kind == "residual" else "raise the weight scale or add skip connections"
        return [crossed(
            "activations_shrinking", subject, ratio, "activation_rms_ratio_low",
            f"{tail}: the signal dies out in the forward pass, so later layers see almost constant "
            f"inputs; {fix}.",
        )]
    return []


def is_isometric(chi: float, spread: float, near_zero_count: float) -> bool:
    """Return whether a spectrum counts as isometric: chi near 1, narrow, no near-zero values."""
    return (
        abs(chi - 1) <= limit("isometry_chi_tolerance")
        and spread <= limit("isometry_spread_tolerance")
        and near_zero_count == 0
    )
