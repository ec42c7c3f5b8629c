"""Face pairs with known optical flow, for accuracy tests and benchmarks of TV-L1.

A real face (the astronaut portrait shipped with scikit-image) is warped by a smooth
sub-pixel motion field: ``I0(x) = I1(x + f(x))`` with ``I0`` sampled by bicubic
interpolation from a larger float rendering of the face, so the flow from ``I0`` to
``I1`` is exactly ``f`` at every pixel (TV-L1 solves ``I1(x + u(x)) = I0(x)``).
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.synthetic.motion import warp_by_field

#: rows/cols of skimage.data.astronaut() that hold the face with some background (240 px)
FACE_BOX = (10, 250, 105, 345)
#: the part of FACE_BOX that becomes the pair (the rest is margin for the warp)
FACE_INNER = 200


def face_image(size: int, source: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """A float32 grayscale face rendered so that its central ``FACE_INNER`` px span ``size`` px.

    Returns ``(image, margin)``: the image is ``size + 2 * margin`` square.
    """
    if source is None:
        import skimage.data
        source = skimage.data.astronaut()
    y0, y1, x0, x1 = FACE_BOX
    gray = cv2.cvtColor(np.ascontiguousarray(source[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY).astype(np.float32)
    scale = size / FACE_INNER
    big = int(round((y1 - y0) * scale))
    margin = (big - size) // 2
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(gray, (big, big), interpolation=interp), margin


def smooth_field(size: int, amplitude: float, seed: int) -> np.ndarray:
    """A smooth random motion field ``[size, size, 2]`` (u, v) with ``|f| <= amplitude`` px.

    Sum of a translation and three low-frequency sinusoids per component (at most 1.5
    cycles per image): head-motion-like, sub-pixel everywhere when ``amplitude < 1``.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    field = np.zeros((size, size, 2))
    for c in range(2):
        comp = np.full((size, size), rng.uniform(-1, 1))
        for _ in range(3):
            fx, fy = rng.uniform(-1.5, 1.5, 2)
            comp += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
        field[..., c] = comp
    peak = np.abs(field).max()
    return (field * (amplitude / peak)).astype(np.float32)


def warped_pair(size: int = 224, amplitude: float = 1.5, seed: int = 0, source: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i0, i1, flow)``: uint8 grayscale frames ``[size, size]`` and the true flow from i0 to i1."""
    img, margin = face_image(size, source)
    flow = smooth_field(size, amplitude, seed)
    i1 = img[margin:margin + size, margin:margin + size]
    i0 = warp_by_field(img, flow, interpolation=cv2.INTER_CUBIC, offset=margin)   # the generator's warp
    to_u8 = lambda a: np.clip(np.rint(a), 0, 255).astype(np.uint8)  # noqa: E731
    return to_u8(i0), to_u8(i1), flow


def endpoint_error(flow: np.ndarray, truth: np.ndarray, border: int = 0) -> float:
    """Mean endpoint error (px) between flows ``[..., H, W, 2]``, ignoring ``border`` px at the edges."""
    flow = np.asarray(flow, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if border:
        flow = flow[..., border:-border, border:-border, :]
        truth = truth[..., border:-border, border:-border, :]
    return float(np.sqrt(((flow - truth) ** 2).sum(-1)).mean())
