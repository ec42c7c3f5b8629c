"""The batching engine: both streams' models on one device and the loop that feeds them clips of many videos.

:class:`FeatureExtractor` takes videos in host memory (:class:`~pipeline.extract.reader.VideoInput`,
or :class:`~pipeline.extract.reader.Failed` items, passed through), moves each to the device
once, prepares it there (:mod:`pipeline.extract.prepare`) and gathers its clips into
batches of ``batch_size`` that span videos; ``inflight`` batches stay queued on the device
while the host waits for the oldest one's features and prepares the next. It yields one
:class:`VideoFeatures` per video, in input order.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from models.errors import ModelError
from models.weights import RANDOM_INIT, STREAM_CHANNELS, Backbone, load_backbone

from pipeline.core.device import resolve_device
from pipeline.errors import ConfigError
from pipeline.extract.params import STREAMS, FeaturesParams
from pipeline.extract.prepare import clip_count, clip_views, host_tensor, prepare_flow, prepare_rgb
from pipeline.extract.reader import Failed, VideoInput, VideoProbe


@dataclass
class VideoFeatures:
    """The features of one video, on the host."""

    probe: VideoProbe
    features: dict[str, np.ndarray]  # stream -> float32 [N, D]


@dataclass
class _Active:
    """A video on the device: its clip views and where its results go."""

    probe: VideoProbe
    views: dict[str, torch.Tensor] | None
    n_clips: int
    out: dict[str, np.ndarray]
    launched: int = 0
    done: int = 0


@dataclass
class _Launched:
    """A batch in flight: its device outputs and which video rows they fill."""

    feats: dict[str, torch.Tensor]
    segments: list[tuple[_Active, int, int, int]] = field(default_factory=list)  # (video, start, count, offset)


def _load(cfg: FeaturesParams, stream: str) -> Backbone:
    """The backbone of ``stream`` with its weights; a bad or missing weights file is a :class:`ConfigError`."""
    try:
        return load_backbone(cfg.backbone, stream, cfg.weights_path(stream), allow_random_init=cfg.allow_random_init,
                             seed=cfg.seed + STREAMS.index(stream))
    except ModelError as exc:  # the networks' own error: a weights path of params.yaml is the user's to fix
        raise ConfigError(str(exc)) from exc


class FeatureExtractor:
    """Both streams' models on one device, and the batching loop over many videos."""

    def __init__(self, cfg: FeaturesParams, streams: Sequence[str] = STREAMS) -> None:
        self.cfg = cfg
        self.streams = tuple(streams)
        if not self.streams or set(self.streams) - set(STREAMS):
            raise ConfigError(f"streams must be a non-empty subset of {', '.join(STREAMS)}, got {streams}.")
        self.device = resolve_device(cfg.device)
        if cfg.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"features.precision bf16 needs a GPU with bfloat16 support; "
                              f"{torch.cuda.get_device_name(self.device)} has none: use fp32 or tf32.")
        self.dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        self.memory_format = torch.channels_last_3d if cfg.channels_last else torch.contiguous_format
        self.backbones: dict[str, Backbone] = {}
        self._fns: dict[str, Any] = {}
        for stream in self.streams:
            bb = _load(cfg, stream)
            model = bb.model.eval()
            if cfg.fuse:
                model = model.fused_for_inference(space_to_depth=cfg.space_to_depth)
            model = model.to(self.device, memory_format=self.memory_format)
            self.backbones[stream] = bb
            fn = model.features
            if cfg.compile:
                fn = torch.compile(fn, dynamic=False)
            self._fns[stream] = fn
        self.dim = self.backbones[self.streams[0]].dim
        self.host_seconds: dict[str, float] = {}  # where the last run()'s host thread spent its time

    def subset(self, streams: Sequence[str]) -> "FeatureExtractor":
        """The same loaded (and compiled) models, running only ``streams``."""
        if not streams or set(streams) - set(self.streams):
            raise ConfigError(f"streams must be a non-empty subset of {', '.join(self.streams)}, got {streams}.")
        other = copy.copy(self)
        other.streams = tuple(streams)
        return other

    def with_options(self, **changes: Any) -> "FeatureExtractor":
        """The same loaded (and compiled) models under other run options that leave the features unchanged.

        Allowed: ``inflight`` and the reader's ``prefetch``, ``read_threads``, ``read_workers``
        (``batch_size`` is not: a compiled model is specialised to its batch shape).
        """
        allowed = {"inflight", "prefetch", "read_threads", "read_workers"}
        if set(changes) - allowed:
            raise ConfigError(f"with_options takes {', '.join(sorted(allowed))}; got {', '.join(sorted(changes))}.")
        other = copy.copy(self)
        other.cfg = replace(self.cfg, **changes)
        return other

    def provenance(self) -> dict[str, Any]:
        """Attributes describing how the features were made (stored in every output file)."""
        attrs: dict[str, Any] = {
            "backbone": self.cfg.backbone, "dim": self.dim, "dim_concat": self.dim * len(self.streams),
            "streams": list(self.streams), "clip": self.cfg.clip, "stride": self.cfg.stride,
            "input_size": self.cfg.input_size, "flow_bound": self.cfg.flow_bound,
            "flow_quantize": self.cfg.flow_quantize,
            "precision": self.cfg.precision, "channels_last": self.cfg.channels_last, "fuse": self.cfg.fuse,
            "space_to_depth": self.cfg.space_to_depth,
            "compile": self.cfg.compile, "device": str(self.device),
        }
        for stream, bb in self.backbones.items():
            attrs[f"weights_{stream}"] = bb.weights
            attrs[f"weights_{stream}_path"] = bb.path or ""
            if bb.weights == RANDOM_INIT:
                attrs[f"seed_{stream}"] = bb.seed
        return attrs

    @contextmanager
    def _inference(self) -> Iterator[None]:
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if self.device.type == "cuda":
                stack.enter_context(torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False,
                                                               allow_tf32=self.cfg.precision == "tf32"))
            if self.cfg.precision == "bf16":
                stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
            yield

    def _to_device(self, item: VideoInput) -> _Active:
        cfg, dev = self.cfg, self.device
        for stream, array in (("rgb", item.frames), ("flow", item.flow)):
            if stream in self.streams and array is None:
                raise ValueError(f"{item.probe.video}: no {stream} array was read, but the extractor runs the "
                                 f"{stream} stream (read the video with streams={self.streams}).")
        n = clip_count(item.probe.n_frames, cfg.clip, cfg.stride)
        views: dict[str, torch.Tensor] = {}
        if "rgb" in self.streams:
            src = host_tensor(item.frames, np.uint8)
            src = src.to(dev, non_blocking=src.is_pinned())
            views["rgb"] = clip_views(prepare_rgb(src, cfg.input_size, self.dtype, cfg.resize_antialias),
                                      cfg.clip, cfg.stride)[:n]
        if "flow" in self.streams:
            levels = item.flow.dtype == (torch.uint8 if isinstance(item.flow, torch.Tensor) else np.uint8)
            src = host_tensor(item.flow, np.uint8 if levels else np.float16)  # levels: flow_quantize jpeg
            src = src.to(dev, non_blocking=src.is_pinned())
            views["flow"] = clip_views(prepare_flow(src, cfg.input_size, cfg.flow_bound, self.dtype,
                                                    cfg.resize_antialias), cfg.clip, cfg.stride)[:n]
        out = {s: np.empty((n, self.dim), np.float32) for s in self.streams}
        return _Active(item.probe, views, n, out)

    def _launch(self, segments: list[tuple[_Active, int, int, int]], rows: int) -> _Launched:
        cfg = self.cfg
        # Always a full batch (zero rows past ``rows``): kernels chosen per batch shape would otherwise
        # make a video's features depend on which videos share its batches, and a resumed run would
        # differ from an uninterrupted one in the last bits. Fixed shapes also suit torch.compile.
        size = cfg.batch_size
        feats = {}
        for stream in self.streams:
            channels = STREAM_CHANNELS[stream]
            x = torch.empty((size, channels, cfg.clip, cfg.input_size, cfg.input_size), dtype=self.dtype,
                            device=self.device, memory_format=self.memory_format)
            if size > rows:
                x[rows:].zero_()
            for active, start, count, offset in segments:
                x[offset:offset + count].copy_(active.views[stream][start:start + count])
            feats[stream] = self._fns[stream](x)[:rows]
        return _Launched(feats, segments)

    @staticmethod
    def _land(launched: _Launched) -> None:
        host = {s: f.float().cpu().numpy() for s, f in launched.feats.items()}
        for active, start, count, offset in launched.segments:
            for s, arr in host.items():
                active.out[s][start:start + count] = arr[offset:offset + count]
            active.done += count

    def run(self, inputs: Iterable[VideoInput | Failed]) -> Iterator[VideoFeatures | Failed]:
        """Features of every input video, in input order; :class:`Failed` items pass through.

        Batches of ``batch_size`` clips span video boundaries. A video with no clip
        yields empty [0, D] arrays.
        """
        it = iter(inputs)
        exhausted = False
        active: deque[_Active] = deque()
        inflight: deque[_Launched] = deque()  # batches queued on the device, oldest first
        B = self.cfg.batch_size
        # seconds the host thread spent waiting for the reader, moving and preparing videos, enqueuing
        # batches, and waiting for the device's results (benchmarks/bench_features.py reports them)
        spent = self.host_seconds = {"reader": 0.0, "to_device": 0.0, "launch": 0.0, "device_wait": 0.0}
        clock = time.perf_counter
        with self._inference():
            while True:
                while not exhausted and sum(a.n_clips - a.launched for a in active) < B:
                    t = clock()
                    item = next(it, None)
                    spent["reader"] += clock() - t
                    if item is None:
                        exhausted = True
                    elif isinstance(item, Failed):
                        yield item
                    else:
                        t = clock()
                        try:
                            prepared: _Active | Failed = self._to_device(item)
                        except torch.OutOfMemoryError as exc:
                            prepared = Failed(item.probe.video, f"out of device memory preparing it ({exc}); "
                                                                "lower features.batch_size or run on a larger card")
                        spent["to_device"] += clock() - t
                        if isinstance(prepared, Failed):
                            yield prepared
                        else:
                            active.append(prepared)
                segments, rows = [], 0
                for a in active:
                    if rows >= B:
                        break
                    count = min(a.n_clips - a.launched, B - rows)
                    if count > 0:
                        segments.append((a, a.launched, count, rows))
                        a.launched += count
                        rows += count
                if rows:
                    t = clock()
                    inflight.append(self._launch(segments, rows))
                    spent["launch"] += clock() - t
                for a, _, _, _ in segments:
                    if a.launched == a.n_clips:
                        a.views = None  # its clips are all queued; the device may reuse the memory
                # keep ``inflight`` batches queued while the host prepares the next one; drain at the end
                keep = self.cfg.inflight if rows else 0
                while len(inflight) > keep:
                    t = clock()
                    self._land(inflight.popleft())
                    spent["device_wait"] += clock() - t
                while active and active[0].launched == active[0].n_clips and active[0].done == active[0].n_clips:
                    done = active.popleft()
                    yield VideoFeatures(done.probe, done.out)
                if exhausted and not active and not inflight:
                    return

    def extract(self, item: VideoInput) -> dict[str, np.ndarray]:
        """Features of one video in memory: stream -> float32 [N, D]."""
        for result in self.run([item]):
            if isinstance(result, VideoFeatures):
                return result.features
        raise AssertionError("unreachable: run() yields one result per input")
