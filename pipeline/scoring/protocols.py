"""How score thresholds (per type) and the epoch are chosen before F1 is reported.

Three protocols, reported side by side:

* ``paper``: thresholds and epoch that maximise overall F1 on the test predictions
  themselves, pooled over all subjects, as the published code does. Optimistic: the
  ground truth being scored chose the thresholds. Reported as ``paper-optimistic``.
* ``cross-fold`` (default, honest): for each held-out subject, thresholds and epoch
  maximise overall F1 on the pooled out-of-fold predictions of all *other* subjects and
  are then applied to that subject; no subject's ground truth touches its own
  thresholds.
* ``fixed``: thresholds and epoch from ``params.yaml: evaluate.fixed``.

The search runs over a grid of thresholds (one per type) and every epoch, jointly,
maximising overall F1 = 2 (TP_macro + TP_micro) / (predictions + ground truths).
It is vectorised: predictions are matched once per epoch (see
:mod:`pipeline.scoring.metrics`: flags stay valid for every score threshold), then TP and
prediction counts at every grid threshold are histogrammed per (subject, epoch, type);
leaving one subject out is a subtraction. Ties go to the latest epoch and the highest
thresholds (fewer predictions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, InputError
from pipeline.io.atomic import write_json
from pipeline.io.tables import TYPES
from pipeline.scoring.metrics import Matching, f1_score

PROTOCOLS = ("cross-fold", "paper", "fixed")
#: The name each protocol carries in every output; ``paper`` is always labelled optimistic.
OUTPUT_NAMES = {"cross-fold": "cross-fold", "paper": "paper-optimistic", "fixed": "fixed"}
DESCRIPTIONS = {
    "cross-fold": "honest: per held-out subject, thresholds and epoch chosen on the other subjects' "
                  "out-of-fold predictions",
    "paper": "OPTIMISTIC: thresholds and epoch chosen to maximise F1 on the test predictions themselves "
             "(as the published code does)",
    "fixed": "thresholds and epoch fixed in params.yaml (evaluate.fixed)",
}


@dataclass(frozen=True)
class Choice:
    """An epoch and one score threshold per type."""

    epoch: int
    thresholds: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"epoch": int(self.epoch), **{t: float(self.thresholds[t]) for t in TYPES}}


@dataclass
class Cube:
    """TP and prediction counts at every grid threshold, per subject, epoch and type.

    ``tp``/``n_pred``: int64 [subjects, epochs, types, grid]; ``n_gt``: int64
    [subjects, types]. Counts at grid index k are those of predictions with
    ``score >= grid[k]``.
    """

    subjects: list[str]
    epochs: list[int]
    grid: np.ndarray
    tp: np.ndarray
    n_pred: np.ndarray
    n_gt: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)


def threshold_grid(section: Mapping[str, Any]) -> np.ndarray:
    """The threshold grid from ``{min, max, num}`` (evaluate.threshold_grid)."""
    try:
        lo, hi, num = float(section["min"]), float(section["max"]), int(section["num"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"params.yaml: evaluate.threshold_grid needs numeric min, max, num ({exc}).") from exc
    if num < 1 or hi < lo:
        raise ConfigError(f"params.yaml: evaluate.threshold_grid: need num >= 1 and max >= min, got {dict(section)}.")
    return np.round(np.linspace(lo, hi, num), 10)  # 0.7, not 0.7000000000000001: outputs read back exactly


def _codes(values: np.ndarray, levels: Sequence[Any]) -> np.ndarray:
    """Index of each value in ``levels`` (all values must be present)."""
    lookup = {v: i for i, v in enumerate(levels)}
    return np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))


def build_cube(pred: pd.DataFrame, gt: pd.DataFrame, matching: Matching, subjects: Sequence[str],
               epochs: Sequence[int], grid: np.ndarray) -> Cube:
    """Histogram TP and prediction counts over the grid (vectorised, one pass).

    ``pred``: subject, epoch, type, score, aligned with ``matching``; ``gt``: subject, type.
    """
    S, E, T, G = len(subjects), len(epochs), len(TYPES), len(grid)
    n_cells = S * E * T
    tp = np.zeros(n_cells * G, dtype=np.int64)
    n_pred = np.zeros(n_cells * G, dtype=np.int64)
    if len(pred):
        s = _codes(pred["subject"].to_numpy(), subjects)
        e = _codes(pred["epoch"].to_numpy(), epochs)
        t = _codes(pred["type"].to_numpy(), TYPES)
        k = np.searchsorted(grid, pred["score"].to_numpy(np.float64), side="right") - 1
        keep = k >= 0
        flat = (((s * E + e) * T + t) * G + k)[keep]
        n_pred = np.bincount(flat, minlength=n_cells * G)
        tp = np.bincount(flat, weights=matching.tp[keep].astype(np.float64), minlength=n_cells * G).astype(np.int64)
    # a prediction counted at bin k counts at every threshold <= grid[k]: reverse cumsum
    shape = (S, E, T, G)
    tp = np.flip(np.cumsum(np.flip(tp.reshape(shape), -1), -1), -1)
    n_pred = np.flip(np.cumsum(np.flip(n_pred.reshape(shape), -1), -1), -1)
    n_gt = np.zeros((S, T), dtype=np.int64)
    if len(gt):
        gs = _codes(gt["subject"].to_numpy(), subjects)
        gtt = _codes(gt["type"].to_numpy(), TYPES)
        np.add.at(n_gt, (gs, gtt), 1)
    return Cube(list(subjects), list(epochs), np.asarray(grid, dtype=np.float64), tp, n_pred, n_gt)


def overall_f1_surface(tp: np.ndarray, n_pred: np.ndarray, n_gt: np.ndarray) -> np.ndarray:
    """Overall F1 for every (epoch, macro threshold, micro threshold): [E, G, G].

    ``tp``/``n_pred``: [E, 2, G] (types in ``TYPES`` order); ``n_gt``: [2].
    """
    tp_sum = tp[:, 0, :, None] + tp[:, 1, None, :]
    pred_sum = n_pred[:, 0, :, None] + n_pred[:, 1, None, :]
    return f1_score(tp_sum, pred_sum, int(n_gt.sum()))


#: how the cross-fold protocol breaks ties among equally good thresholds (``evaluate.cross_fold_ties``)
TIE_BREAKS = ("highest", "middle")


def best_choice(tp: np.ndarray, n_pred: np.ndarray, n_gt: np.ndarray, epochs: Sequence[int],
                grid: np.ndarray, ties: str = "highest") -> tuple[Choice, float]:
    """The (epoch, thresholds) maximising overall F1. Ties: the latest epoch, then ``ties``:
    ``highest`` the highest thresholds (the published search's order), ``middle`` the tied
    (macro, micro) cell nearest the middle of all tied cells of that epoch, so a threshold sits
    inside the plateau of equally good values instead of at its edge, just under the lowest
    true positive's score (when no threshold finds anything, F1 0 everywhere: ``highest``)."""
    if len(TYPES) != 2:  # pragma: no cover - the joint search is written for macro + micro
        raise ConfigError("threshold search expects exactly two expression types")
    if ties not in TIE_BREAKS:
        raise ConfigError(f"threshold ties '{ties}' is not one of {', '.join(TIE_BREAKS)}.")
    f1 = overall_f1_surface(tp, n_pred, n_gt)
    flipped = f1[::-1, ::-1, ::-1]
    e, i, j = np.unravel_index(int(np.argmax(flipped)), flipped.shape)
    e, i, j = f1.shape[0] - 1 - e, f1.shape[1] - 1 - i, f1.shape[2] - 1 - j
    if ties == "middle" and f1[e, i, j] > 0:
        cells = np.argwhere(f1[e] == f1[e, i, j])
        centre = cells.mean(axis=0)
        dist = ((cells - centre) ** 2).sum(axis=1)
        i, j = (int(v) for v in cells[int(np.flatnonzero(dist == dist.min())[-1])])  # equidistant: the higher
    choice = Choice(epoch=int(epochs[e]), thresholds={TYPES[0]: float(grid[i]), TYPES[1]: float(grid[j])})
    return choice, float(f1[e, i, j])


def select_paper(cube: Cube) -> tuple[Choice, float]:
    """Thresholds and epoch maximising overall F1 on all subjects' predictions (optimistic)."""
    return best_choice(cube.tp.sum(0), cube.n_pred.sum(0), cube.n_gt.sum(0), cube.epochs, cube.grid)


def select_cross_fold(cube: Cube, ties: str = "highest") -> dict[str, Choice]:
    """Per held-out subject: the choice maximising overall F1 on all other subjects (``ties``:
    :func:`best_choice`)."""
    tp_all, pred_all, gt_all = cube.tp.sum(0), cube.n_pred.sum(0), cube.n_gt.sum(0)
    out: dict[str, Choice] = {}
    for s, subject in enumerate(cube.subjects):
        out[subject] = best_choice(tp_all - cube.tp[s], pred_all - cube.n_pred[s], gt_all - cube.n_gt[s],
                                   cube.epochs, cube.grid, ties)[0]
    return out


def select_fixed(section: Mapping[str, Any], epochs: Sequence[int]) -> Choice:
    """The choice of ``evaluate.fixed``: ``thresholds: {macro, micro}``, ``epoch: last | <int>``."""
    try:
        thresholds = {t: float(section["thresholds"][t]) for t in TYPES}
        epoch = section["epoch"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError("params.yaml: evaluate.fixed needs thresholds: {macro: x, micro: y} and "
                          f"epoch: last | <int> ({exc}).") from exc
    if epoch == "last":
        epoch = max(epochs)
    if epoch not in set(int(x) for x in epochs):
        raise ConfigError(f"params.yaml: evaluate.fixed.epoch = {epoch} is not among the predicted epochs "
                          f"{list(epochs)}; use 'last' or one of them.")
    return Choice(epoch=int(epoch), thresholds=thresholds)


def selection_mask(pred: pd.DataFrame, choices: Mapping[str, Choice]) -> np.ndarray:
    """Rows of ``pred`` kept by the per-subject ``choices`` (epoch equal, score >= type threshold)."""
    if not len(pred):
        return np.zeros(0, dtype=bool)
    subjects = list(choices)
    s = _codes(pred["subject"].to_numpy(), subjects)
    t = _codes(pred["type"].to_numpy(), TYPES)
    epoch_of = np.array([choices[x].epoch for x in subjects], dtype=np.int64)
    thr = np.array([[choices[x].thresholds[ty] for ty in TYPES] for x in subjects], dtype=np.float64)
    return (pred["epoch"].to_numpy(np.int64) == epoch_of[s]) & (pred["score"].to_numpy(np.float64) >= thr[s, t])


def apply_thresholds(pred: pd.DataFrame, thresholds: Mapping[str, float]) -> pd.DataFrame:
    """The predictions whose score reaches their type's threshold (for new videos: ``m2es spot``)."""
    missing = [t for t in TYPES if t not in thresholds]
    if missing:
        raise ConfigError(f"thresholds: missing type(s) {', '.join(missing)}; expected {', '.join(TYPES)}.")
    thr = pred["type"].map({t: float(thresholds[t]) for t in TYPES})
    return pred[pred["score"].to_numpy(np.float64) >= thr.to_numpy(np.float64)].reset_index(drop=True)


def f1_curve(cube: Cube, epoch: int) -> pd.DataFrame:
    """F1, precision, recall per type and overall (one threshold for both) vs threshold, all subjects."""
    e = cube.epochs.index(epoch)
    tp = cube.tp.sum(0)[e]
    n_pred = cube.n_pred.sum(0)[e]
    n_gt = cube.n_gt.sum(0)
    cols: dict[str, Any] = {"threshold": np.round(cube.grid, 6), "epoch": epoch}
    series = {t: (tp[i], n_pred[i], n_gt[i]) for i, t in enumerate(TYPES)}
    series["overall"] = (tp.sum(0), n_pred.sum(0), n_gt.sum())
    for name, (a, b, c) in series.items():
        cols[f"{name}_f1"] = np.round(f1_score(a, b, c), 6)
        cols[f"{name}_precision"] = np.round(np.divide(a, b, out=np.zeros(len(a)), where=b != 0), 6)
        cols[f"{name}_recall"] = np.round(a / c if c else np.zeros(len(a)), 6)
        cols[f"{name}_n_pred"] = b
    return pd.DataFrame(cols)


def save_thresholds(path: str | Path, choice: Choice, meta: Mapping[str, Any]) -> None:
    """Write the thresholds for new videos (``data/<ds>/evaluate/thresholds.json``) atomically."""
    payload = {"thresholds": {t: choice.thresholds[t] for t in TYPES}, "epoch": choice.epoch, **dict(meta)}
    write_json(path, payload)


def load_thresholds(path: str | Path) -> Choice:
    """Read a ``thresholds.json`` written by the evaluate stage."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: thresholds not found. Run `dvc repro evaluate@<dataset>` first, "
                         "or pass thresholds explicitly.")
    try:
        data = json.loads(path.read_text())
        return Choice(epoch=int(data["epoch"]), thresholds={t: float(data["thresholds"][t]) for t in TYPES})
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a thresholds file ({exc}). Rerun the evaluate stage to rewrite it.") from exc
