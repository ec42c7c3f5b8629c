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

The ``paper`` protocol can instead run the published F1 script's own search
(``evaluate.paper_search``, :class:`PaperSearch`; the real datasets' presets set it): a range of
epochs, its own threshold grid per type, ``score > threshold`` on the scores as the script
reads them back from its text files (``%.4f`` minus the last character), and the script's tie
order (the earliest epoch, then the lowest macro and the lowest micro threshold). The
all-subjects choice of ``thresholds.json`` (``m2es spot``) and the other protocols keep the
shared grid and ``score >= threshold``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.core.section import reject_unknown
from pipeline.errors import ConfigError, InputError
from pipeline.io.atomic import write_json
from pipeline.io.tables import TYPES
from pipeline.scoring.metrics import Matching, f1_score

log = logging.getLogger(__name__)

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
    ``score >= grid[k]`` (``score > grid[k]`` when built ``strict``).
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
               epochs: Sequence[int], grid: np.ndarray, scores: np.ndarray | None = None,
               strict: bool = False) -> Cube:
    """Histogram TP and prediction counts over the grid (vectorised, one pass).

    ``pred``: subject, epoch, type, score, aligned with ``matching``; ``gt``: subject, type.
    ``scores`` replaces ``pred["score"]`` (the published search's read-back scores); ``strict``
    counts a prediction at threshold k when ``score > grid[k]`` instead of ``>=``. Rows of an
    epoch not in ``epochs`` are left out.
    """
    S, E, T, G = len(subjects), len(epochs), len(TYPES), len(grid)
    n_cells = S * E * T
    tp = np.zeros(n_cells * G, dtype=np.int64)
    n_pred = np.zeros(n_cells * G, dtype=np.int64)
    if len(pred):
        score = pred["score"].to_numpy(np.float64) if scores is None else np.asarray(scores, np.float64)
        epoch = pred["epoch"].to_numpy()
        inside = np.isin(epoch, np.asarray(list(epochs), dtype=epoch.dtype))
        rows = np.flatnonzero(inside) if not inside.all() else slice(None)
        s = _codes(pred["subject"].to_numpy()[rows], subjects)
        e = _codes(epoch[rows], epochs)
        t = _codes(pred["type"].to_numpy()[rows], TYPES)
        k = np.searchsorted(grid, score[rows], side="left" if strict else "right") - 1
        keep = k >= 0
        flat = (((s * E + e) * T + t) * G + k)[keep]
        n_pred = np.bincount(flat, minlength=n_cells * G)
        tp = np.bincount(flat, weights=matching.tp[rows][keep].astype(np.float64),
                         minlength=n_cells * G).astype(np.int64)
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


def last_argmax(f1: np.ndarray) -> tuple[int, int, int]:
    """(epoch, macro, micro) index of the last maximum of an [E, G, G] surface: among equal F1 the
    latest epoch, then the highest macro, then the highest micro threshold."""
    flipped = f1[::-1, ::-1, ::-1]
    e, i, j = np.unravel_index(int(np.argmax(flipped)), flipped.shape)
    return f1.shape[0] - 1 - int(e), f1.shape[1] - 1 - int(i), f1.shape[2] - 1 - int(j)


#: how the cross-fold protocol breaks ties among equally good thresholds (``evaluate.cross_fold_ties``)
TIE_BREAKS = ("highest", "middle")


def best_choice(tp: np.ndarray, n_pred: np.ndarray, n_gt: np.ndarray, epochs: Sequence[int],
                grid: np.ndarray, ties: str = "highest") -> tuple[Choice, float]:
    """The (epoch, thresholds) maximising overall F1. Ties: the latest epoch, then ``ties``:
    ``highest`` the highest thresholds (the order of m2es's own paper-optimistic search; the published
    script takes the lowest: ``evaluate.paper_search.ties: first``), ``middle`` the tied
    (macro, micro) cell nearest the middle of all tied cells of that epoch, so a threshold sits
    inside the plateau of equally good values instead of at its edge, just under the lowest
    true positive's score (when no threshold finds anything, F1 0 everywhere: ``highest``)."""
    if len(TYPES) != 2:  # pragma: no cover - the joint search is written for macro + micro
        raise ConfigError("threshold search expects exactly two expression types")
    if ties not in TIE_BREAKS:
        raise ConfigError(f"threshold ties '{ties}' is not one of {', '.join(TIE_BREAKS)}.")
    f1 = overall_f1_surface(tp, n_pred, n_gt)
    e, i, j = last_argmax(f1)
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


#: the published search's tie order (``first``) and ours (``last``): ``evaluate.paper_search.ties``
SEARCH_TIES = ("last", "first")
#: ``evaluate.paper_search``'s keys and the values that make it the shared search (m2es's own)
PAPER_SEARCH_DEFAULT: dict[str, Any] = {"epochs": "all", "grid": {"macro": "shared", "micro": "shared"},
                                        "strict": False, "score_text": None, "ties": "last"}


@dataclass(frozen=True)
class PaperSearch:
    """How the ``paper`` protocol searches (``params.yaml: evaluate.paper_search``).

    ``epochs``: (first, last) inclusive, in m2es's numbering (1-based count of epochs trained),
    or None for every predicted epoch; ``grids``: the thresholds per type (the shared grid where
    the section says ``shared``); ``strict``: keep ``score > threshold`` (published) instead of
    ``>=``; ``score_text``: (format, characters dropped) when scores are read as the published
    script reads its text files (``("%.4f", 1)``: 0.45678 -> ``'0.4568'`` -> 0.456), None for the
    scores as predicted; ``ties``: ``last`` (the latest epoch, then the highest thresholds: the order
    of m2es's own search) or ``first`` (the published script's: the earliest epoch, then the lowest
    macro threshold, then the lowest micro threshold, F1 computed by its formula).
    """

    epochs: tuple[int, int] | None
    grids: dict[str, np.ndarray]
    strict: bool = False
    score_text: tuple[str, int] | None = None
    ties: str = "last"
    shared: bool = True   # every grid is the shared one, and nothing else differs from m2es's own search

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None, shared_grid: np.ndarray,
                     where: str = "params.yaml: evaluate.paper_search") -> "PaperSearch":
        """Validate and build from the section (missing keys: m2es's own search)."""
        if section is None:
            section = {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where} must be a mapping ({', '.join(PAPER_SEARCH_DEFAULT)}), got {section!r}.")
        reject_unknown(section, PAPER_SEARCH_DEFAULT, where)
        sec = {**PAPER_SEARCH_DEFAULT, **dict(section)}
        epochs = sec["epochs"]
        if epochs == "all" or epochs is None:
            span = None
        else:
            try:
                first, last = (int(x) for x in epochs)
                if first != float(epochs[0]) or last != float(epochs[1]) or isinstance(epochs[0], bool):
                    raise ValueError("not whole numbers")
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}.epochs = {epochs!r}; use all or [first, last] (epoch numbers as in "
                                  f"predictions.csv, both included) ({exc}).") from None
            if first < 0 or last < first:
                raise ConfigError(f"{where}.epochs = {epochs!r}; need 0 <= first <= last.")
            span = (first, last)
        grid_sec = sec["grid"]
        if not isinstance(grid_sec, Mapping):
            raise ConfigError(f"{where}.grid must map macro and micro to shared or {{min, max, step}}, "
                              f"got {grid_sec!r}.")
        reject_unknown(grid_sec, TYPES, f"{where}.grid")
        grids, all_shared = {}, True
        for t in TYPES:
            spec = grid_sec.get(t, "shared")
            if spec == "shared":
                grids[t] = np.asarray(shared_grid, np.float64)
            else:
                grids[t] = step_grid(spec, f"{where}.grid.{t}")
                all_shared = False
        if not isinstance(sec["strict"], bool):
            raise ConfigError(f"{where}.strict = {sec['strict']!r}; use true (score > threshold, published) or false.")
        text = sec["score_text"]
        if text is not None:
            if not isinstance(text, Mapping) or set(text) != {"format", "drop_last"}:
                raise ConfigError(f"{where}.score_text = {text!r}; use null or {{format: '%.4f', drop_last: 1}}.")
            fmt, drop = str(text["format"]), text["drop_last"]
            try:
                sample = fmt % 0.5
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}.score_text.format = {fmt!r} is not a %-format of one number "
                                  f"({exc}).") from None
            if isinstance(drop, bool) or not isinstance(drop, int) or not 0 <= drop < len(sample):
                raise ConfigError(f"{where}.score_text.drop_last = {drop!r}; use a whole number of characters "
                                  f"shorter than {sample!r}.")
            text = (fmt, int(drop))
        if sec["ties"] not in SEARCH_TIES:
            raise ConfigError(f"{where}.ties = {sec['ties']!r} is not one of {', '.join(SEARCH_TIES)}.")
        shared = all_shared and span is None and not sec["strict"] and text is None and sec["ties"] == "last"
        return cls(span, grids, bool(sec["strict"]), text, str(sec["ties"]), shared)

    def read_scores(self, scores: np.ndarray | pd.Series) -> np.ndarray:
        """The scores the search compares: as predicted, or as the published script reads them back."""
        values = np.asarray(scores, np.float64)
        if self.score_text is None:
            return values
        fmt, drop = self.score_text
        cut = slice(None, -drop if drop else None)
        return np.fromiter((float((fmt % v)[cut]) for v in values.tolist()), np.float64, count=len(values))

    def searched_epochs(self, epochs: Sequence[int], where: str = "evaluate.paper_search") -> list[int]:
        """The predicted ``epochs`` inside the range; a warning when the range asks for epochs that were not
        predicted (clipped to those that were), a ConfigError when none of them was."""
        epochs = sorted(int(e) for e in epochs)
        if self.epochs is None:
            return epochs
        first, last = self.epochs
        inside = [e for e in epochs if first <= e <= last]
        if not inside:
            raise ConfigError(f"{where}.epochs = [{first}, {last}]: none of the predicted epochs {epochs} is in "
                              "range. Set epochs to a range of predicted epochs, or all.")
        if len(inside) < last - first + 1:
            log.warning("%s.epochs = [%d, %d], but only epochs %s were predicted in that range: searching those "
                        "(the published search needs a 30-epoch run predicted from epoch 6).", where, first, last,
                        _span_text(inside))
        return inside

    def union_grid(self) -> np.ndarray:
        """Every threshold of either type's grid, sorted."""
        return np.union1d(*(self.grids[t] for t in TYPES))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description (the metrics' ``search`` block of the paper protocol)."""
        return {"epochs": list(self.epochs) if self.epochs else "all",
                **{f"{t}_grid": [float(self.grids[t][0]), float(self.grids[t][-1]), len(self.grids[t])]
                   for t in TYPES},
                "comparison": ">" if self.strict else ">=",
                "score_text": {"format": self.score_text[0], "drop_last": self.score_text[1]} if self.score_text
                else None, "ties": self.ties}


def _span_text(epochs: Sequence[int]) -> str:
    """``6-8`` for consecutive epochs, else the list."""
    if epochs and list(epochs) == list(range(epochs[0], epochs[-1] + 1)):
        return f"{epochs[0]}-{epochs[-1]}" if len(epochs) > 1 else str(epochs[0])
    return str(list(epochs))


def step_grid(spec: Any, where: str) -> np.ndarray:
    """Thresholds ``min, min + step, ..., max`` from ``{min, max, step}`` (both ends included; each the
    double nearest its decimal value, as ``k / 1000`` is in the published script)."""
    try:
        if set(spec) != {"min", "max", "step"}:
            raise KeyError("needs exactly min, max, step")
        lo, hi, step = float(spec["min"]), float(spec["max"]), float(spec["step"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where} = {spec!r}; use shared or {{min, max, step}} ({exc}).") from None
    n = (hi - lo) / step if step > 0 else -1.0
    if step <= 0 or n < 0 or abs(n - round(n)) > 1e-6:
        raise ConfigError(f"{where} = {dict(spec)}; need step > 0 and max - min a whole number of steps.")
    return np.round(lo + step * np.arange(int(round(n)) + 1), 10)


def published_f1(tp: np.ndarray, n_pred: np.ndarray, n_gt: int) -> np.ndarray:
    """Overall F1 as the published script computes it: recall = TP / GT, precision = TP / predictions,
    2 r p / (r + p); 0 where nothing is predicted or nothing is hit (the same value as 2 TP / (N + GT)
    up to the last bit, which decides exact ties)."""
    tp = np.asarray(tp, np.float64)
    n_pred = np.asarray(n_pred, np.float64)
    recall = tp / n_gt if n_gt else np.zeros_like(tp)
    ok = (n_pred > 0) & (tp > 0)
    precision = np.divide(tp, n_pred, out=np.zeros_like(tp), where=ok)
    den = recall + precision
    return np.divide(2 * (recall * precision), den, out=np.zeros_like(tp), where=ok & (den > 0))


def select_paper_search(cube: Cube, search: PaperSearch) -> tuple[Choice, float]:
    """The paper protocol's choice under ``search`` on a cube built over ``search.union_grid()`` (with its
    scores and comparison) and its epochs: the (epoch, macro, micro) maximising overall F1 on all subjects,
    each type on its own grid; ties by ``search.ties``."""
    tp, n_pred, n_gt = cube.tp.sum(0), cube.n_pred.sum(0), int(cube.n_gt.sum())
    idx = {t: np.searchsorted(cube.grid, search.grids[t]) for t in TYPES}
    ma, mi = TYPES
    tp_sum = tp[:, 0, idx[ma]][:, :, None] + tp[:, 1, idx[mi]][:, None, :]
    pred_sum = n_pred[:, 0, idx[ma]][:, :, None] + n_pred[:, 1, idx[mi]][:, None, :]
    if search.ties == "first":
        f1 = published_f1(tp_sum, pred_sum, n_gt)
        e, i, j = np.unravel_index(int(np.argmax(f1)), f1.shape)   # the first maximum: as the script's loops
    else:
        f1 = f1_score(tp_sum, pred_sum, n_gt)
        e, i, j = last_argmax(f1)
    choice = Choice(epoch=int(cube.epochs[e]),
                    thresholds={ma: float(search.grids[ma][i]), mi: float(search.grids[mi][j])})
    return choice, float(f1[e, i, j])


def paper_search(pred: pd.DataFrame, gt: pd.DataFrame, matching: Matching, subjects: Sequence[str],
                 epochs: Sequence[int], search: PaperSearch) -> tuple[Choice, float, np.ndarray]:
    """The paper protocol under ``search``: (choice, its overall F1, rows of ``pred`` it keeps)."""
    scores = search.read_scores(pred["score"]) if len(pred) else np.zeros(0)
    searched = search.searched_epochs(epochs) if len(pred) else list(epochs)
    cube = build_cube(pred, gt, matching, subjects, searched, search.union_grid(), scores, search.strict)
    choice, f1 = select_paper_search(cube, search)
    mask = selection_mask(pred, {s: choice for s in subjects}, scores, search.strict)
    return choice, f1, mask


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


def selection_mask(pred: pd.DataFrame, choices: Mapping[str, Choice], scores: np.ndarray | None = None,
                   strict: bool = False) -> np.ndarray:
    """Rows of ``pred`` kept by the per-subject ``choices`` (epoch equal, score >= type threshold;
    ``score > threshold`` when ``strict``; ``scores`` replaces ``pred["score"]``)."""
    if not len(pred):
        return np.zeros(0, dtype=bool)
    subjects = list(choices)
    s = _codes(pred["subject"].to_numpy(), subjects)
    t = _codes(pred["type"].to_numpy(), TYPES)
    epoch_of = np.array([choices[x].epoch for x in subjects], dtype=np.int64)
    thr = np.array([[choices[x].thresholds[ty] for ty in TYPES] for x in subjects], dtype=np.float64)
    score = pred["score"].to_numpy(np.float64) if scores is None else np.asarray(scores, np.float64)
    passes = score > thr[s, t] if strict else score >= thr[s, t]
    return (pred["epoch"].to_numpy(np.int64) == epoch_of[s]) & passes


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
