"""The benchmarks' one way of reporting: the JSON document to stdout and, if asked, to a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(report: dict[str, Any], out: Path | str | None) -> None:
    """Print ``report`` as indented JSON and write the same text to ``out`` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
