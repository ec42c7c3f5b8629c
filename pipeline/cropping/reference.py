"""Where the face is: the reference frame its box is found on, and the re-detections of ``mode: track``.

The box is found once per video on a reference frame (``mode: fixed``: a per-frame box
jitters and the jitter is false motion for the optical flow), or, with ``mode: track``,
re-detected every ``track_every`` frames (:func:`track_candidates`) and moved only when
the head really moved (:func:`pipeline.cropping.finder.plan_track_boxes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.cropping.finder import Detection, FaceFinder, face_box
from pipeline.cropping.params import CropParams
from pipeline.errors import InputError, NoFaceFound
from pipeline.io.decode import BadFrameError, FrameSource


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
