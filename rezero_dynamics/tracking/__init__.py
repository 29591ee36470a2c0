"""Tracking of training statistics: schedules, a device-side tracker and tidy records."""

from .records import RECORD_COLUMNS, RECORDS_FILE, CsvAppender, RecordWriter, read_csv_rows, read_records
from .schedules import Every, LogSpaced
from .tracker import Tracker

__all__ = [
    "RECORD_COLUMNS", "RECORDS_FILE", "CsvAppender", "Every", "LogSpaced", "RecordWriter", "Tracker",
    "read_csv_rows", "read_records",
]
