"""Peak-to-interval detection on a motion signal: peaks, their intervals, type, score, suppression.

On the normalised signal of :func:`pipeline.detect.signal.motion_signal` (robust noise units,
the video's median at 0):

* **peaks**: local maxima (the first frame of a flat top) at least ``baseline.min_height``;
* **interval**: the contiguous frames around the peak where the signal stays at or above
  ``baseline.interval_fraction`` x the peak's height (inclusive onset and offset);
* **type**: ``micro`` when the interval lasts at most ``baseline.micro_max_s`` seconds
  ((offset - onset) / fps, the MEGC definition: 0.5 s), else ``macro``;
* **score**: ``h / (h + baseline.score_half)`` of the peak height h, monotone in h and in
  [0, 1) (a peak of ``score_half`` noise units scores 0.5), so the evaluate stage's 0..1
  threshold grid sweeps the heights from barely above the noise to far above it;
* **suppression**: candidates are taken by decreasing score, each dropped if it shares a
  frame with one already kept (of either type).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.detect.params import BaselineParams

COLUMNS = ["onset", "offset", "type", "score", "peak", "height"]


def find_peaks(signal: np.ndarray, min_height: float) -> np.ndarray:
    """Frames of the local maxima of ``signal`` at least ``min_height`` (the first frame of a flat top)."""
    s = np.asarray(signal, dtype=np.float64)
    if len(s) == 0:
        return np.zeros(0, np.int64)
    left = np.concatenate([[-np.inf], s[:-1]])
    # the next different value to the right decides a flat top: it must be lower
    nxt = s.copy()
    nxt[-1] = -np.inf
    for i in range(len(s) - 2, -1, -1):
        nxt[i] = s[i + 1] if s[i + 1] != s[i] else nxt[i + 1]
    return np.flatnonzero((s > left) & (s > nxt) & (s >= min_height)).astype(np.int64)


def interval_around(signal: np.ndarray, peak: int, level: float) -> tuple[int, int]:
    """(onset, offset): the contiguous frames around ``peak`` where ``signal`` >= ``level``, inclusive."""
    below = np.asarray(signal) < level
    left = np.flatnonzero(below[:peak])
    right = np.flatnonzero(below[peak + 1:])
    onset = int(left[-1]) + 1 if len(left) else 0
    offset = peak + int(right[0]) if len(right) else len(signal) - 1
    return onset, offset


def suppress(cands: pd.DataFrame) -> pd.DataFrame:
    """Keep candidates by decreasing score, dropping any that shares a frame with a kept one."""
    order = cands.sort_values(["score", "onset"], ascending=[False, True], kind="stable")
    kept: list[int] = []
    spans: list[tuple[int, int]] = []
    for i, row in zip(order.index, order.itertuples(index=False)):
        if any(row.onset <= off and on <= row.offset for on, off in spans):
            continue
        kept.append(i)
        spans.append((int(row.onset), int(row.offset)))
    return cands.loc[kept].sort_values("onset", kind="stable").reset_index(drop=True)


def detect(signal: np.ndarray, fps: float, params: BaselineParams) -> pd.DataFrame:
    """Predicted intervals of one video from its normalised motion signal: :data:`COLUMNS`, by onset."""
    rows = []
    for peak in find_peaks(signal, params.min_height):
        height = float(signal[peak])
        onset, offset = interval_around(signal, int(peak), params.interval_fraction * height)
        kind = "micro" if (offset - onset) / fps <= params.micro_max_s + 1e-9 else "macro"
        rows.append((onset, offset, kind, height / (height + params.score_half), int(peak), height))
    cands = pd.DataFrame(rows, columns=COLUMNS)
    return suppress(cands) if len(cands) else cands
