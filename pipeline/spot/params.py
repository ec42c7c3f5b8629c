"""The ``spot`` section of ``params.yaml`` (:class:`SpotParams`) and the ingest params spot runs with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipeline.core.params import deep_merge
from pipeline.core.section import Section, convert, knob, reject_unknown
from pipeline.errors import ConfigError
from pipeline.io.tables import TYPES
from pipeline.layouts.params import IngestParams

#: What the ingest stage needs when params.yaml is not at hand.
INGEST_DEFAULTS: dict[str, Any] = {"decode_sample": 3, "image_extensions": [".jpg", ".jpeg", ".png", ".bmp"]}


@dataclass(frozen=True)
class SpotParams(Section):
    """The ``spot`` section of params.yaml (knobs explained in configs/params.reference.yaml); the CLI may
    replace some values."""

    SECTION = "spot"

    cache_dir: str = knob("data/spot")
    out_dir: str = knob("spot_out")
    device: str = knob("auto")
    # per type; a section giving one type keeps the other's default
    thresholds: dict[str, float] = knob({"macro": 0.5, "micro": 0.5})
    face_check_every_s: float = knob(0.5, min=0)   # > 0 (checked in check())
    face_check_size: int = knob(200, min=32)
    face_check_min_samples: int = knob(2, min=1)
    fps_tolerance: float = knob(0.01, min=0)       # < 0.5 (checked in check())
    batch_size: int = knob(256, min=1)
    hash_chunk_mb: int = knob(8, min=1)
    annotate_codec: str = knob("mp4v")

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None, where: str | None = None,
                    others: Iterable[type[Section]] = ()) -> "SpotParams":
        """Validate the section; ``thresholds`` is checked key by key and merged over its default."""
        where = where or f"params.yaml: {cls.SECTION}"
        if isinstance(section, Mapping) and isinstance(section.get("thresholds"), Mapping):
            section = {**section, "thresholds": _thresholds(section["thresholds"], f"{where}.thresholds")}
        return super().from_params(section, where, others)

    def check(self, where: str) -> None:
        """Bounds that :func:`~pipeline.core.section.knob` cannot say (strict or upper ones, the FourCC)."""
        if not self.face_check_every_s > 0:
            raise ConfigError(f"{where}.face_check_every_s must be > 0, got {self.face_check_every_s}.")
        if not self.fps_tolerance < 0.5:
            raise ConfigError(f"{where}.fps_tolerance must be in [0, 0.5), got {self.fps_tolerance}.")
        if len(self.annotate_codec) != 4:
            raise ConfigError(f"{where}.annotate_codec '{self.annotate_codec}' must be a FourCC such as mp4v.")

    @property
    def cache_root(self) -> Path:
        """``cache_dir`` as a path."""
        return Path(self.cache_dir)

    @property
    def out_root(self) -> Path:
        """``out_dir`` as a path."""
        return Path(self.out_dir)


def _thresholds(value: Mapping[str, Any], where: str) -> dict[str, float]:
    """``spot.thresholds``: only the known types, each a number, missing ones at their default."""
    reject_unknown(value, TYPES, where)
    merged = {**SpotParams.defaults()["thresholds"], **value}
    return {t: convert(merged[t], float, f"{where}.{t}") for t in TYPES}


#: The ``spot`` params section's defaults (used for keys params.yaml lacks).
SPOT_DEFAULTS: dict[str, Any] = SpotParams.defaults()


def ingest_section(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ingest params spot runs the ingest stage with: params' ``ingest`` over :data:`INGEST_DEFAULTS`,
    every video kept (there are no annotations) and intervals never checked."""
    section = deep_merge(INGEST_DEFAULTS, params.get("ingest") or {})
    section.update(include_unannotated=True, invalid_intervals="skip")
    return section


def check_ingest(params: Mapping[str, Any], where: str) -> None:
    """Refuse a bad ``ingest`` section of the params file before any input is read (``where``: its name)."""
    IngestParams.from_params(ingest_section(params), where=where)


def image_extensions(params: Mapping[str, Any]) -> tuple[str, ...]:
    """The frame file extensions of a frame folder input (params' ``ingest.image_extensions``)."""
    return tuple((params.get("ingest") or {}).get("image_extensions") or INGEST_DEFAULTS["image_extensions"])
