"""Benchmark results as JSON lines: append one measured row, read back the latest row per key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def append_record(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def latest_records(path: Path, key: Callable[[dict], tuple]) -> dict[tuple, dict]:
    """The last record written for each ``key(record)``."""
    latest = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        latest[key(record)] = record
    return latest
