"""Image classification sets: scikit-learn's bundled digits (the default) and CIFAR-10
from the standard Python-pickle batch folder (no download).

Images are returned flattened as float32 features scaled to [0, 1] with int64 labels.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"
CIFAR10_FEATURES = 3 * 32 * 32


@dataclass(frozen=True)
class ImageDataset:
    """Flattened images and labels split into train, validation and test."""

    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    validation: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    num_classes: int

    @property
    def num_features(self) -> int:
        return self.train[0].shape[1]


def _split(features: np.ndarray, labels: np.ndarray, fractions: tuple[float, float], seed: int):
    order = np.random.default_rng(seed).permutation(len(labels))
    first = int(len(order) * fractions[0])
    second = first + int(len(order) * fractions[1])
    parts = order[:first], order[first:second], order[second:]
    return [(torch.from_numpy(features[p]).float(), torch.from_numpy(labels[p]).long()) for p in parts]


def load_digits(seed: int = 0) -> ImageDataset:
    """Load scikit-learn's 1,797 8x8 digit images (64 features, 10 classes), split 80/10/10."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    features = (bunch.data / 16.0).astype(np.float32)
    train, validation, test = _split(features, bunch.target.astype(np.int64), (0.8, 0.1), seed)
    return ImageDataset("digits", train, validation, test, 10)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and plain containers only, so a crafted file
    cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # Python 3 pickles of bytes at protocol 2; it only encodes text
        ("__builtin__", "bytes"),  # an empty bytes buffer (an array of 0 images) at protocol 2
        ("builtins", "bytes"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR-10 batches contain only arrays and lists")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR-10 batch {path.name} not found in {path.parent}; pass the folder "
            f"'cifar-10-batches-py' with data_batch_1 ... data_batch_5 and test_batch"
        )
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except Exception as error:  # damaged pickles raise many types (OverflowError, KeyError, ...)
        raise ValueError(
            f"{path} is not a CIFAR-10 Python batch ({error}); expected the pickled dict from "
            f"cifar-10-python.tar.gz"
        ) from None
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    if (
        not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
        or data.shape[1] != CIFAR10_FEATURES or labels is None
    ):
        raise ValueError(
            f"{path} is not a CIFAR-10 Python batch: expected a dict with b'data' of shape "
            f"(N, {CIFAR10_FEATURES}) uint8 and b'labels'"
        )
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{path} has labels that are not integers ({error}); CIFAR-10 labels are 0..9, so the file "
            f"is corrupted or not from cifar-10-python.tar.gz"
        ) from None
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path} has labels outside 0..9 ({labels.min()}..{labels.max()}); CIFAR-10 has 10 classes")
    if len(labels) != data.shape[0]:
        raise ValueError(f"{path} has {data.shape[0]} images but {len(labels)} labels; the file is truncated or corrupted")
    return data, labels


def load_cifar10(folder: str | Path, *, validation_images: int = 5000) -> ImageDataset:
    """Load CIFAR-10 from the ``cifar-10-batches-py`` folder.

    The last ``validation_images`` training images form the validation split; the test
    split is ``test_batch``. Features are the 3,072 pixel values scaled to [0, 1].
    """
    folder = Path(folder)
    if folder.is_file():
        raise ValueError(
            f"CIFAR-10 folder {folder} is a file, not a folder; pass the folder that contains it, {folder.parent}"
        )
    if not folder.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder {folder} not found; pass the unpacked 'cifar-10-batches-py' folder")
    parts = [_read_cifar_batch(folder / name) for name in CIFAR10_BATCHES]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    test_data, test_labels = _read_cifar_batch(folder / CIFAR10_TEST)
    if len(labels) < 2:
        raise ValueError(
            f"CIFAR-10 folder {folder} has {len(labels)} training image(s) in {', '.join(CIFAR10_BATCHES)}; "
            f"at least 2 are needed (CIFAR-10 has 50000), so pass the full unpacked 'cifar-10-batches-py' folder"
        )
    if not 0 < validation_images < len(labels):
        raise ValueError(
            f"validation_images must be between 1 and {len(labels) - 1}, got {validation_images}, because CIFAR-10 "
            f"folder {folder} has {len(labels)} training images; pass a smaller validation_images or the full "
            f"folder of 50000 images"
        )

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y)

    cut = len(labels) - validation_images
    return ImageDataset(
        "cifar10", tensors(data[:cut], labels[:cut]), tensors(data[cut:], labels[cut:]),
        tensors(test_data, test_labels), 10,
    )
