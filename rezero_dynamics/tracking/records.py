"""Tidy records of a run: rows (run, step, quantity, layer, value) appended to a CSV file.

Rows are appended in batches with one write and an fsync each, so a crash loses at most
the batch being written. Readers skip a final line that a crash cut short.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pandas as pd

RECORD_COLUMNS: tuple[str, ...] = ("run", "step", "quantity", "layer", "value")
RECORDS_FILE = "records.csv"


class RecordWriter:
    """Append-only writer of tidy record rows to ``path`` (a CSV with a header row)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._write_text(",".join(RECORD_COLUMNS) + "\n")

    def append(self, rows: list[tuple]) -> None:
        """Append ``rows`` of (run, step, quantity, layer, value) in one write."""
        if not rows:
            return
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        self._write_text(buffer.getvalue())

    def _write_text(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


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
        text = file.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        frame = pd.read_csv(io.StringIO(text), dtype={"run": str, "quantity": str, "layer": str})
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
