"""Cropping one video: the per-video function of the crop stage (:func:`crop_video`).

The face box is found on a reference frame (:mod:`pipeline.cropping.reference`), kept for
the whole video (``mode: fixed``) or moved with the head (``mode: track``), and every kept
frame is decoded, cut and resized (:mod:`pipeline.cropping.geometry`) and stored
(:mod:`pipeline.cropping.writer`) into one faces file (layout: :mod:`pipeline.crop`).

One thread-pool task per storage chunk decodes its frames, crops and compresses them;
the main thread only stores whole chunks in order. Blosc and gzip chunks are compressed
in the decode threads (both codecs release the GIL) and stored with HDF5's direct chunk
write, in the filter's own format, so any HDF5 reader with the filter decodes them
(h5py: ``import hdf5plugin``; :mod:`pipeline.io.h5io` does it for the project). Measured
on 224 px crops of noisy 640x480 colour JPEGs (``benchmarks/RESULTS.md``): ``blosc-lz4``
stores them 17% smaller than ``none`` / 12% smaller than ``lzf``, and the stage runs at
0.96x its rate with ``none``, against 0.62x with h5py's serial lzf filter; ``blosc-zstd``
is 6% smaller again (smaller than gzip) at 0.87x; ``lzf`` (h5py only, serial) and
``gzip`` (any HDF5 build, 0.41x) remain.

JPEG frames are decoded only around each frame's box (``region_decode``, libjpeg-turbo
through :mod:`pipeline.io.jpeg_region`: the rows above and below it and the columns beside it
are not converted, the rows below are not read), at 1/2, 1/4 or 1/8 of their size when
the box stays at least ``size`` pixels (``reduced_decode``); the crops are the ones a
whole-frame decode gives, pixel for pixel (checked once per process on test JPEGs,
:func:`pipeline.io.decode.region_decoder_agrees`; where it fails, whole frames are decoded).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from functools import lru_cache
from typing import Any

import numpy as np

from pipeline.core.runner import VideoTask
from pipeline.cropping.finder import FaceFinder, face_box, outside_fraction, plan_track_boxes, round_box
from pipeline.cropping.geometry import crop_frame, frame_box
from pipeline.cropping.params import CropParams
from pipeline.cropping.reference import Reference, find_reference, track_candidates
from pipeline.cropping.writer import CropChunk, FrameWriter
from pipeline.errors import InputError
from pipeline.io.decode import BadFrameError, choose_reduction, open_source, region_decoder_agrees
from pipeline.io.h5io import atomic_h5, write_attrs
from pipeline.io.jpeg_region import Patch

log = logging.getLogger(__name__)


@lru_cache(maxsize=2)
def _finder(detector: str, upsample: int, min_score: float, detect_max_side: int,
            models_dir: str | None) -> FaceFinder:
    """A FaceFinder per worker process and settings (loading the models takes ~1 s; they are read-only)."""
    return FaceFinder(detector, upsample, min_score, detect_max_side, models_dir)


def make_finder(p: CropParams) -> FaceFinder:
    """The face finder for these params (cached per process: dlib models are immutable)."""
    return _finder(p.detector, p.upsample, p.min_score, p.detect_max_side, p.models_dir)


def crop_video(task: VideoTask) -> dict[str, Any]:
    """Crop one video to ``task.output`` (see the module doc); returns a summary with warnings."""
    pl = task.payload
    p = CropParams.from_params(pl["params"])
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
    parts = [(int(a), int(b)) for a, b in pl.get("parts") or [(0, n)]]   # merged video: one box per part
    refs: list[tuple[Reference, np.ndarray]] = []
    part_boxes: list[np.ndarray] = []
    keyframes: list[int] = []
    for a, b in parts:
        part = source if (a, b) == (0, n) else open_source(video, pl["kind"], pl["source"], color,
                                                           source_frames[a:b], list(pl["paths"])[a:b], p.threads)
        ref = find_reference(part, finder, p, warnings)
        ref_box = round_box(face_box(ref.landmarks, p.margin_top, p.margin_bottom, p.margin_side))
        if p.mode == "fixed":
            part_boxes.append(np.repeat(ref_box[None].astype(np.float64), b - a, axis=0))
        else:
            keys, cands = track_candidates(part, finder, p, ref, ref_box)
            boxes, keys_used = plan_track_boxes(b - a, keys, cands, ref_box, p.track_threshold)
            part_boxes.append(np.asarray(boxes, dtype=np.float64))
            keyframes += [a + k for k in keys_used]
        refs.append((ref, ref_box))
    ref, ref_box = refs[0]
    shapes = np.concatenate([np.tile(r.shape, (b - a, 1)) for (r, _), (a, b) in zip(refs, parts)])
    int_boxes = np.array([round_box(b) for b in np.concatenate(part_boxes)], dtype=np.int64)
    outside = max(outside_fraction(int_boxes[i], tuple(shapes[i]))
                  for i in np.unique(np.c_[int_boxes, shapes], axis=0, return_index=True)[1])
    if outside > 0:
        warnings.append(f"{outside:.0%} of the face box lies outside the frame; padded ({p.pad})")
    min_side = float((int_boxes[:, 2] - int_boxes[:, 0]).min())
    reduce = choose_reduction(min_side, p.size) if p.reduced_decode and source.supports_reduce else 1

    channels = 3 if color else 1

    def region(pos: int, shape: tuple[int, ...]) -> np.ndarray:
        """The box to decode of frame ``pos``, decoded at ``shape``."""
        return frame_box(int_boxes[pos], tuple(shapes[pos]), shape, reduce)[0]

    def work(group: list[int], items: list[Any]) -> CropChunk:
        crops = np.empty((len(group), p.size, p.size, channels), dtype=np.uint8)
        bad, mixed = [], 0
        for i, (pos, item) in enumerate(zip(group, items)):
            if isinstance(item, BadFrameError):
                bad.append((i, item))
                continue
            patch = item if isinstance(item, Patch) else Patch.whole(item)
            box, m = frame_box(int_boxes[pos], tuple(shapes[pos]), patch.frame_shape, reduce)
            crop_frame(patch.pixels, patch.box_in_patch(box), p.size, p.pad, p.interpolation, out=crops[i])
            mixed += int(m)
        return CropChunk(crops, bad, mixed, None if bad else writer.encode(crops))

    repeated: list[int] = []
    mixed_count = 0
    with atomic_h5(task.output, task.digest, asdict(p)) as f:
        writer = FrameWriter(f, n, p.size, channels, p)
        last: np.ndarray | None = None  # the latest good crop, repeated over bad frames
        leading: list[tuple[int, CropChunk]] = []  # chunks held back until the first good frame
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
            "source": str(pl.get("source_in_table", pl["source"])), "kind": pl["kind"],
            "box": [int(v) for v in ref_box], "reference_frame": ref.position,
            "reference_source_frame": source_frames[ref.position], "reference_faces": ref.n_faces,
            "reference_score": ref.detection.score, "frame_shape": [int(v) for v in ref.shape],
            "decode_reduction": reduce, "outside_fraction": round(outside, 4),
            "mixed_size_frames": mixed_count, "short": n < p.min_frames,
        })
        f.attrs["landmarks"] = ref.landmarks.astype(np.float32)
        if len(parts) > 1:   # a merged video: each part's reference frame and box (the attrs above: the first part's)
            f.attrs["part_starts"] = np.asarray([a for a, _ in parts], dtype=np.int64)
            f.attrs["part_boxes"] = np.asarray([[int(v) for v in bx] for _, bx in refs], dtype=np.int64)
            f.attrs["part_reference_frames"] = np.asarray([a + r.position for (r, _), (a, _) in zip(refs, parts)],
                                                          dtype=np.int64)
        f.attrs["repeated_frames"] = np.asarray(repeated, dtype=np.int64)
        f.attrs["track_keyframes"] = np.asarray(keyframes, dtype=np.int64)
    for w in warnings:
        log.warning("crop: video %s: %s", video, w)
    return {"frames": n, "box": [int(v) for v in ref_box], "reduce": reduce, "warnings": warnings,
            "repeated": repeated, "keyframes": keyframes,
            "region_decode": bool(p.region_decode and region_decoder_agrees() and source.supports_reduce)}
