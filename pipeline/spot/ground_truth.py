"""``--ground-truth``: a user's CSV of known intervals in the input's frame numbers, and scoring against it.

Not the dataset ground truth (:func:`pipeline.io.artifacts.read_ground_truth`, resampled
positions checked against ``videos.csv``): this one is a loose generic CSV (type, onset,
offset[, video]) about one input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.io.tables import TYPES
from pipeline.scoring.metrics import counts_to_dict, evaluate, f1_score, match
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


def _tables(intervals: pd.DataFrame, gt: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Spotted intervals and ground truth as the scoring functions take them (one video)."""
    return (intervals[["type", "onset", "offset", "score"]].assign(video="v", subject="s"),
            gt.assign(video="v", subject="s"))


def score_against(intervals: pd.DataFrame, gt: pd.DataFrame, path: str) -> dict[str, Any]:
    """MEGC counts (IoU >= 0.5, one-to-one) of the intervals against a ground truth, per type."""
    pred, truth = _tables(intervals, gt)
    return {"file": path, "iou_threshold": IOU_THRESHOLD,
            **counts_to_dict(evaluate(pred, truth, IOU_THRESHOLD))}


def hits(intervals: pd.DataFrame, gt: pd.DataFrame) -> np.ndarray:
    """True for each interval (row) that :func:`score_against` counts as a TP: it matches a ground truth of
    its type at IoU >= 0.5, one-to-one."""
    pred, truth = _tables(intervals, gt)
    return np.asarray(match(pred, truth, IOU_THRESHOLD).tp, dtype=bool)


def f1_summary(scores: Iterable[Mapping[str, Any]]) -> str:
    """``F1 macro 0.80, micro 0.50, overall 0.67`` of one or more :func:`score_against` results (their
    counts added up, so several inputs give the F1 over all of them)."""
    scores = list(scores)
    parts = []
    for t in (*TYPES, "overall"):
        tp, n_pred, n_gt = (sum(int(s[t][k]) for s in scores) for k in ("tp", "n_pred", "n_gt"))
        parts.append(f"{t} {float(f1_score(tp, n_pred, n_gt)):.2f}")
    return "F1 " + ", ".join(parts)
