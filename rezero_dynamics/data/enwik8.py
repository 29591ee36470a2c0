"""enwik8, the first 10^8 bytes of an English Wikipedia XML dump (Hutter Prize), from a
local file: no download. The standard split is the first 90,000,000 bytes for training,
the next 5,000,000 for validation and the last 5,000,000 for testing. Models read bytes,
so the vocabulary is the 256 byte values and bits per character are bits per byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .text import CharCorpus, CharVocabulary

ENWIK8_BYTES = 100_000_000
ENWIK8_SPLITS = (90_000_000, 5_000_000, 5_000_000)


class ByteVocabulary(CharVocabulary):
    """The 256 byte values as a vocabulary; ids are the byte values."""

    def __init__(self) -> None:
        super().__init__("".join(chr(i) for i in range(256)))


def load_enwik8(path: str | Path, *, expected_bytes: int = ENWIK8_BYTES) -> CharCorpus:
    """Load enwik8 from ``path`` (the unzipped file named ``enwik8``) and split it 90/5/5.

    ``expected_bytes`` is the size the file must have: 100,000,000 for the real file.
    Tests pass a smaller size for small files of the same format, and the split keeps
    the 90/5/5 proportion. Raises FileNotFoundError or ValueError saying what
    was expected.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "enwik8"
    if not path.is_file():
        raise FileNotFoundError(
            f"enwik8 not found at {path}; pass the path of the unzipped enwik8 file "
            f"({ENWIK8_BYTES:,} bytes, from the Hutter Prize page)"
        )
    size = path.stat().st_size
    with open(path, "rb") as handle:
        magic = handle.read(2)
    if path.suffix == ".zip" or magic == b"PK":
        raise ValueError(f"{path} is a zip archive; unzip it and pass the enwik8 file inside")
    if size != expected_bytes:
        raise ValueError(
            f"{path} has {size:,} bytes, but enwik8 has exactly {expected_bytes:,}; the file is "
            f"truncated or not enwik8"
        )
    data = torch.from_numpy(np.fromfile(path, dtype=np.uint8).astype(np.int64))
    train_end = expected_bytes * ENWIK8_SPLITS[0] // ENWIK8_BYTES
    validation_end = train_end + expected_bytes * ENWIK8_SPLITS[1] // ENWIK8_BYTES
    return CharCorpus(ByteVocabulary(), data[:train_end], data[train_end:validation_end], data[validation_end:], "enwik8")
