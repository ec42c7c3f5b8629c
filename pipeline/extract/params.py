"""The ``features`` section of ``params.yaml``: :class:`FeaturesParams`, its allowed values, and VERSION.

``VERSION`` and :meth:`FeaturesParams.identity` (the params less :attr:`~FeaturesParams.OPERATIONAL`
ones, and the :attr:`~FeaturesParams.LATER` ones at their default) enter every features
file's ``m2es_digest`` (:func:`pipeline.extract.writer.video_digest`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from models.weights import BACKBONES

from pipeline.core.section import Section, knob
from pipeline.errors import ConfigError

VERSION = 1  # bump when the features of the same params and inputs change
STREAMS: tuple[str, ...] = ("rgb", "flow")
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")


def _stream_weights(weights: Any) -> dict[str, str | None]:
    """``weights: {rgb, flow}`` with both streams, an unset or empty path as None."""
    given = weights or {}
    return {s: (str(given[s]) if given.get(s) else None) for s in STREAMS}


@dataclass(frozen=True)
class FeaturesParams(Section):
    """The ``features`` section of params.yaml (see the comments there).

    ``weights`` is the nested ``weights: {rgb, flow}`` mapping (paths or null); after
    construction it always holds both streams (:meth:`weights_path`, :attr:`weights_rgb`,
    :attr:`weights_flow` read it).
    """

    SECTION = "features"

    backbone: str = knob("i3d", choices=BACKBONES)
    weights: dict[str, Any] | None = knob({"rgb": None, "flow": None})
    allow_random_init: bool = knob(False)
    seed: int = knob(0)
    input_size: int = knob(224, min=32)
    clip: int = knob(8, min=1)
    stride: int = knob(2, min=1)
    flow_bound: float = knob(15.0)
    resize_antialias: bool = knob(True)
    device: str = knob("auto")
    precision: str = knob("fp32", choices=PRECISIONS)
    channels_last: bool = knob(False)
    fuse: bool = knob(False)
    space_to_depth: bool = knob(False)
    compile: bool = knob(False)
    batch_size: int = knob(64, min=1)
    inflight: int = knob(2, min=1)
    prefetch: int = knob(2, min=1)
    read_threads: int = knob(0, min=0)
    read_workers: int = knob(0, min=0)

    # Keys that change how fast, not what: left out of the per-video digest.
    # Weights enter the digest by their SHA-256 (pipeline.extract.writer.weights_identity), not their path.
    OPERATIONAL: ClassVar[tuple[str, ...]] = ("device", "batch_size", "inflight", "prefetch", "read_threads",
                                              "read_workers", "compile", "weights")
    # Keys added after outputs existed: in the digest only when set, so older outputs keep theirs.
    LATER: ClassVar[Mapping[str, Any]] = {"space_to_depth": False}

    def __post_init__(self) -> None:
        if self.weights is None or (isinstance(self.weights, Mapping) and not set(self.weights) - set(STREAMS)):
            object.__setattr__(self, "weights", _stream_weights(self.weights))

    def check(self, where: str) -> None:
        """The nested weights mapping, the flow bound, and the fused model's options."""
        if not isinstance(self.weights, Mapping) or set(self.weights) - set(STREAMS):
            raise ConfigError(f"{where}.weights must be a mapping with keys rgb and flow (paths or null).")
        if self.flow_bound <= 0:
            raise ConfigError(f"{where}.flow_bound must be positive, got {self.flow_bound}.")
        if self.fuse and self.backbone != "i3d":
            raise ConfigError(f"{where}.fuse applies to backbone i3d only; set fuse: false for {self.backbone}.")
        if self.space_to_depth and not self.fuse:
            raise ConfigError(f"{where}.space_to_depth rewrites the fused i3d model's stem; set fuse: true too.")

    def weights_path(self, stream: str) -> str | None:
        """The weights path of ``stream`` (None: not set)."""
        return (self.weights or {}).get(stream)

    @property
    def weights_rgb(self) -> str | None:
        """The rgb stream's weights path (``weights.rgb``)."""
        return self.weights_path("rgb")

    @property
    def weights_flow(self) -> str | None:
        """The flow stream's weights path (``weights.flow``)."""
        return self.weights_path("flow")

    def identity(self) -> dict[str, Any]:
        """The params that determine the features' values (what the per-video digest hashes)."""
        return {k: v for k, v in self.__dict__.items()
                if k not in self.OPERATIONAL and not (k in self.LATER and v == self.LATER[k])}
