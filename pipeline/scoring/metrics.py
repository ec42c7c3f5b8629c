"""Spotting metrics: interval IoU, matching predictions to ground truth, precision/recall/F1.

A prediction is a true positive (TP) when it has a ground truth's type and
``IoU = (min(ends) - max(starts) + 1) / (max(ends) - min(starts) + 1) >= iou_threshold``
(intervals inclusive, frame indices). Matching happens within one video, one type and
one epoch (when the predictions carry an ``epoch`` column; each epoch is a separate
prediction set).

Two counting rules:

* ``one-to-one`` (default): predictions are taken by descending score (ties: table
  order); each takes the unmatched ground truth of highest IoU that passes, so every
  ground truth is matched at most once.
* ``published``: every prediction whose best IoU passes is a TP, even when another
  prediction already hit the same ground truth (what the published IAENet code does;
  recall = TP / ground truths can then exceed 1).

Because the one-to-one rule is greedy by score, the TP flags computed once on all
predictions are also the flags of every score-thresholded subset (the kept predictions
are a prefix of the score order). :mod:`pipeline.scoring.protocols` relies on this to search
thresholds without re-matching.

Precision = TP / predictions, recall = TP / ground truths, F1 = 2 TP / (predictions +
ground truths) (= the harmonic mean of the two); every ratio with a zero denominator
is 0.0. ``fn`` counts ground truths hit by no TP; ``fp`` = predictions - TP.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from pipeline.io.tables import TYPES

COUNTING_RULES = ("one-to-one", "published")
OVERALL = "overall"


def interval_iou(pred_on: np.ndarray, pred_off: np.ndarray, gt_on: np.ndarray, gt_off: np.ndarray) -> np.ndarray:
    """Pairwise IoU of inclusive frame intervals: array [len(pred), len(gt)], 0 where disjoint."""
    p_on = np.asarray(pred_on, dtype=np.float64)[:, None]
    p_off = np.asarray(pred_off, dtype=np.float64)[:, None]
    g_on = np.asarray(gt_on, dtype=np.float64)[None, :]
    g_off = np.asarray(gt_off, dtype=np.float64)[None, :]
    inter = np.minimum(p_off, g_off) - np.maximum(p_on, g_on) + 1.0
    union = np.maximum(p_off, g_off) - np.minimum(p_on, g_on) + 1.0
    return np.where(inter > 0, inter / union, 0.0)


def safe_ratio(num, den):
    """``num / den`` elementwise, 0.0 where ``den`` is 0 (scalars give a float)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)
    return float(out) if out.ndim == 0 else out


def f1_score(tp, n_pred, n_gt):
    """F1 = 2 TP / (predictions + ground truths), 0.0 when both are 0 (vectorised)."""
    return safe_ratio(2 * np.asarray(tp, dtype=np.float64), np.asarray(n_pred) + np.asarray(n_gt))


@dataclass(frozen=True)
class Counts:
    """TP, prediction and ground-truth counts of one type (or overall), with the ratios."""

    tp: int
    n_pred: int
    n_gt: int
    gt_hit: int

    @property
    def fp(self) -> int:
        """Predictions that are not TP."""
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        """Ground truths that no TP hit."""
        return self.n_gt - self.gt_hit

    @property
    def precision(self) -> float:
        """TP / predictions (0.0 without predictions)."""
        return safe_ratio(self.tp, self.n_pred)

    @property
    def recall(self) -> float:
        """TP / ground truths (0.0 without ground truths; may exceed 1 under ``published``)."""
        return safe_ratio(self.tp, self.n_gt)

    @property
    def f1(self) -> float:
        """2 TP / (predictions + ground truths)."""
        return f1_score(self.tp, self.n_pred, self.n_gt)

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.tp + other.tp, self.n_pred + other.n_pred, self.n_gt + other.n_gt,
                      self.gt_hit + other.gt_hit)

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready: f1, precision, recall, tp, fp, fn, n_pred, n_gt."""
        d = asdict(self)
        return {"f1": round(self.f1, 6), "precision": round(self.precision, 6), "recall": round(self.recall, 6),
                "tp": d["tp"], "fp": self.fp, "fn": self.fn, "n_pred": d["n_pred"], "n_gt": d["n_gt"]}


@dataclass(frozen=True)
class Matching:
    """Result of :func:`match`, aligned with the rows (positions) of the inputs.

    ``tp[i]``: prediction i is a TP; ``gt_index[i]``: position in the ground-truth table
    of the ground truth it matched (one-to-one) or its best-IoU ground truth
    (published), -1 when not a TP; ``epoch_code[i]``: its epoch's index (0 without an
    epoch column), so that (epoch_code, gt_index) identifies a hit ground truth.
    """

    tp: np.ndarray
    gt_index: np.ndarray
    epoch_code: np.ndarray

    def gt_hit(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Distinct (epoch_code, gt_index) keys hit by the TPs selected by ``mask``."""
        sel = self.tp if mask is None else (self.tp & mask)
        return np.unique(self.epoch_code[sel].astype(np.int64) * (1 << 32) + self.gt_index[sel])


def check_counting(counting: str) -> str:
    """Validate a counting rule name."""
    if counting not in COUNTING_RULES:
        raise ValueError(f"counting rule '{counting}' unknown; use one of {', '.join(COUNTING_RULES)}")
    return counting


def match(pred: pd.DataFrame, gt: pd.DataFrame, iou_threshold: float = 0.5,
          counting: str = "one-to-one") -> Matching:
    """Match predictions to ground truth within each (epoch, video, type).

    ``pred``: video, type, onset, offset, score (and optionally epoch);
    ``gt``: video, type, onset, offset. Vectorised per video; the one-to-one greedy step
    loops only over (prediction, ground truth) pairs whose IoU passes.
    """
    check_counting(counting)
    n = len(pred)
    tp = np.zeros(n, dtype=bool)
    gt_index = np.full(n, -1, dtype=np.int64)
    if "epoch" in pred.columns and n:
        epoch_code = pd.factorize(pred["epoch"].to_numpy(), sort=True)[0].astype(np.int64)
    else:
        epoch_code = np.zeros(n, dtype=np.int64)
    if n == 0 or len(gt) == 0:
        return Matching(tp, gt_index, epoch_code)

    p_video = pred["video"].astype(str).to_numpy()
    g_video = gt["video"].astype(str).to_numpy()
    type_codes = {t: i for i, t in enumerate(sorted(set(pred["type"]) | set(gt["type"])))}
    p_type = pred["type"].map(type_codes).to_numpy()
    g_type = gt["type"].map(type_codes).to_numpy()
    p_on, p_off = pred["onset"].to_numpy(np.float64), pred["offset"].to_numpy(np.float64)
    g_on, g_off = gt["onset"].to_numpy(np.float64), gt["offset"].to_numpy(np.float64)

    # candidate pairs, video by video
    gt_by_video = pd.Series(np.arange(len(gt))).groupby(g_video).indices
    pairs_p, pairs_g, pairs_iou = [], [], []
    for video, p_idx in pd.Series(np.arange(n)).groupby(p_video).indices.items():
        g_idx = gt_by_video.get(video)
        if g_idx is None:
            continue
        iou = interval_iou(p_on[p_idx], p_off[p_idx], g_on[g_idx], g_off[g_idx])
        ok = (iou >= iou_threshold) & (p_type[p_idx][:, None] == g_type[g_idx][None, :])
        pi, gi = np.nonzero(ok)
        pairs_p.append(p_idx[pi])
        pairs_g.append(g_idx[gi])
        pairs_iou.append(iou[pi, gi])
    if not pairs_p:
        return Matching(tp, gt_index, epoch_code)
    cp, cg, ciou = np.concatenate(pairs_p), np.concatenate(pairs_g), np.concatenate(pairs_iou)
    if len(cp) == 0:
        return Matching(tp, gt_index, epoch_code)

    # rank of each prediction in descending score (ties: table order)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-pred["score"].to_numpy(np.float64), kind="stable")] = np.arange(n)
    order = np.lexsort((cg, -ciou, rank[cp]))
    cp, cg = cp[order], cg[order]

    if counting == "published":
        first = np.ones(len(cp), dtype=bool)
        first[1:] = cp[1:] != cp[:-1]
        tp[cp[first]] = True
        gt_index[cp[first]] = cg[first]
        return Matching(tp, gt_index, epoch_code)

    keys = (epoch_code[cp] * len(gt) + cg).tolist()
    taken: set[int] = set()
    last = -1
    for p, g, key in zip(cp.tolist(), cg.tolist(), keys):
        if p == last or key in taken:
            continue
        taken.add(key)
        tp[p] = True
        gt_index[p] = g
        last = p
    return Matching(tp, gt_index, epoch_code)


def count_by_type(pred: pd.DataFrame, gt: pd.DataFrame, matching: Matching,
                  mask: np.ndarray | None = None) -> dict[str, Counts]:
    """Counts per type and ``overall`` (pooled) for the predictions selected by ``mask``."""
    sel = np.ones(len(pred), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    p_type = pred["type"].to_numpy()
    g_type = gt["type"].to_numpy()
    hit = matching.gt_hit(sel)
    hit_gt = (hit % (1 << 32)).astype(np.int64)
    out: dict[str, Counts] = {}
    for t in TYPES:
        in_t = sel & (p_type == t)
        out[t] = Counts(tp=int((matching.tp & in_t).sum()), n_pred=int(in_t.sum()),
                        n_gt=int((g_type == t).sum()), gt_hit=int((g_type[hit_gt] == t).sum()) if len(gt) else 0)
    total = Counts(0, 0, 0, 0)
    for t in TYPES:
        total = total + out[t]
    out[OVERALL] = total
    return out


def counts_by_group(pred: pd.DataFrame, gt: pd.DataFrame, matching: Matching, mask: np.ndarray | None,
                    key: str) -> pd.DataFrame:
    """Counts per value of column ``key`` (e.g. ``subject`` or ``video``) of both tables.

    One row per key value present in either table; columns ``tp_<type>``,
    ``n_pred_<type>``, ``n_gt_<type>``, ``gt_hit_<type>`` for each type and ``overall``,
    and ``f1_<type>`` / ``f1_overall``.
    """
    sel = np.ones(len(pred), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    keys = sorted(set(pred[key]) | set(gt[key]))
    hit_gt = (matching.gt_hit(sel) % (1 << 32)).astype(np.int64)
    p_key, p_type = pred[key].to_numpy(), pred["type"].to_numpy()
    frames = {
        "tp": pd.DataFrame({key: p_key[sel & matching.tp], "type": p_type[sel & matching.tp]}),
        "n_pred": pd.DataFrame({key: p_key[sel], "type": p_type[sel]}),
        "n_gt": gt[[key, "type"]],
        "gt_hit": gt[[key, "type"]].iloc[hit_gt],
    }
    out = pd.DataFrame(index=pd.Index(keys, name=key))
    for field, df in frames.items():
        table = df.groupby([key, "type"]).size().unstack("type") if len(df) else pd.DataFrame(index=out.index)
        for t in TYPES:
            col = table[t] if t in table.columns else pd.Series(dtype=float)
            out[f"{field}_{t}"] = col.reindex(out.index).fillna(0).astype(np.int64)
        out[f"{field}_{OVERALL}"] = sum(out[f"{field}_{t}"] for t in TYPES)
    for t in (*TYPES, OVERALL):
        out[f"f1_{t}"] = f1_score(out[f"tp_{t}"].to_numpy(), out[f"n_pred_{t}"].to_numpy(), out[f"n_gt_{t}"].to_numpy())
    return out.reset_index()


def evaluate(pred: pd.DataFrame, gt: pd.DataFrame, iou_threshold: float = 0.5,
             counting: str = "one-to-one") -> dict[str, Counts]:
    """Match and count one prediction set: ``{"macro": Counts, "micro": Counts, "overall": Counts}``.

    ``pred`` holds the final predictions (already thresholded); an ``epoch`` column, if
    present, splits it into independent sets whose counts add up.
    """
    pred = pred.reset_index(drop=True)
    gt = gt.reset_index(drop=True)
    return count_by_type(pred, gt, match(pred, gt, iou_threshold, counting))


def counts_to_dict(counts: Mapping[str, Counts]) -> dict[str, dict[str, float | int]]:
    """``{type: Counts.as_dict()}``."""
    return {k: v.as_dict() for k, v in counts.items()}
