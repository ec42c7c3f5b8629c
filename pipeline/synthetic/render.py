"""Rendering a synthetic video: one ``cv2.remap`` per frame from a precomputed motion sum.

Per frame ``t`` the renderer sums the active non-rigid motion (expressions, blinks,
head-turn bump; each a precomputed unit field times a scalar envelope), composes it
with the rigid head motion (slow drift plus brief jerks, an affine ``H_t`` about the
face centre), and samples the subject's neutral image once:

    out(x) = neutral(y - m_t(y)),   y = H_t^{-1}(x)

so a neutral point ``p`` appears at ``H_t(p + m_t(p))`` (first order), which is what
:meth:`VideoRenderer.landmarks` returns. Global lighting gain and sensor noise are
applied after the warp; JPEG/MP4 compression happens when frames are written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import cv2
import numpy as np

from pipeline.synthetic.faces import FaceDetector, Subject, make_subject
from pipeline.synthetic.motion import MotionBasis, envelope, sample_field
from pipeline.synthetic.schedule import Event, Instance, Schedule, sample_schedule

log = logging.getLogger(__name__)

NOISE_BANK = 16


def _bump(n_frames: int, start: int, end: int) -> np.ndarray:
    """Raised-cosine pulse over [start, end]: 0 at both ends, 1 in the middle."""
    return envelope(n_frames, start, (start + end) // 2, end)


class VideoRenderer:
    """Renders the frames of one :class:`Schedule` on one :class:`Subject`."""

    def __init__(self, subject: Subject, schedule: Schedule, params: Mapping[str, Any], seed: int):
        exp = params.get("expressions") or {}
        dis = params.get("distractors") or {}
        self.subject = subject
        self.schedule = schedule
        n = schedule.n_frames
        img = subject.image
        self.shape = img.shape[:2]
        self.basis = MotionBasis.from_landmarks(subject.landmarks, self.shape,
                                                float(exp.get("sigma_frac", 0.08)),
                                                float(dis.get("blink_sigma_frac", 0.045)))
        px = self.basis.face_px / 224.0  # source px per "px at a 224-px face"
        L = subject.landmarks
        # non-rigid components: (unit field, its values at the landmarks, per-frame coefficient)
        self._components: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for inst in schedule.instances:
            field = sum(self.basis.au[a] for a in inst.aus)
            peak = float(np.linalg.norm(sample_field(field, L), axis=1).max())
            field = (field / max(peak, 1e-6)).astype(np.float32)
            coef = envelope(n, inst.onset, inst.apex, inst.offset) * inst.amplitude_px224 * px
            self._components.append((field, sample_field(field, L), coef))
        turn_coef = np.zeros(n)
        jerk = np.zeros((n, 3))  # dx, dy (px), rotation (deg)
        gain = np.ones(n)
        level = 1.0
        for ev in sorted(schedule.events, key=lambda e: e.start):
            if ev.kind == "blink":
                coef = _bump(n, ev.start, ev.end) * ev.values["strength"]
                self._components.append((self.basis.blink, sample_field(self.basis.blink, L), coef))
            elif ev.kind == "turn":
                turn_coef += _bump(n, ev.start, ev.end) * ev.values["px224"] * px
            elif ev.kind == "jerk":
                b = _bump(n, ev.start, ev.end)
                jerk += b[:, None] * np.array([ev.values["dx224"] * px, ev.values["dy224"] * px, ev.values["rot_deg"]])
            elif ev.kind == "lighting":
                t = np.arange(n)
                ramp = np.clip((t - ev.start) / max(ev.end - ev.start, 1), 0, 1)
                ramp = 0.5 - 0.5 * np.cos(np.pi * ramp)
                new = ev.values["gain"]
                gain = np.where(t >= ev.start, level + (new - level) * ramp, gain)
                level = new
        if np.any(turn_coef):
            self._components.append((self.basis.yaw, sample_field(self.basis.yaw, L), turn_coef))
        self._gain = gain
        # rigid head motion: drift (smooth sinusoids, zero at frame 0) plus jerks
        d = schedule.drift
        t = np.arange(n) / schedule.fps

        def wave(amp: float, period: float, phase: float) -> np.ndarray:
            return amp * (np.sin(2 * np.pi * t / max(period, 1e-3) + phase) - np.sin(phase))

        self._dx = wave(d.get("px224", 0.0) * px, d.get("period_x", 10.0), d.get("phase_x", 0.0)) + jerk[:, 0]
        self._dy = wave(0.6 * d.get("px224", 0.0) * px, d.get("period_y", 10.0), d.get("phase_y", 0.0)) + jerk[:, 1]
        self._rot = wave(d.get("rot_deg", 0.0), d.get("period_r", 10.0), d.get("phase_r", 0.0)) + jerk[:, 2]
        self._scale = 1.0 + wave(d.get("scale", 0.0), d.get("period_s", 10.0), d.get("phase_s", 0.0))
        self._center = np.array(self.basis.center, np.float64)
        self._noise_sigma = float(dis.get("noise_sigma", 0.0))
        self._rng = np.random.default_rng([int(seed), 31337])
        self._noise = None
        if self._noise_sigma > 0:
            self._noise = (self._rng.standard_normal((NOISE_BANK,) + img.shape) * self._noise_sigma).astype(np.float32)
        h, w = self.shape
        self._ys, self._xs = np.mgrid[0:h, 0:w].astype(np.float32)

    @property
    def n_frames(self) -> int:
        """Number of frames of the video."""
        return self.schedule.n_frames

    def _affine(self, t: int) -> np.ndarray:
        """Forward head motion H_t (2 x 3) about the face centre."""
        th = np.deg2rad(self._rot[t])
        s = self._scale[t]
        lin = s * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        A = np.zeros((2, 3))
        A[:, :2] = lin
        A[:, 2] = self._center - lin @ self._center + np.array([self._dx[t], self._dy[t]])
        return A

    def _nonrigid(self, t: int) -> np.ndarray | None:
        """Sum of the active non-rigid fields at frame ``t`` (None when nothing moves)."""
        total = None
        for field, _, coef in self._components:
            c = coef[t]
            if abs(c) < 1e-6:
                continue
            total = field * np.float32(c) if total is None else cv2.scaleAdd(field, float(c), total)
        return total

    def landmarks(self, t: int) -> np.ndarray:
        """Where the subject's 68 landmarks are at frame ``t`` (first-order, px)."""
        p = self.subject.landmarks.astype(np.float64).copy()
        for _, at, coef in self._components:
            p += at * coef[t]
        A = self._affine(t)
        return (p @ A[:, :2].T + A[:, 2]).astype(np.float32)

    def frame(self, t: int) -> np.ndarray:
        """Frame ``t`` as uint8 (BGR or grayscale, like the subject's image)."""
        A = self._affine(t)
        m = self._nonrigid(t)
        rigid = not np.allclose(A, [[1, 0, 0], [0, 1, 0]], atol=1e-7)
        img = self.subject.image
        if m is None and not rigid:
            out = img.copy()
        else:
            if rigid:
                Ai = cv2.invertAffineTransform(A)
                a = [float(v) for v in Ai.ravel()]
                yx = cv2.scaleAdd(self._xs, a[0], self._ys * np.float32(a[1]) + np.float32(a[2]))
                yy = cv2.scaleAdd(self._xs, a[3], self._ys * np.float32(a[4]) + np.float32(a[5]))
                if m is not None:
                    my = cv2.remap(m, yx, yy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                    yx -= my[..., 0]
                    yy -= my[..., 1]
            else:
                yx = self._xs - m[..., 0]
                yy = self._ys - m[..., 1]
            out = cv2.remap(img, yx, yy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        g = float(self._gain[t])
        if self._noise is not None or abs(g - 1.0) > 1e-6:
            f = out.astype(np.float32)
            if abs(g - 1.0) > 1e-6:
                f *= g
            if self._noise is not None:
                f += self._noise[int(self._rng.integers(NOISE_BANK))]
            np.clip(f, 0, 255, out=f)
            out = f.astype(np.uint8)
        return out

    def frames(self) -> Iterator[np.ndarray]:
        """All frames in order (noise draws depend on the order: always render in order)."""
        for t in range(self.n_frames):
            yield self.frame(t)


@dataclass
class SynthClip:
    """An in-memory synthetic clip with its truth (for tests of crop, flow, spot)."""

    frames: np.ndarray          # uint8 [T, H, W, 3] (BGR) or [T, H, W]
    landmarks: np.ndarray       # float32 [T, 68, 2]: where each landmark is in each frame
    instances: list[Instance]
    events: list[Event]
    subject: Subject
    fps: float


def jpeg_roundtrip(frame: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode ``frame`` as JPEG at ``quality`` (what writing frames does)."""
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    flag = cv2.IMREAD_GRAYSCALE if frame.ndim == 2 else cv2.IMREAD_COLOR
    return cv2.imdecode(buf, flag)


def render_sequence(n_frames: int, *, fps: float = 30.0, size: tuple[int, int] = (224, 224), color: bool = True,
                    seed: int = 0, subject_index: int = 0, instances: list[Instance] | None = None,
                    events: list[Event] | None = None, params: Mapping[str, Any] | None = None,
                    jpeg_quality: int | None = None, detector: FaceDetector | None = None) -> SynthClip:
    """Render a face clip with known landmark motion.

    With ``instances``/``events`` given, exactly those happen (no head drift, no noise
    unless ``params`` asks for them); otherwise a schedule is drawn from ``params``
    (``synth`` section layout, e.g. ``ctx.section("synth")``). ``size`` is (W, H).
    Returns frames, the per-frame landmark positions and the schedule.
    """
    params = dict(params or {})
    det = detector or FaceDetector()
    subject = make_subject(subject_index, params.get("face") or {}, size, color, seed, det)
    rng = np.random.default_rng([int(seed), 104729, int(subject_index)])
    if instances is None and events is None:
        schedule = sample_schedule(n_frames, fps, params, rng)
    else:
        schedule = Schedule(n_frames, float(fps), list(instances or []), list(events or []), drift={})
    r = VideoRenderer(subject, schedule, params, seed)
    frames = []
    for f in r.frames():
        frames.append(jpeg_roundtrip(f, jpeg_quality) if jpeg_quality else f)
    lms = np.stack([r.landmarks(t) for t in range(n_frames)])
    return SynthClip(np.stack(frames), lms, schedule.instances, schedule.events, subject, float(fps))
