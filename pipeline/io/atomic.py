"""Atomic writes of small files: a temporary name beside the target, then one rename.

A reader never sees a half-written file under the final name, two writers never share a
temporary name, and a failed write leaves nothing behind. Per-video HDF5 files have their own
context manager (:func:`pipeline.io.h5io.atomic_h5`), which adds the completeness flag.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

PARTIAL_SUFFIX = ".partial"


def partial_path(path: str | Path) -> Path:
    """A fresh temporary name beside ``path`` (hidden, unique, ending in ``.partial``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``path``, on any error removed.

    The writer may keep ``path``'s suffix in mind: the temporary name ends in ``.partial``, so a
    writer that picks its format from the suffix (matplotlib, OpenCV) must be told the format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any, indent: int = 2, sort_keys: bool = False) -> None:
    """Write JSON atomically (indented, one trailing newline)."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
