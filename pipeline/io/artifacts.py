"""One reader per artifact kind, used by every consumer (stages, ``m2es spot``, benchmarks).

* faces (``data/<ds>/faces/<video>.h5``): :func:`read_faces`, :func:`faces_shape`;
* features (``data/<ds>/features/<video>.h5``): :func:`read_features`;
* predictions (``data/<ds>/runs/predictions.csv``): :data:`PREDICTION_COLUMNS`,
  :func:`read_predictions`; the ground truth it is scored against: :func:`read_ground_truth`.

The completeness flag (``m2es_complete``) is read one way everywhere: a per-video file
without it is incomplete (:func:`pipeline.io.h5io.is_complete_file`).
"""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import pandas as pd

from pipeline.errors import InputError
from pipeline.io.h5chunks import read_dataset
from pipeline.io.h5io import PARAMS_ATTR, is_complete_file, read_attr_json
from pipeline.io.tables import TYPES, read_annotations, read_table

#: Columns of ``runs/predictions.csv`` (frame indices in the resampled sequence; epoch 1-based).
PREDICTION_COLUMNS = ["video", "subject", "fold", "epoch", "onset", "offset", "type", "score"]


# ------------------------------------------------------------------ faces

def read_faces(path: Path, video: str, pool: Executor | None = None) -> np.ndarray:
    """The ``frames`` of a faces file, checked: uint8 [T, H, W, C] with C 1 or 3.

    The chunks are decoded by :func:`pipeline.io.h5chunks.read_dataset` (the same array as
    an h5py read), in ``pool``'s threads when given.
    """
    try:
        with h5py.File(path, "r") as f:
            if not is_complete_file(f):
                raise InputError(f"{path} (video {video}): faces file is incomplete. Rerun the crop stage.")
            if "frames" not in f:
                raise InputError(f"{path} (video {video}): no 'frames' dataset. Rerun the crop stage.")
            frames = read_dataset(f["frames"], pool=pool)
    except OSError as exc:
        raise InputError(f"{path} (video {video}): cannot read the faces file ({exc}). Rerun the crop stage.") from exc
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise InputError(f"{path} (video {video}): frames are {frames.dtype} {frames.shape}, expected uint8 "
                         "[T, H, W, C] with C = 1 or 3. Rerun the crop stage.")
    if frames.shape[0] < 2:
        raise InputError(f"{path} (video {video}): has {frames.shape[0]} frame(s); flow needs at least 2 "
                         "(no pairs, no file written). Drop the video from the dataset or fix its frames.")
    if min(frames.shape[1:3]) < 3:
        raise InputError(f"{path} (video {video}): frames of {frames.shape[1]}x{frames.shape[2]} px are too small "
                         "for TV-L1. Use a larger crop.size.")
    return frames


def faces_shape(path: Path, video: str) -> tuple[int, ...]:
    """Shape of ``frames`` without reading the pixels."""
    try:
        with h5py.File(path, "r") as f:
            if "frames" not in f:
                raise InputError(f"{path} (video {video}): no 'frames' dataset. Rerun the crop stage.")
            return tuple(f["frames"].shape)
    except OSError as exc:
        raise InputError(f"{path} (video {video}): cannot read the faces file ({exc}). Rerun the crop stage.") from exc


# ------------------------------------------------------------------ features

def read_features(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """``rgb`` and ``flow`` of one features file, concatenated [N, Drgb + Dflow], and its attrs."""
    try:
        with h5py.File(path, "r") as f:
            if not is_complete_file(f):
                raise InputError(f"{path}: incomplete features file. Rerun the features stage (dvc repro features).")
            for key in ("rgb", "flow"):
                if key not in f:
                    raise InputError(f"{path}: no '{key}' dataset. Rerun the features stage for this video.")
            rgb, flow = f["rgb"][()], f["flow"][()]
            attrs = {k: read_attr_json(f, k) for k in f.attrs if k != PARAMS_ATTR}
    except OSError as exc:
        raise InputError(f"{path}: unreadable HDF5 ({exc}). Delete it and rerun the features stage.") from exc
    if rgb.ndim != 2 or flow.ndim != 2 or rgb.shape[0] != flow.shape[0]:
        raise InputError(f"{path}: rgb {rgb.shape} and flow {flow.shape} must be [N, D] with the same N. "
                         "Rerun the features stage for this video.")
    feats = np.concatenate([rgb, flow], axis=1).astype(np.float32, copy=False)
    if not np.isfinite(feats).all():
        raise InputError(f"{path}: features contain NaN or inf. Rerun the features stage for this video.")
    return feats, attrs


# ------------------------------------------------------------------ predictions and ground truth

def _numeric(df: pd.DataFrame, path: Path, columns: Sequence[str], integer: bool) -> None:
    """Coerce ``columns`` to numbers in place, or raise an InputError naming the first bad row."""
    for col in columns:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(np.float64, na_value=np.nan))
        if integer:
            bad |= values.fillna(0) != np.round(values.fillna(0))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"{path}: column '{col}' row {i + 2} holds '{df[col].iloc[i]}', expected "
                             f"{'an integer' if integer else 'a number'}. Fix the row or rerun the stage that "
                             "writes this file.")
        df[col] = values.astype(np.int64 if integer else np.float64)


def _check_intervals(df: pd.DataFrame, path: Path, videos: pd.DataFrame) -> None:
    """Types known, onset <= offset, videos known and subjects consistent with videos.csv."""
    bad_type = ~df["type"].isin(TYPES)
    if bad_type.any():
        i = int(np.flatnonzero(bad_type.to_numpy())[0])
        raise InputError(f"{path}: row {i + 2} has type '{df['type'].iloc[i]}'; expected one of "
                         f"{', '.join(TYPES)}.")
    bad = df["onset"] > df["offset"]
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{path}: row {i + 2} (video {df['video'].iloc[i]}) has onset {df['onset'].iloc[i]} > "
                         f"offset {df['offset'].iloc[i]}. Fix the row or rerun the stage that writes it.")
    known = dict(zip(videos["video"], videos["subject"]))
    unknown = sorted(set(df["video"]) - set(known))
    if unknown:
        raise InputError(f"{path}: video(s) {', '.join(unknown[:5])} are not in resample/videos.csv. The file is "
                         "stale: rerun the stage that wrote it (dvc repro).")
    wrong = df["subject"] != df["video"].map(known)
    if wrong.any():
        i = int(np.flatnonzero(wrong.to_numpy())[0])
        raise InputError(f"{path}: row {i + 2}: video {df['video'].iloc[i]} has subject '{df['subject'].iloc[i]}' "
                         f"but resample/videos.csv says '{known[df['video'].iloc[i]]}'. Rerun the stage that "
                         "wrote it.")


def read_predictions(path: str | Path, videos: pd.DataFrame) -> pd.DataFrame:
    """Read and check ``runs/predictions.csv`` against ``videos`` (resample/videos.csv)."""
    path = Path(path)
    df = read_table(path, PREDICTION_COLUMNS)
    _numeric(df, path, ["epoch", "onset", "offset"], integer=True)
    _numeric(df, path, ["score"], integer=False)
    _check_intervals(df, path, videos)
    return df.reset_index(drop=True)


def read_ground_truth(path: str | Path, videos: pd.DataFrame) -> pd.DataFrame:
    """Read and check ``resample/annotations.csv`` (the ground truth) against ``videos``."""
    path = Path(path)
    df = read_annotations(path)
    _numeric(df, path, ["onset", "offset"], integer=True)
    _check_intervals(df, path, videos)
    return df.reset_index(drop=True)


# ------------------------------------------------------------------ faces and flow, checked without reading pixels

def _complete_digest(path: Path, video: str, stage: str) -> str:
    """The ``m2es_digest`` of a per-video file written by ``stage``, or an InputError (missing, incomplete)."""
    from pipeline.io.h5io import file_digest  # here: this section was appended to the module

    if not path.is_file():
        raise InputError(f"{path}: {stage} output for video '{video}' not found. Run `dvc repro {stage}` "
                         "(or the crop/flow stages) for this dataset first.")
    found = file_digest(path)
    if found is None:
        raise InputError(f"{path}: incomplete or unreadable {stage} output for video '{video}'. "
                         f"Delete it and rerun the {stage} stage.")
    return found


def check_faces(path: str | Path, video: str) -> tuple[tuple[int, int, int, int], str]:
    """Shape [T, H, W, C] and ``m2es_digest`` of a complete faces file, without reading the pixels.

    Raises :class:`InputError` naming the file and the fix when it is missing, incomplete,
    lacks ``frames``, or ``frames`` is not uint8 [T, H, W, C] with C 3 (RGB) or 1 (grayscale).
    """
    path = Path(path)
    found = _complete_digest(path, video, "crop")
    with h5py.File(path, "r") as f:
        if "frames" not in f:
            raise InputError(f"{path}: no 'frames' dataset for video '{video}'. Rerun the crop stage.")
        shape, dtype = f["frames"].shape, f["frames"].dtype
    if len(shape) != 4 or shape[3] not in (1, 3) or dtype != np.uint8:
        raise InputError(f"{path}: 'frames' of video '{video}' is {dtype} {tuple(shape)}; expected uint8 "
                         "[T, H, W, C] with C 3 (RGB) or 1 (grayscale). Rerun the crop stage.")
    return tuple(int(v) for v in shape), found  # type: ignore[return-value]


def check_flow(path: str | Path, video: str) -> tuple[tuple[int, int, int, int], str]:
    """Shape [T-1, H, W, 2] and ``m2es_digest`` of a complete flow file, without reading the fields.

    Raises :class:`InputError` naming the file and the fix when it is missing, incomplete,
    lacks ``flow``, or ``flow`` is not [T-1, H, W, 2].
    """
    path = Path(path)
    found = _complete_digest(path, video, "flow")
    with h5py.File(path, "r") as f:
        if "flow" not in f:
            raise InputError(f"{path}: no 'flow' dataset for video '{video}'. Rerun the flow stage.")
        shape = f["flow"].shape
    if len(shape) != 4 or shape[3] != 2:
        raise InputError(f"{path}: 'flow' of video '{video}' has shape {tuple(shape)}; expected "
                         "[T-1, H, W, 2]. Rerun the flow stage.")
    return tuple(int(v) for v in shape), found  # type: ignore[return-value]
