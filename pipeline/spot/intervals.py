"""Model-rate positions to the input's frame numbers and seconds, and interval arithmetic.

Frame numbers are the input's: the 0-based decode index for video files, the folder's own
numbers for frame folders; offsets are the last input frame an interval covers
(``to_source_frames(..., end=True)``). Seconds count from the first frame:
``onset_s = (onset - first) / fps`` and ``offset_s = (offset - first + 1) / fps``. The apex is
the interval's centre at the model's rate, mapped like an onset.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.io.tables import TYPES, to_source_frames
from pipeline.spot.inputs import VIDEO_NAME

POSITION_COLUMNS = ("onset", "apex", "offset", "onset_s", "apex_s", "offset_s")
SPAN_COLUMNS = ["onset", "offset", "onset_s", "offset_s"]


def overlaps(onset: np.ndarray, offset: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """True where an inclusive interval overlaps any inclusive span."""
    hit = np.zeros(len(onset), dtype=bool)
    for a, b in spans:
        hit |= (onset <= b) & (offset >= a)
    return hit


def passes(pred: pd.DataFrame, thresholds: Mapping[str, float]) -> np.ndarray:
    """True where a prediction's score reaches its type's threshold."""
    thr = pred["type"].map({t: float(thresholds[t]) for t in TYPES}).to_numpy(np.float64)
    return pred["score"].to_numpy(np.float64) >= thr


def to_input_frames(pred: pd.DataFrame, frames: pd.DataFrame, last_frame: int, first_frame: int, fps: float
                    ) -> pd.DataFrame:
    """Model-rate positions -> the input's frame numbers and seconds (module doc: onset, apex, offset)."""
    if pred.empty:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in POSITION_COLUMNS})
    onset = np.asarray(to_source_frames(frames, VIDEO_NAME, pred["onset"].to_numpy()), dtype=np.int64)
    offset = np.asarray(to_source_frames(frames, VIDEO_NAME, pred["offset"].to_numpy(), end=True), dtype=np.int64)
    offset = np.minimum(offset, last_frame)
    centre = (pred["onset"].to_numpy(np.int64) + pred["offset"].to_numpy(np.int64)) // 2
    apex = np.asarray(to_source_frames(frames, VIDEO_NAME, centre), dtype=np.int64)
    return pd.DataFrame({"onset": onset, "apex": apex, "offset": offset,
                         "onset_s": np.round((onset - first_frame) / fps, 4),
                         "apex_s": np.round((apex - first_frame) / fps, 4),
                         "offset_s": np.round((offset - first_frame + 1) / fps, 4)})


def spans_table(spans: Sequence[tuple[int, int]], frames: pd.DataFrame, last_frame: int, first_frame: int,
                fps: float) -> pd.DataFrame:
    """Lost-face spans (model-rate positions) as input frame numbers and seconds."""
    if not spans:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in SPAN_COLUMNS})
    pos = pd.DataFrame({"onset": [a for a, _ in spans], "offset": [b for _, b in spans]})
    return to_input_frames(pos, frames, last_frame, first_frame, fps)[SPAN_COLUMNS]
