"""The ``ingest`` section of ``params.yaml``: :class:`IngestParams`, read by the ingest stage and the layouts."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.section import Section, knob
from pipeline.layouts.common import DEFAULT_IMAGE_EXTENSIONS

#: ``invalid_intervals``: intervals past the video's end or reversed are skipped (logged) or stop the stage.
POLICIES = ("skip", "error")


@dataclass(frozen=True)
class IngestParams(Section):
    """The ``ingest`` section of params.yaml (knobs explained in configs/params.reference.yaml)."""

    SECTION = "ingest"

    offset_fallback: int = knob(20, min=0)              # CAS(ME)^2: missing/non-increasing offset -> apex + this
    invalid_intervals: str = knob("skip", choices=POLICIES)
    include_unannotated: bool = knob(False)
    decode_sample: int = knob(3, min=0)                 # frames decoded per video (0: none)
    image_extensions: list[str] | None = knob(list(DEFAULT_IMAGE_EXTENSIONS))  # null or []: the defaults

    def extensions(self) -> tuple[str, ...]:
        """The frame file extensions to list (the defaults when none are set)."""
        return tuple(self.image_extensions or DEFAULT_IMAGE_EXTENSIONS)
