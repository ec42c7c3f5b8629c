"""Where the real reference annotation tables are: ``$M2ES_REFERENCE_DIR``, else
``shared/reference/annotations`` beside the repository (as CI lays it out). Tests that need them
take the ``reference_dir`` fixture (it skips when they are absent) or import ``REFERENCE_DIR``
from here (never from ``conftest``: with several conftest.py files that name is ambiguous)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def reference_dir() -> Path:
    """``$M2ES_REFERENCE_DIR``, else ``../shared/reference/annotations`` beside the repository."""
    if os.environ.get("M2ES_REFERENCE_DIR"):
        return Path(os.environ["M2ES_REFERENCE_DIR"])
    return REPO.parent / "shared" / "reference" / "annotations"


REFERENCE_DIR = reference_dir()
