"""Finding the face: dlib model files, detection, 68 landmarks, and the crop box.

* Models come from the ``face-recognition-models`` package, located without importing
  it (its ``__init__`` needs ``pkg_resources``); a ``models_dir`` param overrides.
* :class:`FaceFinder` runs dlib's HOG frontal face detector (or the CNN
  ``mmod_human_face_detector.dat``) on a frame shrunk to ``detect_max_side`` and fits
  the 68-point shape predictor on the full-size frame.
* :func:`face_box` turns landmarks into a square box from above the brows (forehead
  margin: brow movements matter) to below the chin, with margins as fractions of
  the brow-to-chin height and of the jaw width.
* :func:`plan_track_boxes` turns boxes found every K frames into one box per frame
  that changes only when the head really moved, with a linear ramp instead of a jump.

Boxes are ``[x0, y0, x1, y1]`` float arrays in pixels of the frame they were found on,
``x1``/``y1`` exclusive.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

SHAPE_PREDICTOR = "shape_predictor_68_face_landmarks.dat"
CNN_DETECTOR = "mmod_human_face_detector.dat"
DETECTORS = ("hog", "cnn")

# 68-point (iBUG 300-W) landmark groups
JAW = slice(0, 17)
BROWS = slice(17, 27)
CHIN = 8


def models_dir(override: str | Path | None = None) -> Path:
    """Folder holding the dlib model files (``override`` if given, else face-recognition-models')."""
    if override:
        path = Path(override)
        if not path.is_dir():
            raise ConfigError(f"params.yaml: crop.models_dir '{path}' is not a folder. Set it to the folder "
                              f"holding {SHAPE_PREDICTOR}, or to null to use face-recognition-models.")
        return path
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        if (Path(loc) / "models" / SHAPE_PREDICTOR).is_file():
            return Path(loc) / "models"
    raise ConfigError("the dlib models were not found: pip install face-recognition-models, "
                      "or set params.yaml: crop.models_dir to a folder holding " + SHAPE_PREDICTOR + ".")


def model_path(name: str, override: str | Path | None = None) -> Path:
    """Path of one dlib model file, with a clear error when it is missing."""
    path = models_dir(override) / name
    if not path.is_file():
        raise ConfigError(f"{path}: dlib model file not found. Reinstall face-recognition-models "
                          "or fix params.yaml: crop.models_dir.")
    return path


@dataclass(frozen=True)
class Detection:
    """One detected face: ``rect`` [left, top, right, bottom] in frame pixels, detector ``score``."""

    rect: tuple[float, float, float, float]
    score: float

    @property
    def area(self) -> float:
        """Rectangle area in square pixels."""
        return max(0.0, self.rect[2] - self.rect[0]) * max(0.0, self.rect[3] - self.rect[1])

    @property
    def center(self) -> np.ndarray:
        """Rectangle centre (x, y)."""
        return np.array([(self.rect[0] + self.rect[2]) / 2, (self.rect[1] + self.rect[3]) / 2])


class FaceFinder:
    """dlib face detector + 68-point shape predictor, loaded once per video worker."""

    def __init__(self, detector: str = "hog", upsample: int = 0, min_score: float = 0.0,
                 detect_max_side: int = 640, models: str | Path | None = None):
        import dlib

        if detector not in DETECTORS:
            raise ConfigError(f"params.yaml: crop.detector '{detector}' is not one of {', '.join(DETECTORS)}.")
        self.detector_name = detector
        self.upsample = int(upsample)
        self.min_score = float(min_score)
        self.detect_max_side = int(detect_max_side)
        self._dlib = dlib
        if detector == "hog":
            self._hog = dlib.get_frontal_face_detector()
            self._cnn = None
        else:
            self._hog = None
            self._cnn = dlib.cnn_face_detection_model_v1(str(model_path(CNN_DETECTOR, models)))
        self._predictor = dlib.shape_predictor(str(model_path(SHAPE_PREDICTOR, models)))

    def describe(self) -> str:
        """The detector as recorded in output attrs."""
        name = ("dlib.get_frontal_face_detector (HOG)" if self._hog is not None
                else f"dlib.cnn_face_detection_model_v1 ({CNN_DETECTOR})")
        return f"{name}, upsample {self.upsample}, min_score {self.min_score}, + {SHAPE_PREDICTOR}"

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in ``image`` (RGB or grayscale uint8) scoring at least ``min_score``, largest first."""
        scale = 1.0
        small = image
        side = max(image.shape[:2])
        if self.detect_max_side and side > self.detect_max_side:
            scale = self.detect_max_side / side
            small = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                               interpolation=cv2.INTER_AREA)
        small = np.ascontiguousarray(small)
        found: list[tuple[object, float]] = []
        if self._hog is not None:
            rects, scores, _ = self._hog.run(small, self.upsample, self.min_score)
            found = [(r, float(s)) for r, s in zip(rects, scores)]
        else:
            found = [(d.rect, float(d.confidence)) for d in self._cnn(small, self.upsample)
                     if d.confidence >= self.min_score]
        out = [Detection((r.left() / scale, r.top() / scale, (r.right() + 1) / scale, (r.bottom() + 1) / scale), s)
               for r, s in found]
        return sorted(out, key=lambda d: d.area, reverse=True)

    def landmarks(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        """The 68 landmarks (x, y) float32 [68, 2] of ``detection`` in ``image``."""
        l, t, r, b = detection.rect
        rect = self._dlib.rectangle(int(round(l)), int(round(t)), int(round(r)) - 1, int(round(b)) - 1)
        shape = self._predictor(np.ascontiguousarray(image), rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def face_box(landmarks: np.ndarray, margin_top: float, margin_bottom: float, margin_side: float) -> np.ndarray:
    """Square box around the face from 68 landmarks.

    Vertically it spans from the highest brow point minus ``margin_top`` x H to the chin
    plus ``margin_bottom`` x H (H: brow-to-chin height); horizontally the jaw plus
    ``margin_side`` x W on each side (W: jaw width). The shorter side is grown around its
    centre to make a square, so the margins are minimums.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    top = pts[BROWS, 1].min()
    bottom = max(pts[CHIN, 1], pts[JAW, 1].max())
    left, right = pts[JAW, 0].min(), pts[JAW, 0].max()
    height, width = bottom - top, right - left
    y0, y1 = top - margin_top * height, bottom + margin_bottom * height
    x0, x1 = left - margin_side * width, right + margin_side * width
    side = max(y1 - y0, x1 - x0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def round_box(box: np.ndarray) -> np.ndarray:
    """Integer box with the same (rounded) side in x and y, so crops stay square."""
    side = int(round(box[2] - box[0]))
    x0, y0 = int(round(box[0])), int(round(box[1]))
    return np.array([x0, y0, x0 + side, y0 + side], dtype=np.int64)


def box_motion(a: np.ndarray, b: np.ndarray) -> float:
    """How much box ``b`` differs from ``a``: centre shift or side change, in units of ``a``'s side."""
    side_a, side_b = a[2] - a[0], b[2] - b[0]
    shift = np.hypot((b[0] + b[2] - a[0] - a[2]) / 2, (b[1] + b[3] - a[1] - a[3]) / 2)
    return float(max(shift, abs(side_b - side_a)) / side_a)


def outside_fraction(box: np.ndarray, shape: Sequence[int]) -> float:
    """Fraction of the box's area that lies outside an image of ``shape`` (H, W, ...)."""
    h, w = shape[0], shape[1]
    iw = max(0.0, min(box[2], w) - max(box[0], 0))
    ih = max(0.0, min(box[3], h) - max(box[1], 0))
    area = (box[2] - box[0]) * (box[3] - box[1])
    return float(1.0 - iw * ih / area) if area > 0 else 1.0


def plan_track_boxes(n_frames: int, keyframes: Sequence[int], candidates: Sequence[np.ndarray | None],
                     first_box: np.ndarray, threshold: float) -> tuple[np.ndarray, list[int]]:
    """One box per frame from boxes re-detected at ``keyframes`` (None: no face found there).

    The box starts as ``first_box`` and changes only at a keyframe whose candidate box
    moved more than ``threshold`` (:func:`box_motion`) from the current one; the change
    is spread linearly over the frames since the previous keyframe, so the crop glides
    with the head instead of jumping. Returns ``(boxes [n_frames, 4] float, keyframes
    where a new box starts)``.
    """
    boxes = np.empty((n_frames, 4), dtype=np.float64)
    current = np.asarray(first_box, dtype=np.float64)
    boxes[:] = current
    changed: list[int] = []
    prev_key = 0
    for key, cand in sorted(zip(keyframes, candidates), key=lambda kc: kc[0]):
        if key <= 0 or key >= n_frames:
            continue
        if cand is not None and box_motion(current, cand) > threshold:
            span = key - prev_key
            t = (np.arange(1, span + 1, dtype=np.float64) / span)[:, None]
            boxes[prev_key + 1:key + 1] = current + t * (np.asarray(cand) - current)
            current = np.asarray(cand, dtype=np.float64)
            boxes[key:] = current
            changed.append(int(key))
        prev_key = key
    return boxes, changed
