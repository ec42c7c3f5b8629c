"""The per-frame motion signal of one video: roi_flow's sliding-reference displacement, reduced to one number.

From the flow fields and the reference landmarks, per expression region of
:data:`pipeline.extract.roi_flow.REGIONS` (the ``head`` row is left out: it is the head's own
motion), with :func:`pipeline.extract.roi_flow.field_stats_spans` (so the regions, the head motion
removed and the accumulation are exactly roi_flow's, with its ``features.roi`` knobs):

1. **Displacement against a reference, both sides.** ``back(t)``: the mean magnitude of the
   head-free displacement of frame t against frame t - k (roi_flow's ``rgb`` ``mag`` with
   ``reference_pairs`` = k; against frame 0 for t < k), in percent of the inter-ocular
   distance; ``ahead(t) = back(t + k)``: frame t + k against frame t. The signal of span k is
   ``min(back, ahead)`` (``back`` alone where t + k passes the video's end). A motion that
   starts and ends within k frames shows at full height from its onset to its offset in
   both, while ``back`` alone repeats it k frames later (the reference frame then holds the
   moved face) and ``ahead`` announces it k frames early: the minimum keeps only the motion,
   and a second event within k frames on one side does not raise it.
2. **Several spans.** k runs over ``baseline.spans`` x ``features.roi.reference_pairs``
   (default 12, 24, 48, 96 frames: 0.4 to 3.2 s at 30 fps), because an expression longer
   than k shows only while it moves (twice, rising and falling), not at its apex.
3. **Per-video normalisation.** Each region's signal of each span becomes a robust z-score:
   minus its median over the video, divided by 1.4826 x its median absolute deviation (at
   least ``baseline.noise_floor``), so that faces, videos and spans of different noise
   compare, and a region that always moves (noisy flow) counts less.
4. **Regions combined.** The eye regions (``eye_r``, ``eye_l``) by ``baseline.eyes``: blinks,
   the commonest motion of a face and no expression, move the eyes most but also the brows
   (their discs reach the upper lids) and, through the inner eye corners (rigid anchors of
   the head-motion fit), a little of every region. ``subtract`` (default) leaves the eyes
   out and takes from every other region's z-score the larger eye z-score of the frame:
   what a region moves beyond the eyes counts (an eye-only expression, AU 43/45, is lost;
   brow and lower-face expressions move their own regions more than the eyes);
   ``ignore`` leaves them out; ``keep`` counts them like any region. Per frame the mean of
   the ``baseline.top_k`` largest region z-scores; then the largest over the spans.
5. **Smoothing and the video's noise.** A Gaussian of sigma ``baseline.smooth_s`` seconds,
   then the same robust z-score once more on the combined signal (its MAD at least
   :data:`COMBINED_FLOOR`): the mean of the strongest regions and the largest of the spans sit
   above zero even where nothing moves, and peaks are measured from that level, in units
   of its own spread.

The signal has one value per frame of the video (T = flow fields + 1), in robust noise
units, its median over the video at 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.detect.params import BaselineParams
from pipeline.extract.params import RoiParams
from pipeline.extract.roi_flow import REGIONS, field_stats_spans, make_plan

#: the eye regions, handled by ``baseline.eyes`` (blinks move them most)
EYE_REGIONS: tuple[str, ...] = ("eye_r", "eye_l")
MAD_TO_SIGMA = 1.4826  # the MAD of a normal distribution, in standard deviations
COMBINED_FLOOR = 0.1  # smallest spread (z units) of the combined signal: guards a video with no motion at all
MAG = 2  # column of the mean magnitude in field_stats_spans' per-row statistics


def region_names() -> list[str]:
    """The expression regions, in the signal's column order."""
    return [name for name, _ in REGIONS]


def two_sided(back: np.ndarray, span: int) -> np.ndarray:
    """``min(back(t), back(t + span))`` per frame (``back(t)`` alone where ``t + span`` is past the end).

    ``back``: [T, ...] displacement of frame t against frame t - span.
    """
    out = back.copy()
    if span < len(back):
        out[:len(back) - span] = np.minimum(back[:len(back) - span], back[span:])
    return out


def robust_z(x: np.ndarray, floor: float) -> np.ndarray:
    """(x - median) / (1.4826 MAD) along axis 0, the MAD at least ``floor``."""
    med = np.median(x, axis=0)
    mad = np.median(np.abs(x - med), axis=0) * MAD_TO_SIGMA
    return (x - med) / np.maximum(mad, floor)


def top_k_mean(z: np.ndarray, k: int) -> np.ndarray:
    """Per row of ``z`` [T, R], the mean of its ``k`` largest values (all of them when R <= k)."""
    k = min(k, z.shape[1])
    return np.sort(z, axis=1)[:, -k:].mean(axis=1)


def gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """``x`` convolved with a normalised Gaussian of ``sigma`` samples (edges repeated); unchanged for sigma < 0.1."""
    if sigma < 0.1 or len(x) < 2:
        return x.astype(np.float64)
    radius = int(np.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(x.astype(np.float64), radius, mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def combine_eyes(z: np.ndarray, eye: np.ndarray, mode: str) -> np.ndarray:
    """The region z-scores [T, R] that count, by ``baseline.eyes`` (``eye``: [R] which columns are eye regions)."""
    if mode == "keep":
        return z
    if mode == "ignore":
        return z[:, ~eye]
    return z[:, ~eye] - z[:, eye].max(axis=1, keepdims=True)  # subtract


def region_displacements(flow: Any, landmarks: np.ndarray, roi: RoiParams, spans: list[int]) -> list[np.ndarray]:
    """Per span k of ``spans``, per frame and expression region, the displacement of frame t against
    frame t - k (fewer at the start): mean magnitude of roi_flow's head-free flow summed over the k
    fields before t, in percent of the inter-ocular distance, float64 [T, regions] (frame 0: 0).
    One pass over the flow for every span (:func:`pipeline.extract.roi_flow.field_stats_spans`).

    ``flow``: [T-1, H, W, 2] pixels (an array or an h5py dataset, read chunk by chunk).
    """
    n_fields, height, width = flow.shape[0], flow.shape[1], flow.shape[2]
    plan = make_plan(landmarks, height, width, roi)
    _, accs = field_stats_spans(flow, plan, spans)
    outs = []
    for acc in accs:
        out = np.zeros((n_fields + 1, len(REGIONS)))
        out[1:] = acc[:, :len(REGIONS), MAG] * (100.0 / plan.iod)
        outs.append(out)
    return outs


def motion_signal(flow: Any, landmarks: np.ndarray, roi: RoiParams, params: BaselineParams,
                  fps: float) -> np.ndarray:
    """The baseline's motion signal of one video, float64 [T] (see the module docstring)."""
    eye = np.array([name in EYE_REGIONS for name in region_names()])
    combined = None
    spans = params.reference_spans(roi.reference_pairs)
    for span, displacement in zip(spans, region_displacements(flow, landmarks, roi, spans)):
        z = robust_z(two_sided(displacement, span), params.noise_floor)
        s = top_k_mean(combine_eyes(z, eye, params.eyes), params.top_k)
        combined = s if combined is None else np.maximum(combined, s)
    assert combined is not None  # spans is never empty (BaselineParams.check)
    smooth = gaussian_smooth(combined, params.smooth_s * fps)
    return robust_z(smooth, COMBINED_FLOOR)
