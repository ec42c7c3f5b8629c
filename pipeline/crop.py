"""Stage ``crop``: decode the kept frames of every video, find the face, write face crops.

``python -m pipeline.crop --dataset NAME`` reads ``data/<ds>/resample/{videos,frames}.csv``
and writes ``data/<ds>/faces/<video>.h5``:

* ``frames`` uint8 [T, size, size, C] (C = 3 colour, 1 grayscale), chunked along T
  (``chunk_frames``), compressed by ``compression``: ``blosc-lz4`` by default, the Blosc
  HDF5 filter (32001) with bit-shuffle and LZ4 (see :mod:`pipeline.io.h5chunks`). Blosc
  and gzip chunks are compressed in the decode threads (both codecs release the GIL) and
  stored with HDF5's direct chunk write, in the filter's own format, so any HDF5 reader
  with the filter decodes them (h5py: ``import hdf5plugin``; :mod:`pipeline.io.h5io` does
  it for the project). Measured on 224 px crops of noisy 640x480 colour JPEGs
  (``benchmarks/RESULTS.md``): ``blosc-lz4`` stores them 17% smaller than ``none`` /
  12% smaller than ``lzf``, and the stage runs at 0.96x its rate with ``none``, against
  0.62x with h5py's serial lzf filter; ``blosc-zstd`` is 6% smaller again (smaller than
  gzip) at 0.87x; ``lzf`` (h5py only, serial) and ``gzip`` (any HDF5 build, 0.41x) remain.
  One thread-pool task per storage chunk decodes its frames, crops and compresses them;
  the main thread only stores whole chunks in order;
* ``boxes`` int32 [T, 4] the crop box of each frame [x0, y0, x1, y1) in pixels of the
  reference frame's full size; ``source_frames`` int64 [T] the dataset's frame numbers;
* attrs: video, subject, fps, size, channels, detector, mode, box, landmarks (the
  reference frame's 68 points), reference_frame, reference_source_frame, frame_shape,
  decode_reduction, outside_fraction, mixed_size_frames, repeated_frames,
  track_keyframes, short, plus ``m2es_params`` (the crop params) and ``m2es_digest``.

JPEG frames are decoded only around each frame's box (``region_decode``, libjpeg-turbo
through :mod:`pipeline.io.jpeg_region`: the rows above and below it and the columns beside it
are not converted, the rows below are not read), at 1/2, 1/4 or 1/8 of their size when
the box stays at least ``size`` pixels (``reduced_decode``); the crops are the ones a
whole-frame decode gives, pixel for pixel (checked once per process on test JPEGs,
:func:`pipeline.io.decode.region_decoder_agrees`; where it fails, whole frames are decoded).

The box is found once per video on a reference frame (``mode: fixed``, the default: a
per-frame box jitters and the jitter is false motion for the optical flow), or, with
``mode: track``, re-detected every ``track_every`` frames and moved only when the head
really moved (see :func:`pipeline.cropping.finder.plan_track_boxes`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from pipeline.io.decode import BadFrameError, FrameSource, choose_reduction, open_source, region_decoder_agrees
from pipeline.errors import ConfigError, InputError, NoFaceFound
from pipeline.cropping.finder import Detection, FaceFinder, face_box, outside_fraction, plan_track_boxes, round_box
from pipeline.io.h5chunks import CODECS, ChunkCodec
from pipeline.io.h5io import EarlyWriteback, atomic_h5, remove_partials, remove_stale, write_attrs
from pipeline.io.jpeg_region import Patch
from pipeline.core.params import check_keys, digest
from pipeline.core.runner import VideoTask, map_videos
from pipeline.core.stage import StageContext, stage_main
from pipeline.io.tables import read_frames, read_videos

log = logging.getLogger(__name__)

CROP_VERSION = 1  # bump when the output of the same params and inputs changes
# params that change how frames are decoded, not the crops (the tests compare them byte for byte),
# added after outputs existed: left out of the digest, so complete outputs stay valid either way
NOT_IN_DIGEST = ("region_decode",)

_CHOICES = {
    "detector": ("hog", "cnn"),
    "mode": ("fixed", "track"),
    "pad": ("constant", "replicate"),
    "interpolation": ("auto", "area", "linear", "cubic"),
    "on_bad_frame": ("fail", "repeat"),
    "compression": CODECS,
}
_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
_BORDER = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}


@dataclass(frozen=True)
class CropParams:
    """The ``crop`` section of params.yaml (see the comments there)."""

    size: int = 224
    detector: str = "hog"
    upsample: int = 0
    min_score: float = 0.3
    detect_max_side: int = 640
    search_frames: int = 30
    margin_top: float = 0.3
    margin_bottom: float = 0.05
    margin_side: float = 0.1
    mode: str = "fixed"
    track_every: int = 30
    track_threshold: float = 0.1
    pad: str = "constant"
    reduced_decode: bool = True
    region_decode: bool = True
    interpolation: str = "auto"
    on_bad_frame: str = "fail"
    max_repeat_fraction: float = 0.05
    min_frames: int = 9
    threads: int = 2
    batch: int = 64
    compression: str = "blosc-lz4"
    compression_level: int | None = None  # None: the codec's own (pipeline.io.h5chunks.DEFAULT_LEVELS)
    chunk_frames: int = 8
    models_dir: str | None = None

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> "CropParams":
        """Validate a params section: unknown keys and bad values raise ConfigError naming the key."""
        known = {f.name: f for f in fields(cls)}
        check_keys(section, set(known), "params.yaml: crop")
        values: dict[str, Any] = {}
        for key, value in section.items():
            default = known[key].default
            try:
                if key in ("models_dir", "compression_level") and value in (None, "", "null"):
                    values[key] = None
                elif key == "models_dir":
                    values[key] = str(value)
                elif isinstance(default, bool):
                    if not isinstance(value, bool):
                        raise ValueError("expected true or false")
                    values[key] = value
                elif isinstance(default, int) or key == "compression_level":
                    if isinstance(value, bool) or float(value) != int(value):
                        raise ValueError("expected an integer")
                    values[key] = int(value)
                elif isinstance(default, float):
                    values[key] = float(value)
                else:
                    values[key] = str(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"params.yaml: crop.{key} = {value!r} is invalid ({exc}).") from None
        p = cls(**values)
        for key, choices in _CHOICES.items():
            if getattr(p, key) not in choices:
                raise ConfigError(f"params.yaml: crop.{key} = {getattr(p, key)!r} is not one of {', '.join(choices)}.")
        positive = ("size", "search_frames", "track_every", "threads", "batch", "chunk_frames")
        for key in positive:
            if getattr(p, key) < 1:
                raise ConfigError(f"params.yaml: crop.{key} must be at least 1, got {getattr(p, key)}.")
        for key in ("upsample", "detect_max_side", "min_frames", "margin_top", "margin_bottom", "margin_side",
                    "track_threshold", "max_repeat_fraction"):
            if getattr(p, key) < 0:
                raise ConfigError(f"params.yaml: crop.{key} must not be negative, got {getattr(p, key)}.")
        if p.compression_level is not None and not 0 <= p.compression_level <= 9:
            raise ConfigError(f"params.yaml: crop.compression_level must be 0..9, got {p.compression_level}.")
        return p


@lru_cache(maxsize=2)
def _finder(detector: str, upsample: int, min_score: float, detect_max_side: int,
            models_dir: str | None) -> FaceFinder:
    """A FaceFinder per worker process and settings (loading the models takes ~1 s; they are read-only)."""
    return FaceFinder(detector, upsample, min_score, detect_max_side, models_dir)


def make_finder(p: CropParams) -> FaceFinder:
    """The face finder for these params (cached per process: dlib models are immutable)."""
    return _finder(p.detector, p.upsample, p.min_score, p.detect_max_side, p.models_dir)


# ---------------------------------------------------------------------------------- geometry

def frame_box(box: np.ndarray, ref_shape: Sequence[int], frame_shape: Sequence[int],
              reduce: int) -> tuple[np.ndarray, bool]:
    """Map a box in reference-frame pixels to a decoded frame; second value: frame size differs.

    A frame of the reference size decoded at 1/``reduce`` gets the box divided by
    ``reduce``; a frame of another size gets the box scaled proportionally per axis
    (as if that frame had been stretched to the reference size).
    """
    h, w = frame_shape[0], frame_shape[1]
    H, W = ref_shape[0], ref_shape[1]
    if (h, w) == (math.ceil(H / reduce), math.ceil(W / reduce)):
        return round_box(np.asarray(box, dtype=np.float64) / reduce), False
    sx, sy = w * reduce / W, h * reduce / H
    b = np.asarray(box, dtype=np.float64) * np.array([sx, sy, sx, sy])
    return np.round(b).astype(np.int64), True


def resize_filter(side: int, size: int, interpolation: str) -> int:
    """OpenCV filter that resizes a ``side``-pixel patch to ``size`` pixels under ``interpolation``.

    ``auto``: bilinear when shrinking by less than 2x, area averaging from 2x on. Below 2x
    every source pixel still weighs in the bilinear result, and on face crops it is as close
    to an antialiased Lanczos resize as area averaging (41-43 dB either, 224 px from 300-440
    px), at a sixth of its cost (OpenCV's area filter has no fast path for fractional
    factors: ~0.45 ms per 320-px colour patch, a third of a 640x480 JPEG decode). With
    reduced JPEG decoding the factor is under 2x whenever the box allows a reduction.
    ``area`` enlarges bilinearly (area averaging is for shrinking).
    """
    if interpolation == "auto":
        interpolation = "area" if side >= 2 * size else "linear"
    if interpolation == "area" and side < size:
        interpolation = "linear"
    return _INTERP[interpolation]


def crop_frame(frame: np.ndarray, box: np.ndarray, size: int, pad: str = "constant",
               interpolation: str = "auto", out: np.ndarray | None = None) -> np.ndarray:
    """Cut ``box`` [x0, y0, x1, y1) out of ``frame``, padding where it leaves the frame; resize to size x size.

    Returns uint8 [size, size, C] (C = 1 for a 2-D frame); ``interpolation`` as in :func:`resize_filter`.
    ``out`` (a C-contiguous [size, size, C] uint8 array, e.g. one frame of a storage chunk)
    receives the crop instead of a new array, which saves an allocation and a copy per frame.
    """
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty crop box {box}")
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(f"crop box {box} lies outside the {w}x{h} frame")
    patch = frame[cy0:cy1, cx0:cx1]
    if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
        patch = cv2.copyMakeBorder(np.ascontiguousarray(patch), cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1,
                                   _BORDER[pad], value=0)
    channels = 1 if patch.ndim == 2 else patch.shape[2]
    if out is None:
        out = np.empty((size, size, channels), dtype=np.uint8)
    elif out.shape != (size, size, channels) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous uint8 array of shape {(size, size, channels)}, "
                         f"got {out.dtype} {out.shape}")
    target = out[:, :, 0] if patch.ndim == 2 else out  # OpenCV writes 2-D images into a 2-D view
    ph, pw = patch.shape[:2]
    if (ph, pw) != (size, size):
        cv2.resize(patch, (size, size), dst=target, interpolation=resize_filter(min(ph, pw), size, interpolation))
    else:
        target[...] = patch
    return out


# --------------------------------------------------------------------------------- detection

@dataclass
class Reference:
    """The frame the face was found on."""

    position: int
    shape: tuple[int, int]
    detection: Detection
    landmarks: np.ndarray
    n_faces: int


def find_reference(source: FrameSource, finder: FaceFinder, p: CropParams, warnings: list[str]) -> Reference:
    """First of the first ``search_frames`` frames with exactly one face; else the largest of several.

    Raises InputError naming the video and the frames tried when no frame has a face.
    """
    n = min(p.search_frames, len(source))
    several: tuple[int, np.ndarray, list[Detection]] | None = None
    tried = 0
    for pos in range(n):
        try:
            frame = source.read(pos)
        except BadFrameError as exc:
            if p.on_bad_frame == "fail":
                raise InputError(f"{exc} Or set params.yaml: crop.on_bad_frame: repeat.") from None
            continue
        tried += 1
        dets = finder.detect(frame)
        if len(dets) == 1:
            return Reference(pos, frame.shape[:2], dets[0], finder.landmarks(frame, dets[0]), 1)
        if len(dets) > 1 and several is None:
            several = (pos, frame, dets)
    if several is not None:
        pos, frame, dets = several
        warnings.append(f"{len(dets)} faces in every searched frame with a face; using the largest, "
                        f"found in frame {pos} ({source.label(pos)})")
        return Reference(pos, frame.shape[:2], dets[0], finder.landmarks(frame, dets[0]), len(dets))
    raise NoFaceFound(
        f"video {source.video}: no face found in frames 0..{n - 1} ({tried} decoded; "
        f"{source.label(0)} .. {source.label(n - 1)}) by the {p.detector} detector (upsample {p.upsample}, "
        f"min_score {p.min_score}). If the face is small set params.yaml: crop.upsample: 1 or crop.detector: cnn, "
        f"if it is unusual (profile, glasses, low contrast) lower crop.min_score; "
        f"if it appears later raise crop.search_frames; otherwise drop the video from the dataset.")


def track_candidates(source: FrameSource, finder: FaceFinder, p: CropParams, ref: Reference,
                     ref_box: np.ndarray) -> tuple[list[int], list[np.ndarray | None]]:
    """Re-detect every ``track_every`` frames; the box of the face nearest the last box (ref-frame pixels)."""
    keys = list(range(0, len(source), p.track_every))
    cands: list[np.ndarray | None] = []
    last = np.asarray(ref_box, dtype=np.float64)
    H, W = ref.shape
    for pos in keys:
        try:
            frame = source.read(pos)
        except BadFrameError:
            cands.append(None)
            continue
        dets = finder.detect(frame)
        if not dets:
            cands.append(None)
            continue
        sx, sy = W / frame.shape[1], H / frame.shape[0]
        centre = np.array([(last[0] + last[2]) / 2 / sx, (last[1] + last[3]) / 2 / sy])
        det = min(dets, key=lambda d: float(np.hypot(*(d.center - centre))))
        box = face_box(finder.landmarks(frame, det), p.margin_top, p.margin_bottom, p.margin_side)
        box = box * np.array([sx, sy, sx, sy])
        cands.append(box)
        last = box
    return keys, cands


# ----------------------------------------------------------------------------------- writing

class _FrameWriter:
    """Creates ``frames`` and stores it one whole storage chunk at a time.

    Blosc and gzip chunks are compressed by :meth:`encode`, which releases the GIL and so
    runs in the decode threads, and stored with HDF5's direct chunk write (no filter runs
    in h5py); ``lzf`` and ``none`` go through h5py's own write. The disk writes start as
    the chunks come (:class:`~pipeline.io.h5io.EarlyWriteback`), not all at the final fsync.
    """

    def __init__(self, f, n: int, size: int, channels: int, p: CropParams):
        self.codec = ChunkCodec(p.compression, p.compression_level)
        self.chunk = min(p.chunk_frames, n)
        self.dset = f.create_dataset("frames", shape=(n, size, size, channels), dtype=np.uint8,
                                     chunks=(self.chunk, size, size, channels), track_times=False,
                                     **self.codec.dataset_options())
        self.writeback = EarlyWriteback(f)

    def encode(self, crops: np.ndarray) -> bytes | None:
        """The stored bytes of one chunk's crops (None for codecs h5py applies itself); thread-safe."""
        if not self.codec.threaded:
            return None
        if len(crops) < self.chunk:  # a direct chunk write needs a whole chunk
            whole = np.zeros((self.chunk,) + crops.shape[1:], dtype=np.uint8)
            whole[:len(crops)] = crops
            crops = whole
        return self.codec.compress(crops)

    def write(self, start: int, crops: np.ndarray, encoded: bytes | None = None) -> None:
        """Store the chunk that begins at frame ``start`` (``encoded``: :meth:`encode`'s result, if known)."""
        if self.codec.threaded:
            encoded = encoded if encoded is not None else self.encode(crops)
            self.dset.id.write_direct_chunk((start, 0, 0, 0), encoded)
            self.writeback.wrote(len(encoded))
        else:
            self.dset[start:start + len(crops)] = crops
            self.writeback.wrote(crops.nbytes)


@dataclass
class _Chunk:
    """One storage chunk's crops as a decode thread left them."""

    crops: np.ndarray
    bad: list[tuple[int, BadFrameError]]  # (index in the chunk, error)
    mixed: int
    encoded: bytes | None  # None when a frame was bad (repeats are filled in order) or h5py compresses


# ---------------------------------------------------------------------------------- per video

def crop_video(task: VideoTask) -> dict[str, Any]:
    """Crop one video to ``task.output`` (see the module doc); returns a summary with warnings."""
    pl = task.payload
    p = CropParams.from_section(pl["params"])
    video = task.video
    source_frames = [int(v) for v in pl["source_frames"]]
    positions = [int(v) for v in pl["positions"]]
    n = len(source_frames)
    if n == 0:
        raise InputError(f"video {video}: no rows in resample/frames.csv. Rerun ingest and resample, "
                         "or drop the video from videos.csv.")
    if positions != list(range(n)):
        raise InputError(f"video {video}: resample/frames.csv frame numbers are not 0..{n - 1} in order. "
                         "Rerun resample.")
    color = bool(int(pl["color"]))
    source = open_source(video, pl["kind"], pl["source"], color, source_frames, pl.get("paths"), p.threads)
    warnings: list[str] = []
    if n < p.min_frames:
        warnings.append(f"only {n} frames (< crop.min_frames {p.min_frames}): too short for one feature clip")

    finder = make_finder(p)
    ref = find_reference(source, finder, p, warnings)
    ref_box = round_box(face_box(ref.landmarks, p.margin_top, p.margin_bottom, p.margin_side))
    keyframes: list[int] = []
    if p.mode == "fixed":
        boxes = np.repeat(ref_box[None].astype(np.float64), n, axis=0)
    else:
        keys, cands = track_candidates(source, finder, p, ref, ref_box)
        boxes, keyframes = plan_track_boxes(n, keys, cands, ref_box, p.track_threshold)
    int_boxes = np.array([round_box(b) for b in boxes], dtype=np.int64)
    outside = max(outside_fraction(b, ref.shape) for b in np.unique(int_boxes, axis=0))
    if outside > 0:
        warnings.append(f"{outside:.0%} of the face box lies outside the frame; padded ({p.pad})")
    min_side = float((int_boxes[:, 2] - int_boxes[:, 0]).min())
    reduce = choose_reduction(min_side, p.size) if p.reduced_decode and source.supports_reduce else 1

    channels = 3 if color else 1

    def region(pos: int, shape: tuple[int, ...]) -> np.ndarray:
        """The box to decode of frame ``pos``, decoded at ``shape``."""
        return frame_box(int_boxes[pos], ref.shape, shape, reduce)[0]

    def work(group: list[int], items: list[Any]) -> _Chunk:
        crops = np.empty((len(group), p.size, p.size, channels), dtype=np.uint8)
        bad, mixed = [], 0
        for i, (pos, item) in enumerate(zip(group, items)):
            if isinstance(item, BadFrameError):
                bad.append((i, item))
                continue
            patch = item if isinstance(item, Patch) else Patch.whole(item)
            box, m = frame_box(int_boxes[pos], ref.shape, patch.frame_shape, reduce)
            crop_frame(patch.pixels, patch.box_in_patch(box), p.size, p.pad, p.interpolation, out=crops[i])
            mixed += int(m)
        return _Chunk(crops, bad, mixed, None if bad else writer.encode(crops))

    repeated: list[int] = []
    mixed_count = 0
    with atomic_h5(task.output, task.digest, asdict(p)) as f:
        writer = _FrameWriter(f, n, p.size, channels, p)
        last: np.ndarray | None = None  # the latest good crop, repeated over bad frames
        leading: list[tuple[int, _Chunk]] = []  # chunks held back until the first good frame
        window = max(2 * p.threads, p.batch // writer.chunk)
        for group, chunk in source.map_groups(work, writer.chunk, reduce=reduce, window=window,
                                              region=region if p.region_decode else None):
            mixed_count += chunk.mixed
            for i, err in chunk.bad:
                if p.on_bad_frame == "fail":
                    raise InputError(f"{err} Or set params.yaml: crop.on_bad_frame: repeat.")
                repeated.append(group[i])
                if len(repeated) > p.max_repeat_fraction * n:
                    raise InputError(f"video {video}: {len(repeated)} of {n} frames unreadable (more than "
                                     f"crop.max_repeat_fraction {p.max_repeat_fraction}), last: {err.path}. "
                                     "Restore the dataset's frames.")
            bad = {i for i, _ in chunk.bad}
            good = [i for i in range(len(group)) if i not in bad]
            if last is None:
                if not good:  # nothing decodable yet: hold the chunk back
                    leading.append((group[0], chunk))
                    continue
                last = chunk.crops[good[0]]  # the first good frame stands in for every frame before it
                for start, held in leading:
                    held.crops[:] = last
                    writer.write(start, held.crops)
                leading = []
            for i in range(len(group)):
                if i in bad:
                    chunk.crops[i] = last
                else:
                    last = chunk.crops[i]
            writer.write(group[0], chunk.crops, chunk.encoded)
        if last is None:
            raise InputError(f"video {video}: no frame could be decoded. Restore the dataset's frames.")
        if mixed_count:
            warnings.append(f"{mixed_count} frames differ in size from the reference frame {ref.shape[::-1]}; "
                            "the box was mapped proportionally")
        if repeated:
            warnings.append(f"{len(repeated)} unreadable frames repeated the previous frame: positions {repeated[:10]}")
        f.create_dataset("boxes", data=int_boxes.astype(np.int32), track_times=False)
        f.create_dataset("source_frames", data=np.asarray(source_frames, dtype=np.int64), track_times=False)
        write_attrs(f, {
            "video": video, "subject": str(pl["subject"]), "fps": float(pl["fps"]), "size": p.size,
            "channels": channels, "detector": finder.describe(), "mode": p.mode,
            "source": str(pl["source"]), "kind": pl["kind"],
            "box": [int(v) for v in ref_box], "reference_frame": ref.position,
            "reference_source_frame": source_frames[ref.position], "reference_faces": ref.n_faces,
            "reference_score": ref.detection.score, "frame_shape": [int(v) for v in ref.shape],
            "decode_reduction": reduce, "outside_fraction": round(outside, 4),
            "mixed_size_frames": mixed_count, "short": n < p.min_frames,
        })
        f.attrs["landmarks"] = ref.landmarks.astype(np.float32)
        f.attrs["repeated_frames"] = np.asarray(repeated, dtype=np.int64)
        f.attrs["track_keyframes"] = np.asarray(keyframes, dtype=np.int64)
    for w in warnings:
        log.warning("crop: video %s: %s", video, w)
    return {"frames": n, "box": [int(v) for v in ref_box], "reduce": reduce, "warnings": warnings,
            "repeated": repeated, "keyframes": keyframes,
            "region_decode": bool(p.region_decode and region_decoder_agrees() and source.supports_reduce)}


# -------------------------------------------------------------------------------------- stage

def build_tasks(videos, frames, out_dir: Path, section: Mapping[str, Any], root: Path | None = None) -> list[VideoTask]:
    """One VideoTask per row of ``videos`` (a resample videos.csv) with its rows of ``frames``.

    Relative paths in the tables are taken relative to ``root`` (default: the working
    directory, the repository root under DVC); the digest uses the tables' own values.
    """
    root = Path.cwd() if root is None else Path(root)
    params = asdict(CropParams.from_section(section))
    groups = {v: g.sort_values("frame") for v, g in frames.groupby("video", sort=False)}
    tasks = []
    for row in videos.to_dict("records"):
        video = str(row["video"])
        g = groups.get(video)
        rows = [] if g is None else [[int(r["frame"]), int(r["source_frame"]), str(r["path"])]
                                     for r in g.to_dict("records")]
        identity = {k: str(row[k]) for k in ("subject", "fps", "source", "kind", "color")}
        stage = {k: v for k, v in params.items() if k not in NOT_IN_DIGEST}
        d = digest({"stage": stage, "inputs": {"video": identity, "frames": rows}, "version": CROP_VERSION})

        def resolve(path: str) -> str:
            return path if not path or Path(path).is_absolute() else str(root / path)

        payload = {
            "params": params, "subject": row["subject"], "fps": row["fps"], "kind": str(row["kind"]),
            "source": resolve(str(row["source"])), "color": int(row["color"]),
            "positions": [r[0] for r in rows], "source_frames": [r[1] for r in rows],
            "paths": [resolve(r[2]) for r in rows],
        }
        tasks.append(VideoTask(video, Path(out_dir) / f"{video}.h5", d, payload))
    return tasks


def run(ctx: StageContext) -> None:
    """Crop every video of the dataset (resumable: complete outputs with the same digest are skipped)."""
    section = ctx.section()
    videos = read_videos(ctx.paths.resample / "videos.csv")
    frames = read_frames(ctx.paths.resample / "frames.csv")
    removed = remove_partials(ctx.paths.faces)
    if removed:
        log.info("crop: removed %d partial file(s) left by an interrupted run", removed)
    tasks = build_tasks(videos, frames, ctx.paths.faces, section)
    stale = remove_stale(ctx.paths.faces, {t.video for t in tasks})
    if stale:
        log.info("crop: removed %d output(s) of videos no longer in the tables: %s", len(stale), ", ".join(stale))
    results = map_videos(crop_video, tasks, stage="crop", parallel=ctx.parallel)
    n_warn = sum(bool(r.get("warnings")) for r in results.values())
    log.info("crop@%s: %d video(s) cropped, %d with warnings, %d already complete",
             ctx.name, len(results), n_warn, len(tasks) - len(results))


main = stage_main("crop", run)

if __name__ == "__main__":
    raise SystemExit(main())
