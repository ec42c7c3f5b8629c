"""The ``crop`` section of ``params.yaml``: :class:`CropParams`, its allowed values, and the stage's VERSION.

``VERSION`` and the params (less :data:`NOT_IN_DIGEST`) enter every faces file's ``m2es_digest``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.section import Section, knob
from pipeline.cropping.finder import DETECTORS
from pipeline.io.h5chunks import CODECS

VERSION = 1  # bump when the output of the same params and inputs changes
# params that change how frames are decoded, not the crops (the tests compare them byte for byte),
# added after outputs existed: left out of the digest, so complete outputs stay valid either way
NOT_IN_DIGEST = ("region_decode",)
#: Keys ``m2es spot`` takes from the user's params over the model's recipe: how unreadable frames
#: are treated, and speed and storage. Never what decides the pixels the model was trained on.
INPUT_HANDLING = ("on_bad_frame", "max_repeat_fraction", "min_frames", "threads", "batch", "region_decode",
                  "compression", "compression_level", "chunk_frames", "models_dir")

MODES = ("fixed", "track")
PADS = ("constant", "replicate")
INTERPOLATIONS = ("auto", "area", "linear", "cubic")
ON_BAD_FRAME = ("fail", "repeat")


@dataclass(frozen=True)
class CropParams(Section):
    """The ``crop`` section of params.yaml (knobs explained in configs/params.reference.yaml)."""

    SECTION = "crop"

    size: int = knob(224, min=1)
    detector: str = knob("hog", choices=DETECTORS)
    upsample: int = knob(0, min=0)
    min_score: float = knob(0.3)
    detect_max_side: int = knob(640, min=0)
    search_frames: int = knob(30, min=1)
    margin_top: float = knob(0.3, min=0)
    margin_bottom: float = knob(0.05, min=0)
    margin_side: float = knob(0.1, min=0)
    mode: str = knob("fixed", choices=MODES)
    track_every: int = knob(30, min=1)
    track_threshold: float = knob(0.1, min=0)
    pad: str = knob("constant", choices=PADS)
    reduced_decode: bool = knob(True)
    region_decode: bool = knob(True)
    interpolation: str = knob("auto", choices=INTERPOLATIONS)
    on_bad_frame: str = knob("fail", choices=ON_BAD_FRAME)
    max_repeat_fraction: float = knob(0.05, min=0)
    min_frames: int = knob(9, min=0)
    threads: int = knob(2, min=1)
    batch: int = knob(64, min=1)
    compression: str = knob("blosc-lz4", choices=CODECS)
    # None: the codec's own level (pipeline.io.h5chunks.DEFAULT_LEVELS)
    compression_level: int | None = knob(None, min=0, max=9)
    chunk_frames: int = knob(8, min=1)
    models_dir: str | None = knob(None)

