"""Training: the language-model loop, metrics and checkpoints."""

from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .loop import TrainConfig, TrainResult, train_language_model
from .metrics import accuracy, bits_per_character, speedup, steps_to_target

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "accuracy",
    "bits_per_character",
    "load_checkpoint",
    "save_checkpoint",
    "speedup",
    "steps_to_target",
    "train_language_model",
]
