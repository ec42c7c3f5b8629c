"""Decode only the part of a JPEG frame the crop stage keeps (libjpeg-turbo, a C extension).

A face box covers about a third of a 640x480 CAS(ME)^2 frame. libjpeg-turbo skips the
IDCT, chroma upsampling and colour conversion outside a rectangle (``jpeg_skip_scanlines``
for rows, ``jpeg_crop_scanline`` for iMCU columns) and stops reading below it; the entropy
decoding above and inside it is still paid. On the synthetic 640x480 frames this takes
0.49 ms against 0.80 ms for OpenCV's full decode (``benchmarks/RESULTS.md``).

The pixels are the ones OpenCV's full decode gives (both are libjpeg-turbo with its
default, accurate integer IDCT and fancy upsampling), except at the cut edges of the
decoded area, where the chroma upsampling sees the edge instead of the next pixels (seen
on the last column when it is odd); so :func:`decode_region` decodes ``margin`` pixels
more on every side (16, one iMCU of 4:2:0 JPEG). The tests check equality with the full
decode, pixel for pixel, over sampling factors, scales, progressive files, grey and
colour, and :func:`pipeline.io.decode.region_decoder_agrees` checks it again in every
process before the crop stage relies on it (OpenCV bundles its own libjpeg-turbo).

The extension ``pipeline.io._jpeg_region`` is built by ``pip install`` where the libjpeg-turbo
headers are installed (Debian/Ubuntu: ``libjpeg-turbo8-dev`` or ``libjpeg62-turbo-dev``)
and is optional: without it, and for frames it does not handle
(not JPEG, an Exif block, CMYK), callers decode the whole frame with OpenCV and get the
same crops more slowly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

try:  # built by setup.py when libjpeg-turbo's headers are present
    from pipeline.io import _jpeg_region as _native
except ImportError:  # pragma: no cover - depends on the build machine
    _native = None

log = logging.getLogger(__name__)

MARGIN = 16  # pixels decoded around the wanted rectangle: one 4:2:0 iMCU
JPEG_SOI = b"\xff\xd8"  # start-of-image marker, the first two bytes of every JPEG file


@dataclass
class Patch:
    """Pixels ``[y, y + h) x [x, x + w)`` of a decoded frame of shape ``frame_shape``.

    ``frame_shape`` is what the whole frame's decode would have been (``[H, W]`` grey,
    ``[H, W, 3]`` colour); a whole frame is the patch at ``x = y = 0``.
    """

    pixels: np.ndarray
    x: int
    y: int
    frame_shape: tuple[int, ...]

    @classmethod
    def whole(cls, frame: np.ndarray) -> "Patch":
        """A whole decoded frame as a patch."""
        return cls(frame, 0, 0, tuple(frame.shape))

    def box_in_patch(self, box: Sequence[int]) -> np.ndarray:
        """``box`` [x0, y0, x1, y1) in frame pixels, moved to this patch's pixels."""
        return np.asarray(box, dtype=np.int64) - np.array([self.x, self.y, self.x, self.y])


def available() -> bool:
    """True when the C extension was built (libjpeg-turbo headers were found at install)."""
    return _native is not None


def libjpeg_version() -> str | None:
    """libjpeg-turbo's version the extension was built against (``2.1.5``), or None without it."""
    if _native is None:
        return None
    n = int(_native.LIBJPEG_TURBO_VERSION_NUMBER)
    return f"{n // 1000000}.{n // 1000 % 1000}.{n % 1000}" if n else "unknown"


def jpeg_shape(data: np.ndarray, color: bool, reduce: int = 1) -> tuple[int, ...] | None:
    """The decoded shape of JPEG bytes at 1/``reduce`` (as a full decode would give), from the header.

    None when region decoding cannot be used for this file (no extension, not a JPEG,
    an Exif block whose orientation OpenCV would apply, CMYK) or the header is unreadable;
    the caller then decodes the whole frame the usual way.
    """
    if _native is None or data.size < 4 or bytes(data[:2]) != JPEG_SOI:
        return None
    try:
        width, height, _components, usable = _native.header(data, int(reduce))
    except ValueError:
        return None
    if not usable:
        return None
    return (height, width, 3) if color else (height, width)


def decode_region(data: np.ndarray, box: Sequence[int], frame_shape: Sequence[int], color: bool,
                  reduce: int = 1, margin: int = MARGIN) -> Patch | None:
    """Decode the part of a JPEG that holds ``box`` [x0, y0, x1, y1) (pixels at 1/``reduce``).

    The patch covers ``box`` clipped to the frame, plus ``margin`` pixels each side where
    the frame has them (and more columns, to whole iMCUs); ``frame_shape`` is
    :func:`jpeg_shape`'s value for these bytes. Returns None when libjpeg fails on the
    file, so that the caller's full decode reports (or tolerates) it as it always did.
    """
    if _native is None:
        return None
    x0, y0, x1, y1 = (int(v) for v in box)
    try:
        buf, x, y, w, h, c = _native.decode(data, int(reduce), int(not color),
                                            x0 - margin, y0 - margin, x1 + margin, y1 + margin)
    except ValueError as exc:
        log.debug("region decode failed (%s); decoding the whole frame", exc)
        return None
    pixels = np.frombuffer(buf, dtype=np.uint8).reshape((h, w, c) if color else (h, w))
    return Patch(pixels, x, y, tuple(int(v) for v in frame_shape))
