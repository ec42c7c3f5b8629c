"""Stage ``features``: I3D RGB and flow features per clip, from the face crops and the flow.

Reads ``data/<ds>/faces/<video>.h5`` (``frames`` uint8 [T, H, W, C]) and
``data/<ds>/flow/<video>.h5`` (``flow`` float16 [T-1, H, W, 2]) and writes
``data/<ds>/features/<video>.h5`` with ``rgb`` and ``flow`` float32 [N, D].

The published recipe, point by point (each a parameter where it can vary):

* crops resized to ``input_size`` (224) when they are not already that size (bilinear,
  antialiased when shrinking; flow values are resized like the flow images of the
  published tooling, i.e. not rescaled);
* RGB scaled to [-1, 1] (``x / 127.5 - 1``); grayscale replicated to 3 channels;
* flow clipped to ±``flow_bound`` px (15) and divided by it, before resizing;
* clips of ``clip`` (8) frames every ``stride`` (2) frames; the last RGB frame is dropped
  so RGB and flow give the same count N = (T - 1 - clip) // stride + 1; clip i covers
  frames [stride*i, stride*i + clip) and flow fields [stride*i, stride*i + clip);
* per clip the ``Mixed_5c`` output averaged over time and space (1024 per stream for the
  Inception I3D, 2048 for ``i3d_r50``).

How it runs: one process; a reader thread reads whole videos ahead of the model, their
HDF5 chunks read and decompressed by a thread pool (``read_threads``) straight into
page-locked memory on CUDA; each video moves to the device once (uint8 frames,
float16 flow) and is normalised and resized there once per frame; clips are strided
views (``unfold``) of that tensor, gathered into batches that span videos; ``inflight``
batches (2) stay queued on the device while the host waits for the oldest one's features
and prepares the next, so a slow moment of the host (a video's first copy, an output
file's fsync) does not leave the device idle. Fast-path options (``precision: bf16``,
``channels_last``, ``fuse``, ``space_to_depth``, ``compile``) are checked against the
plain fp32 path in tests.

A video with fewer than ``clip + 1`` frames has no clip: it gets no features file and a
row in ``data/<ds>/features/skipped.csv`` (video, n_frames, reason), which later stages
read to know it was left out on purpose.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import logging
import multiprocessing as mp
import queue
import threading
import time
from collections import deque
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models.weights import BACKBONES, RANDOM_INIT, STREAM_CHANNELS, Backbone, load_backbone

from pipeline.core.device import resolve_device
from pipeline.errors import ConfigError, InputError, M2esError, StageFailed
from pipeline.io.h5chunks import decode_threads, read_dataset
from pipeline.io.h5io import atomic_h5, file_digest, remove_partials, remove_stale
from pipeline.core.params import check_keys, digest
from pipeline.core.runner import VideoTask, pending
from pipeline.core.stage import StageContext, stage_main
from pipeline.io.tables import read_videos, write_table

log = logging.getLogger(__name__)

VERSION = 1
STREAMS: tuple[str, ...] = ("rgb", "flow")
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")
SKIPPED_FILE = "skipped.csv"
SKIPPED_COLUMNS = ["video", "n_frames", "reason"]
_TORCH_DTYPES = {np.uint8: torch.uint8, np.float16: torch.float16}
PREPARE_CHUNK = 256  # frames normalised/resized at a time on the device (bounds fp32 scratch memory)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class FeatureConfig:
    """The ``features`` params section, validated. See ``params.yaml`` for each key."""

    backbone: str = "i3d"
    weights_rgb: str | None = None
    weights_flow: str | None = None
    allow_random_init: bool = False
    seed: int = 0
    input_size: int = 224
    clip: int = 8
    stride: int = 2
    flow_bound: float = 15.0
    resize_antialias: bool = True
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    fuse: bool = False
    space_to_depth: bool = False
    compile: bool = False
    batch_size: int = 64
    inflight: int = 2
    prefetch: int = 2
    read_threads: int = 0
    read_workers: int = 0

    # Keys that change how fast, not what: left out of the per-video digest.
    # Weights enter the digest by their SHA-256, not their path.
    OPERATIONAL = ("device", "batch_size", "inflight", "prefetch", "read_threads", "read_workers", "compile",
                   "weights_rgb", "weights_flow")
    # Keys added after outputs existed: in the digest only when set, so older outputs keep theirs.
    LATER = {"space_to_depth": False}

    @classmethod
    def from_params(cls, section: Mapping[str, Any], where: str = "params.yaml: features") -> "FeatureConfig":
        """Build from the params section (``weights: {rgb, flow}`` nested); unknown keys are refused."""
        section = dict(section or {})
        weights = section.pop("weights", None) or {}
        if not isinstance(weights, Mapping) or set(weights) - set(STREAMS):
            raise ConfigError(f"{where}.weights must be a mapping with keys rgb and flow (paths or null).")
        check_keys(section, {f.name for f in fields(cls)} - {"weights_rgb", "weights_flow"} | {"weights"}, where)
        try:
            cfg = cls(weights_rgb=weights.get("rgb") or None, weights_flow=weights.get("flow") or None,
                      **{k: v for k, v in section.items()})
            cfg = cls(**{**cfg.__dict__, "seed": int(cfg.seed), "input_size": int(cfg.input_size),
                         "clip": int(cfg.clip), "stride": int(cfg.stride), "flow_bound": float(cfg.flow_bound),
                         "batch_size": int(cfg.batch_size), "inflight": int(cfg.inflight),
                         "prefetch": int(cfg.prefetch), "read_threads": int(cfg.read_threads),
                         "read_workers": int(cfg.read_workers)})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: bad value ({exc}).") from exc
        if cfg.backbone not in BACKBONES:
            raise ConfigError(f"{where}.backbone '{cfg.backbone}' is not one of {', '.join(BACKBONES)}.")
        if cfg.precision not in PRECISIONS:
            raise ConfigError(f"{where}.precision '{cfg.precision}' is not one of {', '.join(PRECISIONS)}.")
        for key, low in (("input_size", 32), ("clip", 1), ("stride", 1), ("batch_size", 1), ("inflight", 1),
                         ("prefetch", 1), ("read_threads", 0), ("read_workers", 0)):
            if getattr(cfg, key) < low:
                raise ConfigError(f"{where}.{key} must be at least {low}, got {getattr(cfg, key)}.")
        if cfg.flow_bound <= 0:
            raise ConfigError(f"{where}.flow_bound must be positive, got {cfg.flow_bound}.")
        if cfg.fuse and cfg.backbone != "i3d":
            raise ConfigError(f"{where}.fuse applies to backbone i3d only; set fuse: false for {cfg.backbone}.")
        if cfg.space_to_depth and not cfg.fuse:
            raise ConfigError(f"{where}.space_to_depth rewrites the fused i3d model's stem; set fuse: true too.")
        return cfg

    def weights(self, stream: str) -> str | None:
        """The weights path of ``stream`` (None: not set)."""
        return self.weights_rgb if stream == "rgb" else self.weights_flow

    def identity(self) -> dict[str, Any]:
        """The params that determine the features' values (what the per-video digest hashes)."""
        return {k: v for k, v in self.__dict__.items()
                if k not in self.OPERATIONAL and not (k in self.LATER and v == self.LATER[k])}


def clip_count(n_frames: int, clip: int = 8, stride: int = 2) -> int:
    """Clips in a video of ``n_frames`` frames: (T - 1 - clip) // stride + 1, or 0 when T - 1 < clip."""
    usable = n_frames - 1
    return 0 if usable < clip else (usable - clip) // stride + 1


# --------------------------------------------------------------------------- reading


@dataclass
class VideoProbe:
    """What the stage knows about a video before reading its frames."""

    video: str
    faces: Path
    flow: Path
    n_frames: int
    height: int
    width: int
    channels: int
    faces_digest: str
    flow_digest: str


@dataclass
class VideoInput:
    """A video's frames and flow in host memory, ready for the device."""

    probe: VideoProbe
    frames: np.ndarray | torch.Tensor | None  # uint8 [T, H, W, C] (a tensor when pinned); None: rgb not read
    flow: np.ndarray | torch.Tensor | None  # float16 [T-1, H, W, 2]; None: flow not read


@dataclass
class Failed:
    """A video that could not be processed, and why (one line)."""

    video: str
    reason: str


def probe_video(video: str, faces_path: str | Path, flow_path: str | Path) -> VideoProbe:
    """Check the faces and flow files of ``video`` against each other without reading pixels.

    Raises :class:`InputError` naming the file and the fix when a file is missing,
    incomplete, lacks its dataset, or when faces and flow disagree in length or size.
    """
    faces_path, flow_path = Path(faces_path), Path(flow_path)
    for path, stage in ((faces_path, "crop"), (flow_path, "flow")):
        if not path.is_file():
            raise InputError(f"{path}: {stage} output for video '{video}' not found. Run `dvc repro {stage}` "
                             "(or the crop/flow stages) for this dataset first.")
    faces_digest, flow_digest = file_digest(faces_path), file_digest(flow_path)
    for path, d, stage in ((faces_path, faces_digest, "crop"), (flow_path, flow_digest, "flow")):
        if d is None:
            raise InputError(f"{path}: incomplete or unreadable {stage} output for video '{video}'. "
                             f"Delete it and rerun the {stage} stage.")
    with h5py.File(faces_path, "r") as f:
        if "frames" not in f:
            raise InputError(f"{faces_path}: no 'frames' dataset for video '{video}'. Rerun the crop stage.")
        fshape, fdtype = f["frames"].shape, f["frames"].dtype
    with h5py.File(flow_path, "r") as f:
        if "flow" not in f:
            raise InputError(f"{flow_path}: no 'flow' dataset for video '{video}'. Rerun the flow stage.")
        oshape = f["flow"].shape
    if len(fshape) != 4 or fshape[3] not in (1, 3) or fdtype != np.uint8:
        raise InputError(f"{faces_path}: 'frames' of video '{video}' is {fdtype} {tuple(fshape)}; expected uint8 "
                         "[T, H, W, C] with C 3 (RGB) or 1 (grayscale). Rerun the crop stage.")
    if len(oshape) != 4 or oshape[3] != 2:
        raise InputError(f"{flow_path}: 'flow' of video '{video}' has shape {tuple(oshape)}; expected "
                         "[T-1, H, W, 2]. Rerun the flow stage.")
    t, h, w, c = (int(v) for v in fshape)
    if oshape[0] != t - 1 and t > 0:
        raise InputError(f"{flow_path}: video '{video}' has {oshape[0]} flow fields but {faces_path} has {t} frames "
                         f"(expected {t - 1} fields). The flow is stale: rerun the flow stage for this video.")
    if tuple(oshape[1:3]) != (h, w):
        raise InputError(f"{flow_path}: flow of video '{video}' is {oshape[1]}x{oshape[2]} but its faces in "
                         f"{faces_path} are {h}x{w}. The flow is stale: rerun the flow stage for this video.")
    return VideoProbe(video, faces_path, flow_path, t, h, w, c, faces_digest, flow_digest)


def _read_array(dset: h5py.Dataset, dtype: type, pool: cf.Executor | None, pin: bool) -> np.ndarray | torch.Tensor:
    """The whole dataset as ``dtype``; with ``pin`` decoded straight into page-locked memory (a tensor)."""
    if dset.dtype != dtype:  # not the stages' dtype (e.g. float32 flow): read, then convert
        array = read_dataset(dset, pool=pool).astype(dtype)
        return torch.from_numpy(array).pin_memory() if pin else array
    if not pin:
        return read_dataset(dset, pool=pool)
    tensor = torch.empty(dset.shape, dtype=_TORCH_DTYPES[dtype], pin_memory=True)  # cached by torch's host allocator
    read_dataset(dset, out=tensor.numpy(), pool=pool)
    return tensor


def read_video(probe: VideoProbe, pool: cf.Executor | None = None, pin: bool = False,
               streams: Sequence[str] = STREAMS) -> VideoInput:
    """Read the frames (uint8) and flow (float16) of a probed video, whole, exactly as stored.

    Chunks are read and decompressed in ``pool``'s threads when given (see
    :func:`pipeline.io.h5chunks.read_dataset`); with ``pin`` (CUDA only) the arrays are
    decoded straight into page-locked tensors, ready for an asynchronous copy to the GPU.
    No conversion happens on the host: frames go to the device as uint8, flow as float16.
    Only the arrays of ``streams`` are read (the other is None).
    """
    frames = flow = None
    if "rgb" in streams:
        with h5py.File(probe.faces, "r") as f:
            frames = _read_array(f["frames"], np.uint8, pool, pin)
        if frames.shape[0] != probe.n_frames:
            raise InputError(f"{probe.faces}: video '{probe.video}' changed while being read; rerun the stage.")
    if "flow" in streams:
        with h5py.File(probe.flow, "r") as f:
            flow = _read_array(f["flow"], np.float16, pool, pin)
        if flow.shape[0] != probe.n_frames - 1:
            raise InputError(f"{probe.flow}: video '{probe.video}' changed while being read; rerun the stage.")
    return VideoInput(probe, frames, flow)


def _read_or_fail(probe: VideoProbe, pool: cf.Executor | None = None, pin: bool = False,
                  streams: Sequence[str] = STREAMS) -> VideoInput | Failed:
    try:
        return read_video(probe, pool, pin, streams)
    except M2esError as exc:
        return Failed(probe.video, str(exc))
    except (OSError, KeyError, ValueError) as exc:
        return Failed(probe.video, f"{probe.faces} / {probe.flow}: cannot read ({exc}). Rerun crop and flow.")


def reader_pool(workers: int) -> cf.ProcessPoolExecutor:
    """A pool of reader processes (spawned: safe next to CUDA and torch threads)."""
    return cf.ProcessPoolExecutor(max(1, workers), mp_context=mp.get_context("spawn"))


class PrefetchReader:
    """Iterate over videos read ahead by a background thread.

    At most ``prefetch`` videos wait in memory. The thread reads one video at a time,
    its HDF5 chunks read and decompressed by a pool of ``threads`` threads (0: one per
    core, at most 16; Blosc, deflate and unfiltered chunks decode in parallel, other
    filters in h5py). With ``workers`` > 0 whole videos are read in a process pool
    instead, order kept (slower: every array is pickled back). Read errors come out as
    :class:`Failed` items. With ``pin`` the arrays land in page-locked tensors in the
    thread, so the host-to-device copy is asynchronous and pinning costs the device loop
    nothing. Only the arrays of ``streams`` are read. Use as a context manager.
    """

    _END = object()

    def __init__(self, probes: Sequence[VideoProbe], prefetch: int = 2, workers: int = 0, pin: bool = False,
                 pool: cf.ProcessPoolExecutor | None = None, threads: int = 0,
                 streams: Sequence[str] = STREAMS) -> None:
        self.probes = list(probes)
        self.streams = tuple(streams)
        self.prefetch = max(1, prefetch)
        self.workers = workers
        self.threads = decode_threads(threads)
        self.pin = pin
        self.pool = pool  # reused across readers when given (spawning workers costs seconds)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="features-reader", daemon=True)

    def __enter__(self) -> "PrefetchReader":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def _put(self, item: Any) -> bool:
        if self.pin and isinstance(item, VideoInput):  # arrays from reader processes: pin them here
            item = VideoInput(item.probe, *(a if a is None or isinstance(a, torch.Tensor)
                                            else torch.from_numpy(np.ascontiguousarray(a)).pin_memory()
                                            for a in (item.frames, item.flow)))
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            if self.workers > 0 or self.pool is not None:
                with ExitStack() as stack:
                    pool = self.pool or stack.enter_context(reader_pool(self.workers))
                    futures: deque[cf.Future] = deque()
                    it = iter(self.probes)
                    for probe in it:
                        futures.append(pool.submit(_read_or_fail, probe, None, False, self.streams))
                        if len(futures) >= self.workers + self.prefetch:
                            break
                    while futures:
                        item = futures.popleft().result()
                        nxt = next(it, None)
                        if nxt is not None:
                            futures.append(pool.submit(_read_or_fail, nxt, None, False, self.streams))
                        if not self._put(item):
                            for fut in futures:
                                fut.cancel()
                            return
            else:
                with cf.ThreadPoolExecutor(self.threads, thread_name_prefix="features-chunks") as chunks:
                    for probe in self.probes:
                        if not self._put(_read_or_fail(probe, chunks, self.pin, self.streams)):
                            return
        except BaseException as exc:  # noqa: BLE001 - surfaced to the consumer, not lost in the thread
            self._put(exc)
        finally:
            self._put(self._END)

    def __iter__(self) -> Iterator[VideoInput | Failed]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


# --------------------------------------------------------------------------- device-side preparation


def _resize_frames(x: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    """Resize [T, H, W, C] float frames to [T, size, size, C] (bilinear)."""
    if x.shape[1] == size and x.shape[2] == size:
        return x
    y = F.interpolate(x.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False,
                      antialias=antialias and (x.shape[1] > size or x.shape[2] > size))
    return y.permute(0, 2, 3, 1)


def prepare_rgb(frames: torch.Tensor, size: int, dtype: torch.dtype = torch.float32,
                antialias: bool = True, chunk: int = PREPARE_CHUNK) -> torch.Tensor:
    """uint8 frames [T, H, W, C] -> model input frames [T-1, size, size, 3] in [-1, 1].

    The last frame is dropped (RGB and flow then give the same clip count); grayscale
    (C = 1) is replicated to 3 channels; work is done in float32 ``chunk`` frames at a time.
    """
    n = frames.shape[0] - 1
    out = torch.empty((max(n, 0), size, size, 3), dtype=dtype, device=frames.device)
    for a in range(0, n, chunk):
        x = frames[a:min(a + chunk, n)].float().mul_(1.0 / 127.5).sub_(1.0)
        if x.shape[-1] == 1:
            x = x.expand(-1, -1, -1, 3)
        out[a:a + x.shape[0]] = _resize_frames(x, size, antialias)
    return out


def prepare_flow(flow: torch.Tensor, size: int, bound: float = 15.0, dtype: torch.dtype = torch.float32,
                 antialias: bool = True, chunk: int = PREPARE_CHUNK) -> torch.Tensor:
    """Flow fields [T-1, H, W, 2] (pixels) -> [T-1, size, size, 2] clipped to ±bound, divided by bound."""
    n = flow.shape[0]
    out = torch.empty((n, size, size, 2), dtype=dtype, device=flow.device)
    for a in range(0, n, chunk):
        x = flow[a:a + chunk].float().clamp_(-bound, bound).div_(bound)
        out[a:a + x.shape[0]] = _resize_frames(x, size, antialias)
    return out


def clip_views(x: torch.Tensor, clip: int, stride: int) -> torch.Tensor:
    """Strided clip views [N, C, clip, H, W] of prepared frames [T, H, W, C] (no copy)."""
    if x.shape[0] < clip:
        return x.new_empty((0, x.shape[3], clip, x.shape[1], x.shape[2]))
    return x.unfold(0, clip, stride).permute(0, 3, 4, 1, 2)


# --------------------------------------------------------------------------- extraction


def _host_tensor(array: np.ndarray | torch.Tensor, dtype: type) -> torch.Tensor:
    """A host tensor of ``array`` (kept as is when it is already a tensor, e.g. pinned)."""
    if isinstance(array, torch.Tensor):
        return array
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))


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


class FeatureExtractor:
    """Both streams' models on one device, and the batching loop over many videos."""

    def __init__(self, cfg: FeatureConfig, streams: Sequence[str] = STREAMS) -> None:
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
        for i, stream in enumerate(self.streams):
            bb = load_backbone(cfg.backbone, stream, cfg.weights(stream), allow_random_init=cfg.allow_random_init,
                               seed=cfg.seed + STREAMS.index(stream))
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
            src = _host_tensor(item.frames, np.uint8)
            src = src.to(dev, non_blocking=src.is_pinned())
            views["rgb"] = clip_views(prepare_rgb(src, cfg.input_size, self.dtype, cfg.resize_antialias),
                                      cfg.clip, cfg.stride)[:n]
        if "flow" in self.streams:
            src = _host_tensor(item.flow, np.float16)
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


# --------------------------------------------------------------------------- the stage


def video_digest(cfg: FeatureConfig, probe: VideoProbe, weights: Mapping[str, str]) -> str:
    """Identity of one output: features params, both inputs' digests, the weights' SHA-256, code version."""
    return digest({"stage": cfg.identity(), "inputs": {"faces": probe.faces_digest, "flow": probe.flow_digest},
                   "weights": dict(weights), "version": VERSION})


def weights_identity(cfg: FeatureConfig) -> dict[str, str]:
    """SHA-256 of each stream's weights file, or ``random-init:<seed>`` (before loading models)."""
    out = {}
    for stream in STREAMS:
        path = cfg.weights(stream)
        if path and Path(path).is_file():
            from models.weights import sha256_file

            out[stream] = sha256_file(path)
        elif path:
            raise ConfigError(f"{path}: weights file for the {stream} stream not found (features.weights.{stream}). "
                              "Download it or fix the path.")
        else:
            out[stream] = f"{RANDOM_INIT}:{cfg.seed + STREAMS.index(stream)}"
    return out


def write_features(path: Path, result: VideoFeatures, video_digest_: str, cfg: FeatureConfig,
                   provenance: Mapping[str, Any]) -> None:
    """Write one video's features file atomically (``rgb``, ``flow`` float32 [N, D] + attrs)."""
    from pipeline.io.h5io import write_attrs

    with atomic_h5(path, video_digest_, cfg.identity()) as f:
        for stream, arr in result.features.items():
            f.create_dataset(stream, data=arr.astype(np.float32, copy=False))
        write_attrs(f, dict(provenance))
        write_attrs(f, {"video": result.probe.video, "n_frames": result.probe.n_frames,
                        "n_clips": int(next(iter(result.features.values())).shape[0]),
                        "faces_digest": result.probe.faces_digest, "flow_digest": result.probe.flow_digest})


def list_videos(ctx: StageContext) -> list[str]:
    """The videos of the dataset: ``resample/videos.csv`` order."""
    return [str(v) for v in read_videos(ctx.paths.resample / "videos.csv")["video"]]


def run(ctx: StageContext) -> None:
    """Compute features for every video of the dataset that lacks an up-to-date file."""
    cfg = FeatureConfig.from_params(ctx.section())
    out_dir = ctx.paths.features
    out_dir.mkdir(parents=True, exist_ok=True)
    removed = remove_partials(out_dir)
    if removed:
        log.info("features: removed %d partial file(s) of an interrupted run", removed)
    videos = list_videos(ctx)
    stale = remove_stale(out_dir, set(videos))
    if stale:
        log.info("features: removed %d output(s) of videos no longer in the tables: %s", len(stale),
                 ", ".join(stale))
    failures: dict[str, str] = {}
    skipped: list[dict[str, Any]] = []
    probes: list[VideoProbe] = []
    for video in videos:
        try:
            probe = probe_video(video, ctx.paths.h5(ctx.paths.faces, video), ctx.paths.h5(ctx.paths.flow, video))
        except M2esError as exc:
            failures[video] = str(exc)
            continue
        if clip_count(probe.n_frames, cfg.clip, cfg.stride) == 0:
            reason = f"{probe.n_frames} frames, fewer than clip + 1 = {cfg.clip + 1}: no clip"
            log.warning("features: %s skipped (%s)", video, reason)
            skipped.append({"video": video, "n_frames": probe.n_frames, "reason": reason})
            stale = ctx.paths.h5(out_dir, video)
            if stale.exists():
                stale.unlink()
            continue
        probes.append(probe)
    write_table(pd.DataFrame(skipped, columns=SKIPPED_COLUMNS), out_dir / SKIPPED_FILE)

    weights = weights_identity(cfg)
    tasks = [VideoTask(p.video, ctx.paths.h5(out_dir, p.video), video_digest(cfg, p, weights), {"probe": p})
             for p in probes]
    todo, done = pending(tasks)
    if done:
        log.info("features: %d of %d videos already complete, skipped", len(done), len(tasks))
    if todo:
        extractor = FeatureExtractor(cfg)
        provenance = extractor.provenance()
        by_video = {t.video: t for t in todo}
        n_clips = sum(clip_count(t.payload["probe"].n_frames, cfg.clip, cfg.stride) for t in todo)
        log.info("features: %d videos, %d clips per stream on %s (%s)", len(todo), n_clips, extractor.device,
                 cfg.precision)
        with PrefetchReader([t.payload["probe"] for t in todo], cfg.prefetch, cfg.read_workers,
                            pin=extractor.device.type == "cuda", threads=cfg.read_threads,
                            streams=extractor.streams) as reader, \
                tqdm(total=n_clips, desc="features", unit="clip") as bar:
            for result in extractor.run(reader):
                if isinstance(result, Failed):
                    failures[result.video] = result.reason
                    log.error("features: %s failed: %s", result.video, result.reason)
                    continue
                task = by_video[result.probe.video]
                write_features(task.output, result, task.digest, cfg, provenance)
                bar.update(result.features[STREAMS[0]].shape[0])
                if failures and ctx.parallel.fail_fast:
                    break
    if skipped:
        log.warning("features: %d video(s) too short, listed in %s", len(skipped), out_dir / SKIPPED_FILE)
    if failures:
        raise StageFailed("features", failures)


main = stage_main("features", run)

if __name__ == "__main__":
    raise SystemExit(main())
