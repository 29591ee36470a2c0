"""Argument checks shared by the models, spectra and CLI; each error names the value and the fix."""

from __future__ import annotations

import os


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


def memory_bytes() -> int:
    """Return the physical memory of this machine in bytes, or 2**50 where the OS does not report it."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 2**50


def check_model_fits(option: str, depth: int, parameters_per_block: int, bytes_per_parameter: int) -> None:
    """Raise ValueError when ``depth`` blocks of ``parameters_per_block`` exceed this machine's memory.

    ``parameters_per_block`` is a lower bound (weight matrices only), so a rejected model
    would not fit. The check runs before the model is built, because a huge depth hangs there.
    """
    estimate = depth * parameters_per_block * bytes_per_parameter
    memory = memory_bytes()
    if estimate > memory:
        raise ValueError(
            f"{option} {depth} needs about {estimate / 2**30:.3g} GiB for its parameters alone "
            f"({parameters_per_block} per block, {bytes_per_parameter} bytes each), more than the "
            f"{memory / 2**30:.3g} GiB of memory of this machine; choose a smaller {option}"
        )
