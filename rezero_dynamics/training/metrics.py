"""Metrics of training runs: bits per character, accuracy, steps-to-target and speed-up.

The ReZero paper measures convergence speed as the number of iterations a model needs
to reach a target validation metric: 1.2 bits per byte on enwik8 for its 12-layer
Transformers. It reports speed-up as the ratio of those counts between variants.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


def bits_per_character(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the mean cross-entropy in bits per target symbol, as a 0-dim tensor.

    ``logits`` is (..., V) and ``targets`` (...) of int64 ids. The value stays on the
    device; for byte-level text (enwik8) it is bits per byte.
    """
    nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return nats / LN2


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the fraction of rows whose arg-max class equals the target, as a 0-dim tensor."""
    return (logits.argmax(dim=-1) == targets).float().mean()


def steps_to_target(
    records: pd.DataFrame, target: float, *, lower_is_better: bool = True, step: str = "step", value: str = "value"
) -> float:
    """Return the first step at which ``value`` reaches ``target``, or NaN if it never does.

    ``records`` contains one evaluation per row. With ``lower_is_better`` (losses, bits per
    character) the target is reached when value <= target. Otherwise (accuracy) it is
    reached when value >= target.
    """
    ordered = records.sort_values(step)
    reached = ordered[value] <= target if lower_is_better else ordered[value] >= target
    if not reached.any():
        return math.nan
    return float(ordered.loc[reached, step].iloc[0])


def speedup(baseline_steps: float, steps: float) -> float:
    """Return how much faster a run reached the target than the baseline, as a ratio minus 1.

    0.56 means 56% faster (the baseline needed 1.56 times as many steps). NaN when either
    run never reached the target.
    """
    if math.isnan(baseline_steps) or math.isnan(steps):
        return math.nan
    if steps <= 0:
        raise ValueError(f"steps must be positive to form a speed-up, got {steps}")
    return baseline_steps / steps - 1.0
