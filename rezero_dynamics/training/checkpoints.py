"""Checkpoints that load with ``torch.load(weights_only=True)``: tensors, numbers, strings,
lists and dicts only, written to a temporary file and renamed so a crash never leaves a
half-written checkpoint."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch

from ..tracking.records import replace_atomically

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "rezero_dynamics.checkpoint.v1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupted, unsafe or not from this toolkit."""


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` (plus a format tag) to ``path`` atomically."""
    replace_atomically(path, lambda temporary: torch.save({"format": CHECKPOINT_FORMAT, **state}, temporary))


def _unpickling_detail(error: Exception) -> str:
    """Return the specific reason in the error of a weights-only ``torch.load``, without its advice."""
    text = str(error)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", text)
    return match.group(1).strip() if match else (text.splitlines() or [type(error).__name__])[0]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; no code in the file can run.

    Raises CheckpointError naming the file when it is missing, truncated, contains
    objects other than tensors and plain containers, or was not written by this toolkit.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; train first or pass the run folder that contains {CHECKPOINT_FILE}")
    try:
        with warnings.catch_warnings():
            # A plain pickle (not torch.save) warns about its protocol before it fails below.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"checkpoint {path} was not loaded: it contains objects other than tensors and plain containers, "
            f"whose unpickling could run code, or it is not a file written by torch.save "
            f"({_unpickling_detail(error)}); pass a checkpoint from 'rezero-dynamics train'"
        ) from None
    except Exception as error:  # torch.load raises many types on damaged files (KeyError, ValueError, ...)
        raise CheckpointError(
            f"checkpoint {path} is corrupted or truncated ({type(error).__name__}: {(str(error).splitlines() or [''])[0]}); "
            f"resume from an earlier checkpoint or start a new run"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} was not written by rezero_dynamics (no '{CHECKPOINT_FORMAT}' tag); "
            f"pass a checkpoint from 'rezero-dynamics train'"
        )
    return state
