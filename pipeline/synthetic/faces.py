"""Synthetic subjects: distinct faces derived from one public-domain portrait.

The base face is ``skimage.data.astronaut()`` (public domain, NASA). Each subject is
an identity transform of it: mirroring, landmark-geometry jitter (eye spacing, mouth
width, nose length, brow height, jaw width), scale, aspect, roll, placement, skin tone,
a lighting gradient and a new background. dlib then finds the face and its 68
landmarks once per subject; the expression fields are anchored on those landmarks.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from pipeline.errors import ConfigError, InputError
from pipeline.synthetic.motion import face_width, gaussian_rbf_field, warp_by_field

log = logging.getLogger(__name__)

LANDMARK_MODEL = "shape_predictor_68_face_landmarks.dat"


def find_landmark_model() -> Path:
    """Path of dlib's 68-point model shipped by ``face-recognition-models`` (not imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("package face-recognition-models is not installed: pip install face-recognition-models "
                          "(it ships dlib's 68-point landmark model).")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "models" / LANDMARK_MODEL
        if path.is_file():
            return path
    raise ConfigError(f"{LANDMARK_MODEL} not found in {list(spec.submodule_search_locations)}: "
                      "reinstall face-recognition-models.")


class FaceDetector:
    """dlib's HOG face detector plus the 68-point shape predictor."""

    def __init__(self, model_path: str | Path | None = None, upsample: int = 0):
        import dlib

        self.upsample = int(upsample)
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(model_path or find_landmark_model()))
        self._rect = dlib.rectangle

    def detect(self, image: np.ndarray, upsample: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """Largest face of a BGR or grayscale uint8 image: (box x0, y0, x1, y1; landmarks 68 x 2) or None."""
        rgb = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        rects = self._detector(np.ascontiguousarray(rgb), self.upsample if upsample is None else int(upsample))
        if len(rects) == 0:
            return None
        r = max(rects, key=lambda q: q.width() * q.height())
        shape = self._predictor(np.ascontiguousarray(rgb), r)
        pts = np.array([(p.x, p.y) for p in shape.parts()], np.float32)
        return np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32), pts

    def landmarks(self, image: np.ndarray) -> np.ndarray | None:
        """68 x 2 landmarks (x, y) of the largest face, or None when no face is found."""
        found = self.detect(image)
        return None if found is None else found[1]


@dataclass
class Subject:
    """One synthetic identity: its neutral frame and landmarks, detected once."""

    name: str
    image: np.ndarray          # uint8, BGR [H, W, 3] or grayscale [H, W]
    landmarks: np.ndarray      # float32 [68, 2], detected by dlib on ``image``
    box: np.ndarray            # dlib face box x0, y0, x1, y1

    @property
    def face_px(self) -> float:
        """Face width (jaw landmark 0 to 16) in pixels."""
        return face_width(self.landmarks)


def base_portrait() -> np.ndarray:
    """The public-domain base portrait as BGR uint8 (skimage's astronaut, 512 x 512)."""
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def _uniform(rng: np.random.Generator, spec: Any, key: str) -> float:
    """Draw from ``[lo, hi]`` (or return a scalar) for face parameter ``key``."""
    if isinstance(spec, (int, float)):
        return float(spec)
    if isinstance(spec, (list, tuple)) and len(spec) == 2:
        lo, hi = float(spec[0]), float(spec[1])
        return float(rng.uniform(lo, hi)) if hi > lo else lo
    raise ConfigError(f"params.yaml: synth.face.{key} must be a number or [lo, hi], got {spec!r}.")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random background: two-colour gradient plus low-frequency texture (BGR float32)."""
    c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(angle) * xs / w + np.sin(angle) * ys / h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    bg = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    tex = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigmaX=max(h, w) / 25)
    tex *= 18.0 / max(float(np.abs(tex).max()), 1e-6)
    return (bg + tex[..., None]).astype(np.float32)


def _person_mask(landmarks: np.ndarray, h: int, w: int) -> np.ndarray:
    """Soft mask (float32 0..1) of head (with hair) and shoulders around ``landmarks``."""
    L = landmarks
    fw = face_width(L)
    cx = float(L[:, 0].mean())
    chin = float(L[8, 1])
    brow = float(L[17:27, 1].min())
    mask = np.zeros((h, w), np.uint8)
    head_cy = 0.5 * (chin + brow - 0.75 * fw)
    axes = (int(0.78 * fw), int(0.5 * (chin - brow) + 0.55 * fw))
    cv2.ellipse(mask, (int(cx), int(head_cy)), axes, 0, 0, 360, 255, -1)
    neck = np.array([[cx - 0.35 * fw, chin - 0.2 * fw], [cx + 0.35 * fw, chin - 0.2 * fw],
                     [cx + 1.25 * fw, chin + 0.9 * fw], [cx + 1.35 * fw, chin + 2.0 * fw],
                     [cx - 1.35 * fw, chin + 2.0 * fw], [cx - 1.25 * fw, chin + 0.9 * fw]], np.int32)
    cv2.fillPoly(mask, [neck], 255)
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), sigmaX=max(1.0, 0.04 * fw))
    return soft


def _geometry_jitter(landmarks: np.ndarray, amount: float, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Control points and displacements that change face geometry by up to ``amount`` x face width."""
    L = landmarks
    fw = face_width(L)
    a = amount * fw
    mid = float(L[27, 0])
    eye = rng.uniform(-1, 1) * a        # eye spacing
    mouth = rng.uniform(-1, 1) * a      # mouth width
    nose = rng.uniform(-1, 1) * a       # nose length
    brow = rng.uniform(-1, 1) * a       # brow height
    jaw = rng.uniform(-1, 1) * a        # jaw width
    disp = np.zeros_like(L)
    side = np.sign(L[:, 0] - mid)
    disp[36:48, 0] = side[36:48] * eye / 2
    disp[17:27, 1] = -brow
    disp[48:68, 0] = side[48:68] * mouth / 2 * np.abs(L[48:68, 0] - mid) / max(float(np.abs(L[48:68, 0] - mid).max()), 1)
    disp[31:36, 1] = nose
    disp[48:68, 1] += nose * 0.5
    disp[0:17, 0] = side[0:17] * jaw / 2
    return L, disp


def make_subject(index: int, params: Mapping[str, Any], size: tuple[int, int], color: bool, seed: int,
                 detector: FaceDetector, name: str | None = None, max_tries: int = 12) -> Subject:
    """Build subject ``index``: a distinct, dlib-detectable identity on a ``size`` (W, H) canvas.

    ``params`` is ``synth.face``. Deterministic in (``seed``, ``index``); when dlib does
    not find the face on a draw, the next draw of the same stream is tried.
    """
    w, h = int(size[0]), int(size[1])
    base = base_portrait()
    found = detector.detect(base, upsample=1)
    if found is None:
        raise InputError("skimage astronaut: dlib found no face in the base portrait; check the dlib install.")
    base_lm = found[1]
    rng = np.random.default_rng([int(seed), 7919, int(index)])
    for attempt in range(max_tries):
        img, lm_expected = _draw_identity(base, base_lm, params, w, h, color, rng)
        got = detector.detect(img)
        if got is not None and np.linalg.norm(got[1] - lm_expected, axis=1).mean() < 0.08 * face_width(lm_expected):
            log.debug("subject %d: identity found on draw %d", index, attempt)
            return Subject(name=name or f"subject{index}", image=img, landmarks=got[1], box=got[0])
    raise InputError(f"synthetic subject {index}: dlib found no face in {max_tries} draws; "
                     "reduce synth.face rotation_deg / increase synth.face width_frac in params.yaml.")


def _draw_identity(base: np.ndarray, base_lm: np.ndarray, p: Mapping[str, Any], w: int, h: int, color: bool,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random identity draw: (image, where its landmarks should be)."""
    img = base
    lm = base_lm.copy()
    if rng.uniform() < float(p.get("mirror_p", 0.5)):
        img = img[:, ::-1].copy()
        lm[:, 0] = img.shape[1] - 1 - lm[:, 0]
    # identity geometry: move landmarks smoothly (in base coordinates)
    pts, disp = _geometry_jitter(lm, float(p.get("geometry_jitter", 0.03)), rng)
    motion = gaussian_rbf_field(pts, disp, img.shape[:2], 0.12 * face_width(lm))
    img = warp_by_field(img, -motion)
    lm = lm + disp
    # placement: scale, aspect, roll, offset
    fw_target = _uniform(rng, p.get("width_frac", [0.5, 0.6]), "width_frac") * h
    scale = fw_target / face_width(lm)
    aspect = _uniform(rng, p.get("aspect", [0.93, 1.07]), "aspect")
    angle = rng.uniform(-1, 1) * float(p.get("rotation_deg", 6.0))
    off = float(p.get("offset_frac", 0.04))
    cx, cy = lm[:, 0].mean(), lm[:, 1].mean()
    tx = w / 2 + rng.uniform(-off, off) * w
    ty = h / 2 + rng.uniform(-off, off) * h + 0.04 * h
    rot = cv2.getRotationMatrix2D((0.0, 0.0), angle, 1.0)[:, :2]
    lin = rot @ np.diag([scale * aspect, scale / aspect])
    A = np.zeros((2, 3), np.float64)
    A[:, :2] = lin
    A[:, 2] = np.array([tx, ty]) - lin @ np.array([cx, cy])
    face = cv2.warpAffine(img, A, (w, h), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT101).astype(np.float32)
    lm = (lm @ A[:, :2].T + A[:, 2]).astype(np.float32)
    # skin tone and lighting (on the person only), background
    tone = _uniform(rng, p.get("tone", [0.6, 1.15]), "tone")
    warmth = _uniform(rng, p.get("warmth", [-0.08, 0.08]), "warmth")
    gains = np.array([1 - warmth, 1.0, 1 + warmth], np.float32) * tone  # BGR
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    grad = float(p.get("light_gradient", 0.25)) * rng.uniform(0, 1)
    fwp = face_width(lm)
    shade = 1 + grad * ((xs - lm[:, 0].mean()) * np.cos(ang) + (ys - lm[:, 1].mean()) * np.sin(ang)) / (1.5 * fwp)
    person = face * gains[None, None, :] * np.clip(shade, 0.5, 1.5)[..., None]
    mask = _person_mask(lm, h, w)[..., None]
    out = person * mask + _background(rng, h, w) * (1 - mask)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if not color:
        out = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)
    return out, lm
