"""Argument checks shared by the models, spectra and CLI; each error names the value and the fix."""

from __future__ import annotations


def check_positive_int(name: str, value: int) -> int:
    """Return ``value`` if it is an int >= 1, else raise ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


MAX_SEED = 2**63 - 1  # torch.manual_seed takes 64-bit seeds; derived seeds wrap modulo 2**64


def check_seed(name: str, value: int) -> int:
    """Return ``value`` if it is an int from 0 to 2**63 - 1, else raise ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be a seed from 0 to 2**63 - 1, got {value!r}")
    return value
