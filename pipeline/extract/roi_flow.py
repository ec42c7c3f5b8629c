"""Backbone ``roi_flow``: landmark-region optical-flow statistics, a baseline that needs no downloaded weights.

The classical MEGC spotting methods (before deep features) read the optical flow in a few
regions of interest placed on facial landmarks, with the head's own motion taken out first.
This backbone does that on the flow stage's TV-L1 fields, on the clip grid of the I3D path,
so windows, labels, IAENet and everything downstream are unchanged; it loads no weights
(``features.weights``, ``allow_random_init`` and ``seed`` are not read) and runs on the CPU
in about a second per video.

Per video:

* **Regions.** The 68 dlib landmarks of the crop stage's reference frame (faces file attr
  ``landmarks``, in reference-frame pixels) are mapped into the crop's pixel grid through
  the crop box of that frame (:func:`read_landmarks`). :data:`REGIONS` are discs around
  landmark groups (brows inner/outer, glabella, eyes, nose wings, cheeks, mouth corners,
  lips, chin; ``_r``/``_l`` are the subject's right/left, i.e. the image's left/right) of
  radius ``roi.region_scale`` x the inter-ocular distance (IOD, between the eye centres).
  The last row, ``head``, is the rigid anchors: discs of radius ``roi.rigid_scale`` x IOD
  around the nose bridge (27-30) and the inner eye corners (39, 42).
* **Head motion removed.** Per flow field a motion model is fitted by weighted least squares
  (each anchor weighing the same) to the flow at the rigid anchors and subtracted from every
  region (``roi.head_motion``: ``similarity``, translation + rotation + scale; ``affine``;
  ``nose``, the nose bridge's mean flow; ``none``). The ``head`` row keeps the raw flow: it
  describes the head's own motion, so the model can tell a head turn from an expression.
* **Strain.** Central differences of the head-free flow give per pixel the strain tensor
  (e_xx = du/dx, e_yy = dv/dy, e_xy = (du/dy + dv/dx) / 2): its divergence (e_xx + e_yy) and
  magnitude sqrt(e_xx^2 + e_yy^2 + 2 e_xy^2) (the optical strain of Shreve et al.).
* **Sliding reference.** The accumulated displacement at field t is the sum of the head-free
  flow (and strain) of fields t - K + 1 .. t, K = ``roi.reference_pairs``: the face at frame
  t + 1 against frame t + 1 - K, so slow drift, which grows only over those K fields, cancels.

Per clip (the I3D grid: clip i covers flow fields [stride*i, stride*i + clip), N =
:func:`pipeline.extract.prepare.clip_count` clips) and region, six numbers (:data:`STATS`)
for each of the features file's two datasets, region-major (``<region>.<stat>`` at column
``6 * region + stat``; the names are in the files' attrs ``roi_regions`` and ``roi_stats``):

* ``flow``, the clip's own motion: mean dx, mean dy of the region's mean head-free flow,
  mean and max over the clip's fields of the region's mean flow magnitude, mean divergence,
  mean strain magnitude;
* ``rgb`` (it holds no appearance: the schema's two datasets are filled by the two kinds of
  motion), the same six of the displacement accumulated against the sliding reference.

Displacements are in percent of the IOD (face-size invariant, so crop.size does not change
them), divergence and strain in percent. Width: 16 rows x 6 = 96 per dataset, 192 in all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from pipeline.errors import ConfigError, InputError
from pipeline.extract.extractor import VideoFeatures
from pipeline.extract.flow_jpeg import dequantize
from pipeline.extract.params import NO_WEIGHTS, ROI_FLOW, ROI_VERSION, STREAMS, FeaturesParams, RoiParams
from pipeline.extract.prepare import clip_count
from pipeline.extract.reader import Failed, VideoInput
from pipeline.io.h5io import read_attr_json

log = logging.getLogger(__name__)

#: expression regions: name -> the dlib 68-point landmarks (0-based) whose mean is the disc's centre
REGIONS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("brow_r_outer", (17, 18)),
    ("brow_r_inner", (20, 21)),
    ("glabella", (21, 22, 27)),
    ("brow_l_inner", (22, 23)),
    ("brow_l_outer", (25, 26)),
    ("eye_r", (36, 37, 38, 39, 40, 41)),
    ("eye_l", (42, 43, 44, 45, 46, 47)),
    ("nose", (31, 32, 33, 34, 35)),
    ("cheek_r", (1, 2, 31, 41, 48)),
    ("cheek_l", (15, 14, 35, 46, 54)),
    ("mouth_r", (48, 60)),
    ("mouth_l", (54, 64)),
    ("upper_lip", (50, 51, 52, 61, 62, 63)),
    ("lower_lip", (56, 57, 58, 65, 66, 67)),
    ("chin", (7, 8, 9, 57)),
)
HEAD = "head"  # the last row: the raw flow at the rigid anchors
ROWS: tuple[str, ...] = (*(name for name, _ in REGIONS), HEAD)
RIGID_ANCHORS: tuple[int, ...] = (27, 28, 29, 30, 39, 42)  # nose bridge, inner eye corners
NOSE_ANCHORS: tuple[int, ...] = (27, 28, 29, 30)  # head_motion: nose
STATS: tuple[str, ...] = ("dx", "dy", "mag", "max_mag", "div", "strain")
DIM = len(ROWS) * len(STATS)  # per dataset
RIGHT_EYE, LEFT_EYE = tuple(range(36, 42)), tuple(range(42, 48))
N_LANDMARKS = 68
CHUNK_ELEMENTS = 1 << 20  # flow values (fields x H x W x 2) converted at once (scratch memory: tens of MB)


def feature_names(stream: str) -> list[str]:
    """``<region>.<stat>`` of every column of dataset ``stream`` (``rgb`` or ``flow``), in order."""
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
    return [f"{row}.{stat}" for row in ROWS for stat in STATS]


# ------------------------------------------------------------------ landmarks


#: who needs the landmarks, and what else the user may do, in read_landmarks' errors (roi_flow's by default)
ROI_FLOW_USE = ("roi_flow places its regions", ", or use features.backbone: i3d")


def read_landmarks(faces_path: str | Path, video: str, height: int, width: int,
                   use: tuple[str, str] = ROI_FLOW_USE) -> np.ndarray:
    """The 68 reference landmarks of ``video`` in the crop's pixel grid (x, y), float64 [68, 2].

    The crop stage stores them (attr ``landmarks``) in reference-frame pixels, with the
    crop box (``boxes[reference_frame]``, else attr ``box``, [x0, y0, x1, y1) in those
    pixels) that was resized to the ``height`` x ``width`` crop. Raises :class:`InputError`
    naming the video and the fix when they are missing or unusable; ``use`` is (who places what
    on them, an alternative appended to the fix) for that message.
    """
    faces_path = Path(faces_path)
    fix = (f"{use[0]} on them and cannot run without them: rerun the crop stage for this "
           f"video (dvc repro crop, or delete the file and rerun){use[1]}.")
    try:
        with h5py.File(faces_path, "r") as f:
            landmarks = f.attrs.get("landmarks")
            ref = read_attr_json(f, "reference_frame")
            box = None
            if "boxes" in f and ref is not None and 0 <= int(ref) < f["boxes"].shape[0]:
                box = f["boxes"][int(ref)]
            if box is None:
                box = read_attr_json(f, "box")
    except OSError as exc:
        raise InputError(f"{faces_path}: cannot read the landmarks of video '{video}' ({exc}). {fix}") from None
    if landmarks is None:
        raise InputError(f"{faces_path}: video '{video}' has no reference landmarks (faces attr 'landmarks'). {fix}")
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (N_LANDMARKS, 2) or not np.isfinite(landmarks).all():
        raise InputError(f"{faces_path}: video '{video}' has landmarks of shape {landmarks.shape} (or not finite); "
                         f"expected the 68 dlib points [68, 2]. {fix}")
    box = None if box is None else np.asarray(box, dtype=np.float64).reshape(-1)
    if box is None or box.shape != (4,) or not (box[2] > box[0] and box[3] > box[1]):
        raise InputError(f"{faces_path}: video '{video}' has no usable crop box (faces attr 'box': {box}), needed "
                         f"to map its landmarks into the crop. {fix}")
    scale = np.array([width / (box[2] - box[0]), height / (box[3] - box[1])])
    # pixel centres: reference pixel x maps to crop (x - x0 + 0.5) * scale - 0.5 (the resize's convention)
    return (landmarks - box[:2] + 0.5) * scale - 0.5


def interocular(landmarks: np.ndarray) -> float:
    """Distance between the eye centres (means of points 36-41 and 42-47), in the landmarks' pixels."""
    lm = np.asarray(landmarks, dtype=np.float64)
    return float(np.hypot(*(lm[list(LEFT_EYE)].mean(0) - lm[list(RIGHT_EYE)].mean(0))))


# ------------------------------------------------------------------ the per-video plan


def _disc(centre: np.ndarray, radius: float, height: int, width: int) -> np.ndarray:
    """Flat indices of the pixels within ``radius`` of ``centre`` (at least the nearest one when it is inside)."""
    r = max(radius, 0.71)  # a pixel centre lies within 1/sqrt(2) of any point of its pixel
    x0, x1 = max(0, int(np.floor(centre[0] - r))), min(width - 1, int(np.ceil(centre[0] + r)))
    y0, y1 = max(0, int(np.floor(centre[1] - r))), min(height - 1, int(np.ceil(centre[1] + r)))
    if x1 < x0 or y1 < y0:
        return np.zeros(0, np.int64)
    ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1]
    inside = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= r * r
    return (ys[inside] * width + xs[inside]).astype(np.int64)


def _anchor_weights(landmarks: np.ndarray, anchors: Iterable[int], radius: float, height: int, width: int,
                    pixels: np.ndarray) -> np.ndarray:
    """Weights over ``pixels`` giving each anchor's disc the same total (0 outside every disc)."""
    where = {int(p): i for i, p in enumerate(pixels)}
    w = np.zeros(len(pixels))
    for a in anchors:
        disc = _disc(landmarks[a], radius, height, width)
        if len(disc):
            w[[where[int(p)] for p in disc]] += 1.0 / len(disc)
    return w


def _model_basis(mode: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u basis [P, k], v basis [P, k], gradient [k, 4]) of the head-motion model at normalised coordinates.

    The model flow is ``u = basis_u @ theta``, ``v = basis_v @ theta``; its (constant)
    gradient (du/dx, du/dy, dv/dx, dv/dy) per unit of the normalised coordinates is
    ``theta @ gradient``.
    """
    one, zero = np.ones_like(x), np.zeros_like(x)
    if mode == "none":
        return np.zeros((len(x), 0)), np.zeros((len(x), 0)), np.zeros((0, 4))
    if mode == "nose":  # translation
        return np.stack([one, zero], 1), np.stack([zero, one], 1), np.zeros((2, 4))
    if mode == "similarity":  # (tx, ty, s, r): u = tx + s x - r y, v = ty + r x + s y
        grad = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 1], [0, -1, 1, 0]], dtype=np.float64)
        return np.stack([one, zero, x, -y], 1), np.stack([zero, one, y, x], 1), grad
    if mode == "affine":  # (a0, a1, a2, b0, b1, b2): u = a0 + a1 x + a2 y, v = b0 + b1 x + b2 y
        grad = np.zeros((6, 4))
        grad[1, 0] = grad[2, 1] = grad[4, 2] = grad[5, 3] = 1.0
        return (np.stack([one, x, y, zero, zero, zero], 1), np.stack([zero, zero, zero, one, x, y], 1), grad)
    raise ConfigError(f"features.roi.head_motion {mode!r} is not one of similarity, affine, nose, none.")


@dataclass
class RoiPlan:
    """Where to read the flow of one video and how to reduce it (depends on its landmarks and crop size only).

    ``P`` region pixels: first the union of the expression regions' discs, then the rigid
    anchors' pixels (the ``head`` row), which keep the raw flow.
    """

    height: int
    width: int
    iod: float
    pixels: np.ndarray  # [P] flat indices
    gather: np.ndarray  # [5P] flat indices of the pixels, then of their x+1, x-1, y+1, y-1 neighbours (clamped)
    inv_dx: np.ndarray  # [P] 1 / (x+ - x-) (0 on a 1-pixel-wide grid)
    inv_dy: np.ndarray  # [P]
    mean: np.ndarray  # [rows, P] averaging weights of each row (a row of zeros: the region left the crop)
    subtract: np.ndarray  # [P] 1 where the head motion is removed, 0 at the head row's pixels
    basis_u: np.ndarray  # [P, k] the model's u per parameter at each pixel (0 at the head row's pixels)
    basis_v: np.ndarray  # [P, k]
    grad: np.ndarray  # [k, 4] model gradient per parameter, in pixels
    fit: np.ndarray  # [k, 2 * H] weighted least squares: theta = fit @ [u; v] at the head pixels
    head: slice  # the head row's pixels within P


def make_plan(landmarks: np.ndarray, height: int, width: int, roi: RoiParams) -> RoiPlan:
    """The :class:`RoiPlan` of a video whose reference landmarks (crop pixels) are ``landmarks``."""
    lm = np.asarray(landmarks, dtype=np.float64)
    iod = interocular(lm)
    if not np.isfinite(iod) or iod < 2.0:
        raise InputError(f"reference landmarks with an inter-ocular distance of {iod:.2f} px in a {width}x{height} "
                         "crop: roi_flow cannot place its regions. Rerun the crop stage for this video.")
    radius = roi.region_scale * iod
    discs = [_disc(lm[list(idx)].mean(0), radius, height, width) for _, idx in REGIONS]
    expr = np.unique(np.concatenate(discs)) if any(len(d) for d in discs) else np.zeros(0, np.int64)
    rigid_radius = roi.rigid_scale * iod
    head = np.unique(np.concatenate([_disc(lm[a], rigid_radius, height, width) for a in RIGID_ANCHORS]))
    pixels = np.concatenate([expr, head]).astype(np.int64)
    n_expr, P = len(expr), len(expr) + len(head)
    mean = np.zeros((len(ROWS), P))
    pos = {int(p): i for i, p in enumerate(expr)}
    for r, disc in enumerate(discs):
        if len(disc):
            mean[r, [pos[int(p)] for p in disc]] = 1.0 / len(disc)
    head_w = _anchor_weights(lm, RIGID_ANCHORS, rigid_radius, height, width, head)
    if head_w.sum() > 0:
        mean[-1, n_expr:] = head_w / head_w.sum()
    ys, xs = np.divmod(pixels, width)
    xp, xm = np.minimum(xs + 1, width - 1), np.maximum(xs - 1, 0)
    yp, ym = np.minimum(ys + 1, height - 1), np.maximum(ys - 1, 0)
    gather = np.concatenate([pixels, ys * width + xp, ys * width + xm, yp * width + xs, ym * width + xs])
    inv_dx = np.where(xp > xm, 1.0 / np.maximum(xp - xm, 1), 0.0)  # 0: a 1-pixel-wide grid has no x derivative
    inv_dy = np.where(yp > ym, 1.0 / np.maximum(yp - ym, 1), 0.0)
    # the model in coordinates centred on the anchors, in IOD units (well conditioned)
    centre = lm[list(RIGID_ANCHORS)].mean(0)
    basis_u, basis_v, grad = _model_basis(roi.head_motion, (xs - centre[0]) / iod, (ys - centre[1]) / iod)
    grad = grad / iod  # per pixel
    fit_anchors = NOSE_ANCHORS if roi.head_motion == "nose" else RIGID_ANCHORS
    w = np.sqrt(_anchor_weights(lm, fit_anchors, rigid_radius, height, width, head))
    k = basis_u.shape[1]
    if k:
        design = np.concatenate([basis_u[n_expr:] * w[:, None], basis_v[n_expr:] * w[:, None]])  # [2H, k]
        fit = np.linalg.pinv(design) * np.concatenate([w, w])[None, :]
    else:
        fit = np.zeros((0, 2 * len(head)))
    subtract = np.concatenate([np.ones(n_expr), np.zeros(len(head))])
    f32 = np.float32
    return RoiPlan(height, width, iod, pixels, gather.astype(np.int64), inv_dx.astype(f32), inv_dy.astype(f32),
                   mean.astype(f32), subtract.astype(f32), (basis_u * subtract[:, None]).astype(f32),
                   (basis_v * subtract[:, None]).astype(f32), grad.astype(f32), fit.astype(f32), slice(n_expr, P))


# ------------------------------------------------------------------ per field, then per clip


def _pixel_terms(flow: np.ndarray, plan: RoiPlan) -> np.ndarray:
    """Head-free flow and strain tensor at the plan's pixels: float32 [n, 5, P] (u, v, e_xx, e_yy, e_xy).

    Derivatives are central differences (one-sided at the grid's border) of the flow gathered
    at each pixel's neighbours; the model's own derivatives are constants per field.
    """
    n, P = flow.shape[0], len(plan.pixels)
    f = np.asarray(flow).reshape(n, plan.height * plan.width, 2).transpose(0, 2, 1).astype(np.float32)  # [n, 2, HW]
    at = np.take(f, plan.gather, axis=2)  # [n, 2, 5P]: the pixels, then their x+1, x-1, y+1, y-1 neighbours
    u, v = at[:, 0, :P], at[:, 1, :P]
    dudx = (at[:, 0, P:2 * P] - at[:, 0, 2 * P:3 * P]) * plan.inv_dx
    dvdx = (at[:, 1, P:2 * P] - at[:, 1, 2 * P:3 * P]) * plan.inv_dx
    dudy = (at[:, 0, 3 * P:4 * P] - at[:, 0, 4 * P:]) * plan.inv_dy
    dvdy = (at[:, 1, 3 * P:4 * P] - at[:, 1, 4 * P:]) * plan.inv_dy
    if plan.fit.shape[0]:
        theta = np.concatenate([u[:, plan.head], v[:, plan.head]], axis=1) @ plan.fit.T  # [n, k]
        sub = plan.subtract
        u = u - theta @ plan.basis_u.T  # the bases are 0 at the head row's pixels: they keep the raw flow
        v = v - theta @ plan.basis_v.T
        g = theta @ plan.grad  # [n, 4]: the model's du/dx, du/dy, dv/dx, dv/dy
        dudx = dudx - g[:, 0:1] * sub
        dudy = dudy - g[:, 1:2] * sub
        dvdx = dvdx - g[:, 2:3] * sub
        dvdy = dvdy - g[:, 3:4] * sub
    return np.stack([u, v, dudx, dvdy, 0.5 * (dudy + dvdx)], axis=1)


def _row_stats(q: np.ndarray, plan: RoiPlan) -> np.ndarray:
    """Per field and row: mean dx, mean dy, mean magnitude, mean divergence, mean strain magnitude [n, rows, 5].

    ``q``: pixel terms [n, 5, P] (u, v, e_xx, e_yy, e_xy)."""
    n, P = q.shape[0], q.shape[2]
    per_pixel = np.stack([q[:, 0], q[:, 1], np.sqrt(q[:, 0] ** 2 + q[:, 1] ** 2), q[:, 2] + q[:, 3],
                          np.sqrt(q[:, 2] ** 2 + q[:, 3] ** 2 + 2.0 * q[:, 4] ** 2)], axis=1)  # [n, 5, P]
    return (per_pixel.reshape(n * 5, P) @ plan.mean.T).reshape(n, 5, -1).transpose(0, 2, 1)


def _sliding_sum(buf: np.ndarray, K: int, start: int) -> np.ndarray:
    """Sum of the last ``K`` entries (fewer at the beginning) of ``buf`` for each entry from ``start`` on.

    Always added in the same order (newest first), so the result does not depend on where
    the fields were cut into chunks.
    """
    out = buf[start:].copy()
    n = len(out)
    for k in range(1, K):
        j0 = max(0, k - start)  # entries j with start + j - k >= 0
        if j0 >= n:
            break
        out[j0:] += buf[start + j0 - k:start + n - k]
    return out


def field_stats(flow: np.ndarray, plan: RoiPlan, reference_pairs: int,
                chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(instantaneous, accumulated) row statistics of every flow field, float32 [T-1, rows, 5] each.

    ``flow``: [T-1, H, W, 2] (pixels, any float dtype; an h5py dataset is read chunk by chunk).
    Accumulated: of the head-free flow and strain summed over the last ``reference_pairs``
    fields (fewer at the video's start). :func:`field_stats_spans` with one span.
    """
    inst, acc = field_stats_spans(flow, plan, [reference_pairs], chunk)
    return inst, acc[0]


def field_stats_spans(flow: np.ndarray, plan: RoiPlan, spans: Sequence[int],
                      chunk: int | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """:func:`field_stats` for several ``spans`` (reference_pairs) in one pass over the flow:
    (instantaneous [T-1, rows, 5], [accumulated [T-1, rows, 5] per span]), float32.

    Fields are handled ``chunk`` at a time (None: as many as :data:`CHUNK_ELEMENTS` flow values);
    each field's pixel terms are computed once and the last ``max(spans) - 1`` carried over, so
    every span's sums are those of a pass of its own.
    """
    n_fields = flow.shape[0]
    rows = len(ROWS)
    inst = np.zeros((n_fields, rows, 5), np.float32)
    spans = [int(k) for k in spans]
    accs = [np.zeros((n_fields, rows, 5), np.float32) for _ in spans]
    chunk = chunk or max(8, CHUNK_ELEMENTS // (2 * plan.height * plan.width))
    keep = max(spans) - 1
    carry = np.zeros((0, 5, len(plan.pixels)), np.float32)
    for a in range(0, n_fields, chunk):
        q = _pixel_terms(flow[a:a + chunk], plan)
        n = q.shape[0]
        inst[a:a + n] = _row_stats(q, plan)
        buf = np.concatenate([carry, q]) if len(carry) else q
        for K, acc in zip(spans, accs):
            acc[a:a + n] = _row_stats(_sliding_sum(buf, K, len(carry)), plan)
        carry = buf[max(0, len(buf) - keep):] if keep > 0 else buf[:0]
    return inst, accs


def clip_features(stats: np.ndarray, n_clips: int, clip: int, stride: int, scale: float) -> np.ndarray:
    """Per clip and row the six :data:`STATS` of field statistics ``stats`` [T-1, rows, 5]: float32 [N, rows * 6].

    Clip i covers fields [stride*i, stride*i + clip). Displacements (dx, dy, mag, max_mag)
    are multiplied by ``scale`` (100 / IOD: percent of the inter-ocular distance),
    divergence and strain by 100 (percent).
    """
    rows = stats.shape[1]
    if n_clips == 0:
        return np.zeros((0, rows * len(STATS)), np.float32)
    win = np.lib.stride_tricks.sliding_window_view(stats, clip, axis=0)[::stride][:n_clips]  # [N, rows, 5, clip]
    mean, peak = win.mean(axis=-1, dtype=np.float64), win[:, :, 2].max(axis=-1)
    out = np.stack([mean[..., 0] * scale, mean[..., 1] * scale, mean[..., 2] * scale, peak * scale,
                    mean[..., 3] * 100.0, mean[..., 4] * 100.0], axis=-1)  # [N, rows, 6]
    return out.reshape(n_clips, rows * len(STATS)).astype(np.float32)


def roi_features(flow: np.ndarray, landmarks: np.ndarray, roi: RoiParams, clip: int = 8,
                 stride: int = 2) -> dict[str, np.ndarray]:
    """roi_flow features of one video: ``{"rgb": accumulated, "flow": instantaneous}``, float32 [N, DIM] each.

    ``flow``: the flow stage's fields [T-1, H, W, 2] in pixels; ``landmarks``: the reference
    landmarks in that grid's pixels (:func:`read_landmarks`). N is the I3D path's clip count
    for T = len(flow) + 1 frames.
    """
    n_fields, height, width = flow.shape[0], flow.shape[1], flow.shape[2]
    n = clip_count(n_fields + 1, clip, stride)
    plan = make_plan(landmarks, height, width, roi)
    if n == 0:
        empty = np.zeros((0, DIM), np.float32)
        return {"rgb": empty, "flow": empty.copy()}
    inst, acc = field_stats(flow[:(n - 1) * stride + clip], plan, roi.reference_pairs)
    scale = 100.0 / plan.iod
    return {"rgb": clip_features(acc, n, clip, stride, scale), "flow": clip_features(inst, n, clip, stride, scale)}


# ------------------------------------------------------------------ the stage's engine


class RoiFlowExtractor:
    """The features stage's engine for backbone roi_flow (the counterpart of
    :class:`~pipeline.extract.extractor.FeatureExtractor`: same ``run``, ``extract``, ``provenance``).

    ``streams`` is what it reads: the flow only (the reference landmarks come from each
    video's faces file); its results fill both datasets, ``rgb`` and ``flow``.
    """

    streams: tuple[str, ...] = ("flow",)

    def __init__(self, cfg: FeaturesParams) -> None:
        if cfg.backbone != ROI_FLOW:
            raise ConfigError(f"RoiFlowExtractor computes backbone {ROI_FLOW}, not {cfg.backbone}.")
        self.cfg = cfg
        self.roi = cfg.roi_params
        self.device = torch.device("cpu")
        self.dim = DIM
        ignored = [f"weights.{s}" for s in STREAMS if cfg.weights_path(s)]
        if ignored:
            log.warning("features: backbone %s loads no weights; features.%s ignored", ROI_FLOW,
                        " and features.".join(ignored))

    def provenance(self) -> dict[str, object]:
        """Attributes describing how the features were made (stored in every output file)."""
        attrs: dict[str, object] = {
            "backbone": ROI_FLOW, "dim": self.dim, "dim_concat": self.dim * len(STREAMS), "streams": list(STREAMS),
            "clip": self.cfg.clip, "stride": self.cfg.stride, "device": str(self.device),
            "flow_quantize": self.cfg.flow_quantize, "flow_bound": self.cfg.flow_bound,
            "roi": self.roi.as_params(), "roi_version": ROI_VERSION,
            "roi_regions": list(ROWS), "roi_stats": list(STATS),
            "roi_layout": {"rgb": "accumulated against the sliding reference", "flow": "the clip's own fields"},
        }
        for stream in STREAMS:
            attrs[f"weights_{stream}"] = NO_WEIGHTS
            attrs[f"weights_{stream}_path"] = ""
        return attrs

    def extract(self, item: VideoInput) -> dict[str, np.ndarray]:
        """Features of one video in memory: ``{"rgb", "flow"}`` float32 [N, DIM]."""
        if item.flow is None:
            raise ValueError(f"{item.probe.video}: no flow array was read; roi_flow reads the flow stream.")
        flow = item.flow.numpy() if isinstance(item.flow, torch.Tensor) else np.asarray(item.flow)
        if flow.dtype == np.uint8:  # flow_quantize jpeg: the published levels, back to pixels
            flow = dequantize(flow, self.cfg.flow_bound)
        landmarks = read_landmarks(item.probe.faces, item.probe.video, flow.shape[1], flow.shape[2])
        try:
            return roi_features(flow, landmarks, self.roi, self.cfg.clip, self.cfg.stride)
        except InputError as exc:
            raise InputError(f"{item.probe.faces}: video '{item.probe.video}': {exc}") from None

    def run(self, inputs: Iterable[VideoInput | Failed]) -> Iterator[VideoFeatures | Failed]:
        """Features of every input video, in input order; :class:`Failed` items pass through, and a
        video whose landmarks are missing or unusable comes out as one."""
        for item in inputs:
            if isinstance(item, Failed):
                yield item
                continue
            try:
                features = self.extract(item)
            except InputError as exc:
                yield Failed(item.probe.video, str(exc))
                continue
            yield VideoFeatures(item.probe, features)
