"""Dataset layouts: each reads a dataset's own annotation file and finds its videos.

A reader has the signature ``read(preset, root, params) -> LayoutData`` (``params``: the
checked :class:`~pipeline.layouts.params.IngestParams`; see :mod:`pipeline.layouts.common`);
:func:`get_reader` picks it from the preset's ``layout`` key.
"""

from __future__ import annotations

from typing import Callable

from pipeline.errors import ConfigError
from pipeline.layouts.casme2 import read_casme2
from pipeline.layouts.common import LayoutData, VideoEntry
from pipeline.layouts.generic import read_generic
from pipeline.layouts.params import IngestParams
from pipeline.layouts.samm import read_samm

READERS: dict[str, Callable[..., LayoutData]] = {
    "casme2": read_casme2,
    "samm": read_samm,
    "generic": read_generic,
}

__all__ = ["READERS", "IngestParams", "LayoutData", "VideoEntry", "get_reader"]


def get_reader(layout: str, preset_name: str = "") -> Callable[..., LayoutData]:
    """The reader of ``layout`` (casme2 | samm | generic)."""
    try:
        return READERS[str(layout)]
    except KeyError:
        raise ConfigError(f"configs/datasets/{preset_name}.yaml: layout '{layout}' is not one of "
                          f"{', '.join(READERS)}. Use generic with a canonical annotations.csv for other "
                          "datasets.") from None
