"""``--ground-truth``: a user's CSV of known intervals in the input's frame numbers, and scoring against it.

Not the dataset ground truth (:func:`pipeline.io.artifacts.read_ground_truth`, resampled
positions checked against ``videos.csv``): this one is a loose generic CSV (type, onset,
offset[, video]) about one input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.io.tables import TYPES
from pipeline.scoring.metrics import counts_to_dict, evaluate
from pipeline.spot.errors import SpotError
from pipeline.spot.inputs import SpotInput

IOU_THRESHOLD = 0.5


def read_user_ground_truth(path: str | Path, inp: SpotInput) -> pd.DataFrame:
    """Intervals (type, onset, offset in the input's numbering) from a generic annotations CSV."""
    path = Path(path)
    try:
        gt = pd.read_csv(path, dtype={"video": str})
    except Exception as exc:  # noqa: BLE001 - pandas parser errors
        raise SpotError(f"{path}: cannot be read as CSV ({exc}). Give a CSV with columns type, onset, offset "
                        "[, video].") from None
    missing = [c for c in ("type", "onset", "offset") if c not in gt.columns]
    if missing:
        raise SpotError(f"{path}: missing column(s) {', '.join(missing)}; expected type, onset, offset [, video].")
    if "video" in gt.columns:
        mine = gt["video"].astype(str).isin({inp.name, inp.path.stem, inp.path.name})
        gt = gt[mine] if mine.any() else gt.iloc[0:0]
    gt = gt.assign(type=gt["type"].astype(str).str.lower().str.slice(0, 5))
    return gt[gt["type"].isin(TYPES)][["type", "onset", "offset"]].reset_index(drop=True)


def score_against(intervals: pd.DataFrame, gt: pd.DataFrame, path: str) -> dict[str, Any]:
    """MEGC counts (IoU >= 0.5, one-to-one) of the intervals against a ground truth, per type."""
    pred = intervals[["type", "onset", "offset", "score"]].assign(video="v", subject="s")
    truth = gt.assign(video="v", subject="s")
    return {"file": path, "iou_threshold": IOU_THRESHOLD,
            **counts_to_dict(evaluate(pred, truth, IOU_THRESHOLD))}
