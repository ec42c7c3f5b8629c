"""Smooth, landmark-anchored deformation fields and the warps that apply them.

Conventions (used by the whole synthetic generator):

* A *motion field* ``m`` is float32 ``[H, W, 2]`` (x, y) in pixels: the content at
  pixel ``p`` of the neutral image moves to ``p + m(p)``.
* :func:`warp_by_field` is the exact primitive: ``out(x) = image(x + field(x))``
  (one ``cv2.remap``). The optical flow from ``out`` to ``image`` is therefore
  exactly ``field`` (``image(x + field(x)) == out(x)``), which is what the flow tests
  use as ground truth (:func:`flow_pair`).
* To render a motion field ``m`` the generator warps with ``field = -m`` (first-order
  inverse, error ``O(|m| * |grad m|)``: well below 0.05 px for the few-pixel, smooth
  expression fields used here).

Expression fields are normalised Gaussian RBF interpolants anchored on the 68 dlib
landmarks: every action unit (AU) moves a few landmarks along fixed directions and the
field falls off smoothly around them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger(__name__)

#: Action units the generator animates: name -> (FACS code, face region).
ACTION_UNITS: dict[str, tuple[str, str]] = {
    "brow_raise": ("1+2", "brows"),
    "brow_lower": ("4", "brows"),
    "cheek_raise": ("6", "cheeks"),
    "nose_wrinkle": ("9", "nose"),
    "lip_corner_pull": ("12", "mouth"),
    "lip_corner_depress": ("15", "mouth"),
    "lip_press": ("24", "mouth"),
}
REGIONS: tuple[str, ...] = ("brows", "cheeks", "nose", "mouth")

_R_BROW, _L_BROW = range(17, 22), range(22, 27)


def gaussian_rbf_field(points: np.ndarray, displacements: np.ndarray, shape: tuple[int, int],
                       sigma: float) -> np.ndarray:
    """Dense field ``[H, W, 2]`` interpolating ``displacements`` at ``points`` (x, y).

    Normalised Gaussian RBF: ``m(x) = sum_k w_k(x) d_k / max(1, sum_k w_k(x))`` with
    ``w_k = exp(-|x - p_k|^2 / (2 sigma^2))``; smooth, equal to ``d`` where a group of
    points moves together, and zero far from every point. Only a box of +-4 sigma
    around the points is evaluated.
    """
    h, w = shape
    field = np.zeros((h, w, 2), np.float32)
    pts = np.asarray(points, np.float32).reshape(-1, 2)
    disp = np.asarray(displacements, np.float32).reshape(-1, 2)
    if len(pts) == 0:
        return field
    r = 4.0 * sigma
    x0, y0 = (max(0, int(np.floor(v - r))) for v in pts.min(0))
    x1 = min(w, int(np.ceil(pts[:, 0].max() + r)) + 1)
    y1 = min(h, int(np.ceil(pts[:, 1].max() + r)) + 1)
    if x1 <= x0 or y1 <= y0:
        return field
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    num = np.zeros((y1 - y0, x1 - x0, 2), np.float32)
    den = np.zeros((y1 - y0, x1 - x0), np.float32)
    inv = -0.5 / (sigma * sigma)
    for (px, py), d in zip(pts, disp):
        wk = np.exp(((xs - px) ** 2 + (ys - py) ** 2) * inv)
        den += wk
        num[..., 0] += wk * d[0]
        num[..., 1] += wk * d[1]
    field[y0:y1, x0:x1] = num / np.maximum(den, 1.0)[..., None]
    return field


def _inward(landmarks: np.ndarray, idx: int) -> float:
    """+1 when the midline (nose bridge, landmark 27) is to the right of landmark ``idx``."""
    return 1.0 if landmarks[27, 0] > landmarks[idx, 0] else -1.0


def au_controls(name: str, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Control points (x, y) and unit-scale directions of action unit ``name``.

    Directions are relative (largest = 1); :class:`MotionBasis` rescales each AU field
    so that its largest displacement at a landmark is exactly 1 px.
    """
    L = np.asarray(landmarks, np.float32)
    pts: list[np.ndarray] = []
    dirs: list[tuple[float, float]] = []

    def add(i: int, dx: float, dy: float) -> None:
        pts.append(L[i])
        dirs.append((dx, dy))

    if name == "brow_raise":
        for i in list(_R_BROW) + list(_L_BROW):
            add(i, 0.0, -(0.8 if i in (17, 18, 25, 26) else 1.0))
    elif name == "brow_lower":
        for i in (20, 21, 22, 23):
            add(i, 0.5 * _inward(L, i), 0.85)
        for i in (17, 18, 19, 24, 25, 26):
            add(i, 0.15 * _inward(L, i), 0.5)
    elif name == "cheek_raise":
        for i in (40, 41, 46, 47):
            add(i, 0.0, -0.5)
        for eye, corner, jaw in ((range(36, 42), 48, 3), (range(42, 48), 54, 13)):
            below_eye = L[list(eye)].mean(0)
            for p in (0.5 * (below_eye + L[corner]), 0.5 * (below_eye + L[jaw])):
                pts.append(p.astype(np.float32))
                dirs.append((0.0, -1.0))
    elif name == "nose_wrinkle":
        for i in (31, 32, 33, 34, 35):
            add(i, 0.2 * _inward(L, i) if i in (31, 35) else 0.0, -1.0)
        add(29, 0.0, -0.5)
        add(30, 0.0, -0.7)
    elif name == "lip_corner_pull":
        for i, s in ((48, 1.0), (54, 1.0), (60, 0.8), (64, 0.8), (49, 0.4), (59, 0.4), (53, 0.4), (55, 0.4)):
            add(i, -0.75 * s * _inward(L, i), -0.65 * s)
    elif name == "lip_corner_depress":
        for i, s in ((48, 1.0), (54, 1.0), (60, 0.7), (64, 0.7), (59, 0.5), (55, 0.5)):
            add(i, -0.2 * s * _inward(L, i), 1.0 * s)
    elif name == "lip_press":
        for i in (50, 51, 52, 61, 62, 63):
            add(i, 0.0, 0.8)
        for i in (56, 57, 58, 65, 66, 67):
            add(i, 0.0, -1.0)
        for i in (48, 54):
            add(i, 0.3 * _inward(L, i), 0.0)
    else:
        raise KeyError(f"unknown action unit '{name}'; known: {', '.join(ACTION_UNITS)}")
    return np.asarray(pts, np.float32), np.asarray(dirs, np.float32)


def blink_controls(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Control points and displacements (px) that close both eyes fully.

    Upper-lid landmarks move down by the eye opening; lower lids rise a little.
    """
    L = np.asarray(landmarks, np.float32)
    pts, disp = [], []
    for up, low in ((37, 41), (38, 40), (43, 47), (44, 46)):
        opening = float(L[low, 1] - L[up, 1])
        pts += [L[up], L[low]]
        disp += [(0.0, 0.85 * opening), (0.0, -0.15 * opening)]
    for i in (36, 39, 42, 45):
        pts.append(L[i])
        disp.append((0.0, 0.0))
    return np.asarray(pts, np.float32), np.asarray(disp, np.float32)


def face_width(landmarks: np.ndarray) -> float:
    """Face width in px: jaw landmark 0 to 16 (about the width of dlib's face box)."""
    L = np.asarray(landmarks, np.float32)
    return float(np.linalg.norm(L[16] - L[0]))


@dataclass
class MotionBasis:
    """Unit motion fields of one subject, computed once from its landmarks.

    ``au[name]``: field whose largest landmark displacement is 1 px;
    ``blink``: field that closes both eyes (px, strength 1 = closed);
    ``yaw``: horizontal bump, 1 px at the face centre (a small head turn);
    ``face_px``: face width in px (amplitudes in "px at a 224-px face" scale by face_px / 224).
    """

    au: dict[str, np.ndarray]
    blink: np.ndarray
    yaw: np.ndarray
    face_px: float
    center: tuple[float, float]

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray, shape: tuple[int, int], sigma_frac: float = 0.08,
                       blink_sigma_frac: float = 0.045) -> "MotionBasis":
        """Build every unit field for an image of ``shape`` (H, W) with ``landmarks`` (68 x 2)."""
        L = np.asarray(landmarks, np.float32)
        fw = face_width(L)
        sigma = sigma_frac * fw
        au = {}
        for name in ACTION_UNITS:
            pts, dirs = au_controls(name, L)
            field = gaussian_rbf_field(pts, dirs, shape, sigma)
            at = _sample(field, L)
            peak = float(np.linalg.norm(at, axis=1).max())
            au[name] = field / max(peak, 1e-6)
        bp, bd = blink_controls(L)
        blink = gaussian_rbf_field(bp, bd, shape, blink_sigma_frac * fw)
        cx, cy = L[:, 0].mean(), L[:, 1].mean()
        h, w = shape
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        bump = np.exp(-0.5 * (((xs - cx) / (0.55 * fw)) ** 2 + ((ys - cy) / (0.75 * fw)) ** 2))
        yaw = np.zeros((h, w, 2), np.float32)
        yaw[..., 0] = bump
        return cls(au=au, blink=blink, yaw=yaw, face_px=fw, center=(float(cx), float(cy)))


def _sample(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``field`` at ``points`` (x, y) -> ``[K, 2]``."""
    pts = np.asarray(points, np.float32).reshape(-1, 1, 2)
    mx = np.ascontiguousarray(pts[..., 0])
    my = np.ascontiguousarray(pts[..., 1])
    out = cv2.remap(field, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, 2)


def sample_field(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Values of a dense field ``[H, W, 2]`` at sub-pixel ``points`` (x, y), bilinear."""
    return _sample(field, points)


def warp_by_field(image: np.ndarray, field: np.ndarray, border: int = cv2.BORDER_REFLECT101,
                  interpolation: int = cv2.INTER_LINEAR, offset: int = 0) -> np.ndarray:
    """Return ``out`` with ``out(x) = image(x + offset + field(x))`` (one ``cv2.remap``).

    ``field`` is float ``[H, W, 2]`` (x, y) in pixels. With ``offset`` 0 it has the shape
    of ``image``; with ``offset`` m the image carries a margin of at least m pixels on every
    side that the warp may read instead of a reflected border. The
    optical flow from ``out`` to ``image[m:m+H, m:m+W]`` is exactly ``field``.
    """
    h, w = field.shape[:2]
    ih, iw = image.shape[:2]
    fits = (ih, iw) == (h, w) if offset == 0 else (ih >= h + 2 * offset and iw >= w + 2 * offset)
    if field.shape[-1] != 2 or not fits:
        raise ValueError(f"field shape {field.shape} does not match image shape {image.shape[:2]} "
                         f"with a {offset}-px margin")
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    mx = xs + offset + field[..., 0].astype(np.float32)
    my = ys + offset + field[..., 1].astype(np.float32)
    return cv2.remap(image, mx, my, interpolation, borderMode=border)


def smooth_random_field(shape: tuple[int, int], max_px: float, scale_px: float, seed: int) -> np.ndarray:
    """A random smooth displacement field ``[H, W, 2]`` whose largest magnitude is ``max_px``.

    White noise low-pass filtered with a Gaussian of std ``scale_px`` (the length over
    which the motion changes), plus a random global translation of up to half of
    ``max_px``, then rescaled. Deterministic for a given ``seed``.
    """
    h, w = shape
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((h, w, 2)).astype(np.float32)
    field = cv2.GaussianBlur(noise, (0, 0), sigmaX=scale_px, borderType=cv2.BORDER_REFLECT101)
    field -= field.mean(axis=(0, 1))
    field /= max(float(np.linalg.norm(field, axis=2).max()), 1e-9)
    field += rng.uniform(-0.5, 0.5, 2).astype(np.float32)
    field *= max_px / max(float(np.linalg.norm(field, axis=2).max()), 1e-9)
    return field.astype(np.float32)


def flow_pair(image: np.ndarray, max_px: float = 2.0, scale_px: float = 20.0,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A frame pair with exactly known optical flow, for testing flow implementations.

    Returns ``(frame0, frame1, flow)``: ``frame1`` is ``image``, ``frame0`` is ``image``
    warped by a smooth random field, and ``flow`` (float32 ``[H, W, 2]``, u, v in px) is
    the flow from ``frame0`` to ``frame1``: ``frame1(x + flow(x)) == frame0(x)``.
    Pixels whose source lies outside the image (``x + flow`` out of bounds) are
    reflected, so compare flows away from a border of ``max_px`` pixels.
    """
    field = smooth_random_field(image.shape[:2], max_px, scale_px, seed)
    return warp_by_field(image, field), image, field


def envelope(n_frames: int, onset: int, apex: int, offset: int) -> np.ndarray:
    """Smooth onset -> apex -> offset profile: 0 at onset and offset, 1 at apex (raised cosine)."""
    t = np.arange(n_frames, dtype=np.float64)
    env = np.zeros(n_frames, np.float64)
    rise = (t >= onset) & (t <= apex)
    fall = (t > apex) & (t <= offset)
    env[rise] = 0.5 - 0.5 * np.cos(np.pi * (t[rise] - onset) / max(apex - onset, 1))
    env[fall] = 0.5 + 0.5 * np.cos(np.pi * (t[fall] - apex) / max(offset - apex, 1))
    return env
