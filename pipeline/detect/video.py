"""One video through the baseline: its faces and flow files to its predicted intervals.

:func:`baseline_video` is the stage's per-video function.
"""

from __future__ import annotations

from typing import Any

import h5py
import pandas as pd

from pipeline.core.runner import VideoTask
from pipeline.detect.intervals import detect
from pipeline.detect.params import BaselineParams
from pipeline.detect.signal import motion_signal
from pipeline.errors import InputError
from pipeline.extract.params import RoiParams
from pipeline.extract.roi_flow import read_landmarks
from pipeline.io.artifacts import check_flow

#: the columns of one video's result (the stage adds video, subject, fold and epoch)
RESULT_COLUMNS = ["onset", "offset", "type", "score"]


def baseline_video(task: VideoTask) -> pd.DataFrame:
    """Predictions of one video: :data:`RESULT_COLUMNS`, frame numbers of the resampled sequence.

    ``task.payload``: ``faces`` and ``flow`` (paths of the video's files), ``fps`` (of the
    resampled sequence), ``n_frames`` (resample/videos.csv, checked against the flow),
    ``roi`` and ``baseline`` (the params sections as mappings).
    """
    p: dict[str, Any] = task.payload
    video = task.video
    roi = RoiParams.from_params(p["roi"])
    params = BaselineParams.from_params(p["baseline"])
    shape, _ = check_flow(p["flow"], video)
    n_frames = int(p.get("n_frames") or shape[0] + 1)
    if shape[0] + 1 != n_frames:
        raise InputError(f"{p['flow']}: video '{video}' has {shape[0]} flow fields but resample/videos.csv says "
                         f"{n_frames} frames (expected {n_frames - 1} fields). The flow file is stale: rerun the "
                         "crop and flow stages for this video (dvc repro flow).")
    landmarks = read_landmarks(p["faces"], video, shape[1], shape[2], use=("the baseline places its regions", ""))
    try:
        with h5py.File(p["flow"], "r") as f:
            signal = motion_signal(f["flow"], landmarks, roi, params, float(p["fps"]))
    except InputError as exc:
        raise InputError(f"{p['faces']}: video '{video}': {exc}") from None
    except OSError as exc:
        raise InputError(f"{p['flow']}: cannot read the flow of video '{video}' ({exc}). Delete it and rerun the "
                         "flow stage.") from None
    return detect(signal, float(p["fps"]), params)[RESULT_COLUMNS]
