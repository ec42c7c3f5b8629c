"""The pipeline's tables (``videos.csv``, ``annotations.csv``, ``frames.csv``): schema, I/O.

* ``videos.csv``: video, subject, fps, n_frames, source, kind (``frames`` or ``file``),
  color (1 colour, 0 grayscale); resample adds source_fps.
* ``annotations.csv``: video, subject, onset, apex, offset, type (``macro``/``micro``),
  source_onset, source_apex, source_offset. Frames are 0-based positions in the
  processed sequence, intervals inclusive; ``source_*`` keep the dataset's numbering.
* ``frames.csv``: video, frame (0-based position), source_frame (the dataset's frame
  number), path (image file; empty for video files, where source_frame is the
  0-based decode index). Resample keeps only the rows of kept frames, renumbered.
  With ``resample.merge`` enabled (:mod:`pipeline.merge`) resample's frames.csv and
  annotations.csv (and distractors.csv) add ``source_video``: the ingest video a row
  comes from, so that a merged video (``006_99``) names frames of several source
  folders (``path`` is per frame) and exports map back to the source video.
* ``distractors.csv`` (only where the dataset brings one: the synthetic presets): video,
  subject, kind (``blink``, ``turn``, ``jerk``, ``lighting``), start, end, source_start,
  source_end, then the generator's own columns. start/end are 0-based positions in the
  stage's frame sequence, inclusive, as onset/offset; ``source_*`` the dataset's numbers.
  The dataset's own file (``data/raw/<ds>/distractors.csv``) has start/end in its numbering
  and no ``source_*`` columns. Absent is normal: real datasets list no distractors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import InputError
from pipeline.io.atomic import atomic_path

VIDEO_COLUMNS = ["video", "subject", "fps", "n_frames", "source", "kind", "color"]
ANNOTATION_COLUMNS = ["video", "subject", "onset", "apex", "offset", "type",
                      "source_onset", "source_apex", "source_offset"]
FRAME_COLUMNS = ["video", "frame", "source_frame", "path"]
DISTRACTOR_COLUMNS = ["video", "subject", "kind", "start", "end", "source_start", "source_end"]
#: Resample's column naming the ingest video of each row of a merged video (resample.merge; absent when off).
SOURCE_VIDEO = "source_video"
#: The distractor table's file name, in a synthetic dataset's root and in the ingest/resample folders.
DISTRACTORS_FILE = "distractors.csv"
TYPES = ("macro", "micro")

_DTYPES = {"video": str, "subject": str, "source": str, "kind": str, "type": str, "path": str}


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    """Write a CSV atomically (:func:`pipeline.io.atomic.atomic_path`: temporary name, then rename)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_table(path: str | Path, columns: list[str]) -> pd.DataFrame:
    """Read a pipeline table, checking that the required ``columns`` are present."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: table not found. Run the stage that writes it first (dvc repro).")
    df = pd.read_csv(path, dtype={c: t for c, t in _DTYPES.items()}, keep_default_na=False)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}. Expected at least: {', '.join(columns)}.")
    return df


def read_videos(path: str | Path) -> pd.DataFrame:
    """Read a ``videos.csv``."""
    return read_table(path, VIDEO_COLUMNS)


def read_annotations(path: str | Path) -> pd.DataFrame:
    """Read an ``annotations.csv``."""
    return read_table(path, ANNOTATION_COLUMNS)


def read_frames(path: str | Path) -> pd.DataFrame:
    """Read a ``frames.csv``."""
    return read_table(path, FRAME_COLUMNS)


def read_distractors(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame | None:
    """Read a ``distractors.csv``, or ``None`` when there is none (datasets without a distractor table).

    ``columns``: the required columns (default :data:`DISTRACTOR_COLUMNS`; the dataset's own
    file needs only video, subject, kind, start, end). start and end (and ``source_*`` when
    present) must be integers with start <= end; other columns are kept as read.
    """
    path = Path(path)
    if not path.is_file():
        return None
    df = read_table(path, DISTRACTOR_COLUMNS if columns is None else columns)
    for col in [c for c in ("start", "end", "source_start", "source_end") if c in df.columns]:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | (values.fillna(0) != values.fillna(0).round())
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise InputError(f"{path}: column '{col}' row {i + 2} holds '{df[col].iloc[i]}', expected an integer "
                             "frame number. Fix the row or rerun the stage that writes this file.")
        df[col] = values.astype("int64")
    reversed_ = df["start"] > df["end"]
    if reversed_.any():
        i = int(reversed_.to_numpy().nonzero()[0][0])
        raise InputError(f"{path}: row {i + 2} (video {df['video'].iloc[i]}) has start {df['start'].iloc[i]} > "
                         f"end {df['end'].iloc[i]}. Fix the row or rerun the stage that writes this file.")
    return df


def to_source_frames(frames: pd.DataFrame, video: str, positions, end: bool = False) -> "list[int]":
    """Map 0-based positions of ``video`` in a ``frames.csv`` to the dataset's frame numbers.

    This is the one function through which any export back to a dataset's own numbering
    goes (MEGC prediction files, ``m2es spot`` output). With ``end=False`` a position maps
    to the number of its kept frame (right for onsets and apexes); with ``end=True`` it
    maps to the last source frame before the next kept one (right for offsets: at
    200 -> 30 fps a kept frame stands for a sub-segment of 6 or 7 source frames). The
    last kept frame stands for the median source step. Positions past the last frame
    are clipped to it. In a merged video (``source_video`` column) the numbers are those
    of the part each position lies in, and the last kept frame of each part is a last
    frame as above (:func:`to_source_intervals` says which part).
    """
    rows = _video_rows(frames, video)
    numbers = rows["source_frame"].to_numpy(dtype=np.int64)
    idx = np.clip(np.asarray(positions, dtype=np.int64), 0, len(numbers) - 1)
    if not end:
        return [int(n) for n in numbers[idx]]
    parts = _parts(rows)
    same = parts[1:] == parts[:-1]                      # the next kept frame lies in the same part
    diffs = np.diff(numbers)[same]
    step = int(np.median(diffs)) if len(diffs) else 1
    ends = np.append(np.where(same, numbers[1:] - 1, numbers[:-1] + step - 1), numbers[-1] + step - 1)
    return [int(n) for n in ends[idx]]


def _video_rows(frames: pd.DataFrame, video: str) -> pd.DataFrame:
    rows = frames[frames["video"] == video].sort_values("frame")
    if rows.empty:
        raise InputError(f"frames table: no frames for video '{video}'. Rerun ingest and resample.")
    return rows


def _parts(rows: pd.DataFrame) -> np.ndarray:
    """The source video of each row: its ``source_video``, or the video itself (no merge)."""
    col = SOURCE_VIDEO if SOURCE_VIDEO in rows.columns else "video"
    return rows[col].astype(str).to_numpy(dtype=object) if len(rows) else np.array([], dtype=object)


def to_source_intervals(frames: pd.DataFrame, video: str, onset, offset
                        ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The source video of each interval [onset, offset] (positions of ``video``) and the interval clipped to it.

    For a video that is not merged: ``video`` and the positions unchanged. For a merged one (``resample.merge``) an interval lies in the part holding the
    most of its kept frames (ties: the earlier part) and is clipped to that part's
    positions: each prediction stays one interval (none is split at a boundary), so an
    export has as many rows as the evaluated predictions. Positions stay those of
    ``video``; :func:`to_source_frames` then gives the part's own numbers.
    """
    rows = _video_rows(frames, video)
    parts = _parts(rows)
    n = len(parts)
    if (parts == parts[0]).all():
        return [str(parts[0])] * len(np.atleast_1d(onset)), np.asarray(onset), np.asarray(offset)
    on = np.clip(np.asarray(onset, dtype=np.int64), 0, n - 1)
    off = np.clip(np.asarray(offset, dtype=np.int64), on, n - 1)
    starts = np.flatnonzero(np.r_[True, parts[1:] != parts[:-1]])
    ends = np.r_[starts[1:] - 1, n - 1]
    names: list[str] = []
    new_on, new_off = on.copy(), off.copy()
    for i, (a, b) in enumerate(zip(on, off)):
        overlap = np.minimum(ends, b) - np.maximum(starts, a) + 1
        k = int(np.argmax(overlap))                    # the first maximum: the earlier part on a tie
        names.append(str(parts[starts[k]]))
        new_on[i], new_off[i] = max(a, starts[k]), min(b, ends[k])
    return names, new_on, new_off
