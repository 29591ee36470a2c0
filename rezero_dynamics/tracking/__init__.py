"""Tracking of training statistics: schedules, a device-side tracker and tidy records."""

from .records import RECORD_COLUMNS, RECORDS_FILE, RecordWriter, read_records
from .schedules import Every, LogSpaced
from .tracker import Tracker

__all__ = ["RECORD_COLUMNS", "RECORDS_FILE", "Every", "LogSpaced", "RecordWriter", "Tracker", "read_records"]
