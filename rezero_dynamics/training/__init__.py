"""Training: the loop, its tasks (language model, classifier), metrics and checkpoints."""

from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .loop import TrainConfig, TrainResult, read_status, train
from .metrics import accuracy, bits_per_character, speedup, steps_to_target
from .tasks import ClassificationTask, LanguageModelTask

__all__ = [
    "CheckpointError",
    "ClassificationTask",
    "LanguageModelTask",
    "TrainConfig",
    "TrainResult",
    "accuracy",
    "bits_per_character",
    "load_checkpoint",
    "read_status",
    "save_checkpoint",
    "speedup",
    "steps_to_target",
    "train",
]
