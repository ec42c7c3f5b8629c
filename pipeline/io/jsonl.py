"""JSON-lines record files: append one record as one write (safe across processes), read them back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append ``record`` as one line with a single ``os.write`` under ``O_APPEND``, so lines of processes
    appending at once never interleave; the file is created if missing (not its folder)."""
    line = (json.dumps(dict(record), sort_keys=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of ``path`` in file order (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
