"""Cutting the face out of a frame: mapping the box onto a decoded frame, padding, resizing.

Boxes are ``[x0, y0, x1, y1)`` in pixels (see :mod:`pipeline.cropping.finder`).
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from pipeline.cropping.finder import round_box

#: OpenCV resize filter of each ``crop.interpolation`` value (``auto`` chooses one, :func:`resize_filter`)
INTERPOLATION_FILTERS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
#: OpenCV border mode of each ``crop.pad`` value
BORDER_MODES = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}


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
    return INTERPOLATION_FILTERS[interpolation]


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
                                   BORDER_MODES[pad], value=0)
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
