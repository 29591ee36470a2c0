"""Schedules: at which optimisation steps a quantity is recorded.

A schedule is a pure function of the integer step, so deciding costs no device work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Every:
    """Due at steps 0, k, 2k, ... (and never when k is 0)."""

    interval: int

    def __post_init__(self) -> None:
        if self.interval < 0:
            raise ValueError(f"interval must be >= 0 (0 disables), got {self.interval}")

    def __call__(self, step: int) -> bool:
        return self.interval > 0 and step % self.interval == 0


@dataclass(frozen=True)
class LogSpaced:
    """Due at about ``per_decade`` steps per decade, logarithmically spaced, and at step 0.

    Steps are round(10 ** (i / per_decade)) for i = 0, 1, ..., so early training, where
    quantities change fastest, is sampled densely.
    """

    per_decade: int = 10

    def __post_init__(self) -> None:
        if self.per_decade < 1:
            raise ValueError(f"per_decade must be >= 1, got {self.per_decade}")

    def __call__(self, step: int) -> bool:
        if step <= 1:
            return True
        index = math.floor(math.log10(step) * self.per_decade)
        return any(round(10 ** (i / self.per_decade)) == step for i in (index - 1, index, index + 1))
