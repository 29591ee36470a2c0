"""Tidy records of a run: rows (run, step, quantity, layer, value) appended to a CSV file.

Crash safety. A CSV file here is written by appending whole rows, each batch with one
``write`` and an ``fsync``, and every row ends with a newline. A process killed at any
moment (``kill -9`` included) therefore leaves complete rows followed by at most one
partial row, and that partial row is the only line without its newline. Readers
(``read_csv_rows``, ``read_records``) drop it, and a writer that opens the file again
cuts it off before appending. No checksum column is needed: a row is complete exactly
when its newline was written. Small files that are rewritten whole (status, config,
checkpoints) use ``replace_atomically`` instead: write a temporary file, fsync it, rename
it over the old one.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

RECORD_COLUMNS: tuple[str, ...] = ("run", "step", "quantity", "layer", "value")
RECORDS_FILE = "records.csv"
_RECORD_DTYPES = {"run": str, "quantity": str, "layer": str}


def replace_atomically(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary)`` and rename the temporary file to ``path``.

    The temporary file is fsynced before the rename and the folder after it, so ``path``
    contains either its old or its new content after a crash, never a part of either.
    """
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename itself is still atomic
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def drop_partial_row(path: str | Path) -> None:
    """Cut a last line that lacks its newline (a row cut short by a crash) off ``path``."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        end = size
        while end > 0:  # scan back in blocks for the last newline
            start = max(0, end - 65536)
            handle.seek(start)
            block = handle.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                handle.truncate(start + newline + 1)
                break
            end = start
        else:
            handle.truncate(0)
        handle.flush()
        os.fsync(handle.fileno())


class CsvAppender:
    """Append-only writer of CSV rows to ``path``, with a header row written first.

    See the module docstring for why every state a crash can leave is readable.
    """

    def __init__(self, path: str | Path, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        drop_partial_row(self.path)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._write_text(",".join(self.columns) + "\n")

    def append(self, rows: Sequence[Sequence]) -> None:
        """Append ``rows`` (one value per column) in one write."""
        if not rows:
            return
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        self._write_text(buffer.getvalue())

    def append_frame(self, frame: pd.DataFrame) -> None:
        """Append the rows of ``frame``, whose columns must be this file's columns."""
        if tuple(frame.columns) != self.columns:
            raise ValueError(f"frame columns {list(frame.columns)} differ from the file's {list(self.columns)}")
        self._write_text(frame.to_csv(index=False, header=False, lineterminator="\n"))

    def _write_text(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


class RecordWriter(CsvAppender):
    """Append-only writer of tidy record rows (run, step, quantity, layer, value) to ``path``."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, RECORD_COLUMNS)


def read_csv_rows(path: str | Path, dtype: dict | None = None) -> pd.DataFrame:
    """Read a CSV file written by ``CsvAppender``, without a last row that lacks its newline.

    A file that contains no complete header (created, then cut short by a crash) reads as
    an empty frame.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"{path} is not a UTF-8 CSV file (invalid byte 0x{raw[error.start]:02x} on line {line}); "
            "it is damaged or was not written by rezero-dynamics, so delete it or rerun the run that wrote it"
        ) from None
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    if not text:
        return pd.DataFrame()
    return pd.read_csv(io.StringIO(text), dtype=dtype)


def read_records(path: str | Path) -> pd.DataFrame:
    """Read a records file into one tidy frame.

    For a folder: its own ``records.csv`` if it has one (a run, or the combined records
    of a study), else every ``records.csv`` below it (the runs of a comparison).

    A last line without its newline (cut off by a crash) is dropped.
    """
    path = Path(path)
    if path.is_dir() and (path / RECORDS_FILE).is_file():
        files = [path / RECORDS_FILE]  # a run folder, or a study's combined records
    elif path.is_dir():
        files = sorted(path.rglob(RECORDS_FILE))
    else:
        files = [path]
    if not files:
        raise FileNotFoundError(f"no {RECORDS_FILE} found below {path}; pass a run folder written by train or compare")
    frames = []
    for file in files:
        frame = read_csv_rows(file, dtype=_RECORD_DTYPES)
        frames.append(_checked_records(frame, file) if len(frame.columns) else pd.DataFrame(columns=list(RECORD_COLUMNS)))
    return pd.concat(frames, ignore_index=True)


def _checked_records(frame: pd.DataFrame, file: Path) -> pd.DataFrame:
    """Check the columns and types of one records file: integer steps, numeric values.

    NaN and infinite values are legitimate (a diverged run records them). Raises
    ValueError naming ``file``, the first bad line and the fix.
    """
    fix = "fix or delete that line, or rerun the run that wrote the file"
    if tuple(frame.columns) != RECORD_COLUMNS:
        raise ValueError(
            f"{file} has columns {list(frame.columns)}, expected {list(RECORD_COLUMNS)}; "
            "pass a records.csv written by train or compare"
        )
    # Line numbers count the header as line 1; pandas skips blank lines, so after one
    # the number is a lower bound.
    steps = pd.to_numeric(frame["step"], errors="coerce")
    bad_step = ~np.isfinite(steps.to_numpy(dtype="float64")) | (steps != steps.round()).to_numpy()
    if bad_step.any():
        row = int(bad_step.argmax())
        raise ValueError(f"{file} line {row + 2}: step must be an integer, got {str(frame['step'].iloc[row])!r}; {fix}")
    values = pd.to_numeric(frame["value"], errors="coerce")
    bad_value = values.isna() & frame["value"].notna()
    if bad_value.any():
        row = int(bad_value.to_numpy().argmax())
        raise ValueError(f"{file} line {row + 2}: value must be a number, got {str(frame['value'].iloc[row])!r}; {fix}")
    return frame.assign(step=steps.astype("int64"), value=values.astype("float64"))
