"""The ``features`` section of ``params.yaml``: :class:`FeaturesParams`, its allowed values, and VERSION.

``VERSION`` and :meth:`FeaturesParams.identity` (the params less :attr:`~FeaturesParams.OPERATIONAL`
ones, and the :attr:`~FeaturesParams.LATER` ones at their default) enter every features
file's ``m2es_digest`` (:func:`pipeline.extract.writer.video_digest`).

``backbone`` is a network of :data:`models.weights.BACKBONES` (``i3d``, ``i3d_r50``) or
:data:`ROI_FLOW`, the weight-free landmark-region flow baseline (:mod:`pipeline.extract.roi_flow`),
whose knobs are the nested ``roi`` mapping (:class:`RoiParams`). The ``roi`` knobs and
:data:`ROI_VERSION` enter the digest of roi_flow features only: the identity of i3d
features is what it was before roi_flow existed. ``flow_quantize`` (the published JPEG
store-and-read of the flow, :mod:`pipeline.extract.flow_jpeg`) applies to what either backbone
reads; it enters the digest only when not ``none`` (for roi_flow with ``flow_bound``, which
then matters), so outputs made before it keep their digests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from models.weights import BACKBONES

from pipeline.core.section import Section, knob
from pipeline.errors import ConfigError
from pipeline.extract.flow_jpeg import FLOW_QUANTIZE

VERSION = 1  # bump when the features of the same params and inputs change
STREAMS: tuple[str, ...] = ("rgb", "flow")
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")
ROI_FLOW = "roi_flow"  # the weight-free backbone: landmark-region flow statistics (pipeline.extract.roi_flow)
ROI_VERSION = 1  # bump when roi_flow features of the same params and inputs change (enters their digest)
NO_WEIGHTS = "none"  # the weights identity of both streams of roi_flow features (it loads no weights)
HEAD_MOTIONS: tuple[str, ...] = ("similarity", "affine", "nose", "none")


@dataclass(frozen=True)
class RoiParams(Section):
    """The nested ``features.roi`` mapping: the knobs of backbone roi_flow (explained in configs/params.reference.yaml).

    ``reference_pairs``: flow fields summed into the sliding reference (the accumulated
    displacement at field t is the head-free flow of fields t - reference_pairs + 1 .. t);
    ``region_scale`` / ``rigid_scale``: radius of an expression region / of a rigid anchor,
    x the inter-ocular distance; ``head_motion``: what is removed from every field first
    (``similarity`` or ``affine`` fitted to the rigid anchors, ``nose``: the nose bridge's
    mean flow, ``none``).
    """

    SECTION = "features.roi"

    reference_pairs: int = knob(12, min=1, max=1000)
    region_scale: float = knob(0.25, min=0.02, max=2.0)
    rigid_scale: float = knob(0.1, min=0.02, max=1.0)
    head_motion: str = knob("similarity", choices=HEAD_MOTIONS)


def _stream_weights(weights: Any) -> dict[str, str | None]:
    """``weights: {rgb, flow}`` with both streams, an unset or empty path as None."""
    given = weights or {}
    return {s: (str(given[s]) if given.get(s) else None) for s in STREAMS}


@dataclass(frozen=True)
class FeaturesParams(Section):
    """The ``features`` section of params.yaml (knobs explained in configs/params.reference.yaml).

    ``weights`` is the nested ``weights: {rgb, flow}`` mapping (paths or null); after
    construction it always holds both streams (:meth:`weights_path`, :attr:`weights_rgb`,
    :attr:`weights_flow` read it).

    Backbone roi_flow reads ``clip``, ``stride``, ``roi``, ``flow_quantize`` (with ``flow_bound``
    when it is ``jpeg``) and the reader's knobs only; the
    network knobs (weights, input size, precision, fuse, ...) are accepted and ignored, so a
    dataset preset tuned for i3d runs roi_flow unchanged.
    """

    SECTION = "features"

    backbone: str = knob("i3d", choices=(*BACKBONES, ROI_FLOW))
    weights: dict[str, Any] | None = knob({"rgb": None, "flow": None})
    allow_random_init: bool = knob(False)
    seed: int = knob(0)
    input_size: int = knob(224, min=32)
    clip: int = knob(8, min=1)
    stride: int = knob(2, min=1)
    flow_bound: float = knob(15.0)
    flow_quantize: str = knob("none", choices=FLOW_QUANTIZE)  # none: as before the key (params.yaml: jpeg, published)
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
    roi: dict[str, Any] | None = knob({})  # backbone roi_flow's knobs (RoiParams); checked for every backbone

    # Keys that change how fast, not what: left out of the per-video digest.
    # Weights enter the digest by their SHA-256 (pipeline.extract.writer.weights_identity), not their path.
    OPERATIONAL: ClassVar[tuple[str, ...]] = ("device", "batch_size", "inflight", "prefetch", "read_threads",
                                              "read_workers", "compile", "weights")
    # Keys added after outputs existed: in the digest only when set, so older outputs keep theirs.
    LATER: ClassVar[Mapping[str, Any]] = {"space_to_depth": False, "flow_quantize": "none"}

    def __post_init__(self) -> None:
        if self.weights is None or (isinstance(self.weights, Mapping) and not set(self.weights) - set(STREAMS)):
            object.__setattr__(self, "weights", _stream_weights(self.weights))

    def check(self, where: str) -> None:
        """The nested weights mapping, the flow bound, and the fused model's options."""
        if not isinstance(self.weights, Mapping) or set(self.weights) - set(STREAMS):
            raise ConfigError(f"{where}.weights must be a mapping with keys rgb and flow (paths or null).")
        if self.flow_bound <= 0:
            raise ConfigError(f"{where}.flow_bound must be positive, got {self.flow_bound}.")
        if self.fuse and self.backbone not in ("i3d", ROI_FLOW):  # roi_flow ignores every network knob
            raise ConfigError(f"{where}.fuse applies to backbone i3d only; set fuse: false for {self.backbone}.")
        if self.space_to_depth and not self.fuse:
            raise ConfigError(f"{where}.space_to_depth rewrites the fused i3d model's stem; set fuse: true too.")
        RoiParams.from_params(self.roi, where=f"{where}.roi")  # unknown keys and bad values refused

    @property
    def roi_params(self) -> RoiParams:
        """The ``roi`` mapping as :class:`RoiParams` (defaults filled in)."""
        return RoiParams.from_params(self.roi)

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
        """The params that determine the features' values (what the per-video digest hashes).

        For the networks: every key but the operational ones (and ``roi``, which they do
        not read), the LATER ones only when set. For roi_flow: ``backbone``, ``clip``,
        ``stride`` and the whole ``roi`` mapping, defaults filled in, and ``flow_quantize``
        with ``flow_bound`` when it is not ``none``. Either is a valid
        ``features`` section (stored as the files' ``m2es_params``, which ``m2es spot`` reads back).
        """
        if self.backbone == ROI_FLOW:
            ident = {"backbone": self.backbone, "clip": self.clip, "stride": self.stride,
                     "roi": self.roi_params.as_params()}
            if self.flow_quantize != self.LATER["flow_quantize"]:
                ident.update(flow_quantize=self.flow_quantize, flow_bound=self.flow_bound)
            return ident
        return {k: v for k, v in self.__dict__.items()
                if k not in self.OPERATIONAL and k != "roi" and not (k in self.LATER and v == self.LATER[k])}
