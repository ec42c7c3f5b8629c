"""Error analysis of the final predictions: what each false positive overlaps, which intervals are missed.

Works on the predictions kept by one protocol (its selection mask, one epoch per subject),
matched by :func:`pipeline.scoring.metrics.match`, in the processed (target-fps) frame
numbering of ``resample/``.

* **False positives** (kept, not TP) are labelled by what they overlap most, counted in
  frames in common (ties go to the earlier label of :data:`FP_LABELS`):

  - ``duplicate``: a ground truth of its type at IoU >= the threshold, already hit by a
    higher-scored prediction (one-to-one counting only);
  - ``mislocalised``: a ground truth of its type, IoU below the threshold;
  - ``other-type``: a ground truth of the other type;
  - ``blink``, ``turn``, ``jerk``, ``lighting``: a distractor event of that kind, when the
    dataset lists its distractors (the synthetic presets' ``distractors.csv``; other kinds a
    table holds become labels too);
  - ``nothing``: none of these. Slow head drift and sensor noise run through every synthetic
    video and are not intervals, so they are never a label: on synthetic data ``nothing``
    means that only drift, noise (and JPEG) moved there. On a dataset without a distractor
    table (every real one) it means no expression overlaps the prediction.

* **Misses** (ground truths no kept TP hits) carry their type, length bin and a label:
  ``mislocalised`` (a kept prediction of its type overlaps it but matched another ground
  truth or too little of it), ``other-type`` (only kept predictions of the other type
  overlap it), ``unspotted`` (no kept prediction overlaps it).

* **Length bins** (the paper's Fig. 4: the share of false positives among the predicted
  intervals of each length): lengths ``offset - onset + 1`` in processed frames, in bins of
  :data:`LENGTH_UNIT` = 8 frames (0.27 s at 30 fps: micro-expressions, at most 15 frames,
  fall in the first two bins), 1-8, 9-16, ...; the last of :data:`MAX_BINS` bins is open
  (121+ frames, longer than the 4-s macro cap). Predictions are binned by their length,
  ground truths by theirs.

Because a long prediction touches a frequent distractor by chance (blinks come every 5 s),
:func:`touch_chance` gives, for each label, the share of false positives that would touch
it if each were put at a uniformly random place in its own video (same length); the
summary prints it beside the share that does.

Pure functions returning DataFrames, a Markdown section and one figure
(:func:`plot_errors`, written through :func:`pipeline.scoring.report.save_figure`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.io.tables import TYPES
from pipeline.scoring.metrics import Matching, safe_ratio

#: Frames (of the processed sequence) per length bin, and the number of bins (the last one open).
LENGTH_UNIT = 8
MAX_BINS = 16
GT_LABELS = ("duplicate", "mislocalised", "other-type")
DISTRACTOR_KINDS = ("blink", "turn", "jerk", "lighting")
#: False-positive labels in tie-break order (distractor kinds outside this list follow ``lighting``).
FP_LABELS = GT_LABELS + DISTRACTOR_KINDS + ("nothing",)
MISS_LABELS = ("mislocalised", "other-type", "unspotted")
LABEL_NAMES = {
    "duplicate": "expression of its type, already hit (duplicate)",
    "mislocalised": "expression of its type, IoU below threshold",
    "other-type": "expression of the other type",
    "blink": "blink",
    "turn": "head turn",
    "jerk": "head jerk",
    "lighting": "lighting change",
    "nothing": "nothing listed",
    "unspotted": "no kept prediction overlaps it",
}
ERROR_COLUMNS = ["error", "video", "subject", "type", "onset", "offset", "length", "length_bin", "label", "overlap",
                 "overlaps", "best_iou", "score", "epoch"]
LABEL_COLORS = {"duplicate": "tab:purple", "mislocalised": "tab:orange", "other-type": "tab:brown",
                "blink": "tab:blue", "turn": "tab:green", "jerk": "tab:olive", "lighting": "gold",
                "nothing": "0.6"}


def length_bin(lengths: Sequence[int] | np.ndarray, unit: int = LENGTH_UNIT, max_bins: int = MAX_BINS) -> np.ndarray:
    """The length bin of each interval length in frames: ``(length - 1) // unit``, the last bin open."""
    lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
    return np.minimum((lengths - 1) // int(unit), int(max_bins) - 1)


def bin_name(index: int, unit: int = LENGTH_UNIT, max_bins: int = MAX_BINS) -> str:
    """``1-8``, ``9-16``, ..., and ``121+`` for the open last bin (at the defaults)."""
    lo = index * unit + 1
    return f"{lo}+" if index >= max_bins - 1 else f"{lo}-{lo + unit - 1}"


def _shared_frames(on: np.ndarray, off: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Frames in common of inclusive intervals, pairwise: int64 [len(on), len(start)], 0 where disjoint."""
    inter = np.minimum(off[:, None], end[None, :]) - np.maximum(on[:, None], start[None, :]) + 1
    return np.maximum(inter, 0).astype(np.int64)


def _intervals(df: pd.DataFrame, start: str, end: str) -> tuple[np.ndarray, np.ndarray]:
    return df[start].to_numpy(np.int64), df[end].to_numpy(np.int64)


def _label_order(distractors: pd.DataFrame | None) -> list[str]:
    """FP labels in tie-break order, with a distractor table's unknown kinds after the known ones."""
    extra = [] if distractors is None else sorted(set(distractors["kind"]) - set(FP_LABELS))
    return list(GT_LABELS + DISTRACTOR_KINDS) + extra + ["nothing"]


def label_false_positives(pred: pd.DataFrame, gt: pd.DataFrame, matching: Matching, mask: np.ndarray,
                          iou_threshold: float, distractors: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per kept false positive (``mask`` and not TP) with what it overlaps most.

    ``pred`` (video, subject, type, onset, offset, score, optionally epoch) and ``gt``
    (video, type, onset, offset) are the tables ``matching`` was computed on, row for row;
    ``distractors`` (video, kind, start, end, same numbering) is optional. Columns: video,
    subject, type, onset, offset, length, score, epoch, label (see the module doc), overlap
    (frames shared with what gave the label, 0 for ``nothing``), overlaps (every label it
    touches, ``+``-joined in tie-break order), best_iou (highest IoU with a ground truth of
    its type).
    """
    order = _label_order(distractors)
    rank = {label: i for i, label in enumerate(order)}
    sel = np.flatnonzero(np.asarray(mask, dtype=bool) & ~matching.tp)
    fp = pred.iloc[sel].reset_index(drop=True)
    n = len(fp)
    label = np.full(n, "nothing", dtype=object)
    overlap = np.zeros(n, dtype=np.int64)
    overlaps = np.full(n, "", dtype=object)
    best_iou = np.zeros(n)
    gt_by_video = gt.groupby("video", sort=False).indices if len(gt) else {}
    ev_by_video = distractors.groupby("video", sort=False).indices if distractors is not None and len(distractors) \
        else {}
    for video, rows in fp.groupby("video", sort=False).indices.items():
        on, off = _intervals(fp.iloc[rows], "onset", "offset")
        ptype = fp["type"].to_numpy()[rows]
        # candidates: (label per column, frames shared [rows, columns])
        cand_labels: list[np.ndarray] = []
        cand_shared: list[np.ndarray] = []
        if video in gt_by_video:
            g = gt.iloc[gt_by_video[video]]
            g_on, g_off = _intervals(g, "onset", "offset")
            shared = _shared_frames(on, off, g_on, g_off)
            union = np.maximum(off[:, None], g_off[None, :]) - np.minimum(on[:, None], g_on[None, :]) + 1
            iou = shared / union
            same = ptype[:, None] == g["type"].to_numpy()[None, :]
            best_iou[rows] = np.where(same, iou, 0.0).max(axis=1)
            gl = np.where(same, np.where(iou >= iou_threshold, "duplicate", "mislocalised"), "other-type")
            cand_labels.append(gl)
            cand_shared.append(shared)
        if video in ev_by_video:
            e = distractors.iloc[ev_by_video[video]]
            e_on, e_off = _intervals(e, "start", "end")
            cand_labels.append(np.broadcast_to(e["kind"].to_numpy(dtype=object)[None, :], (len(rows), len(e))))
            cand_shared.append(_shared_frames(on, off, e_on, e_off))
        if not cand_labels:
            continue
        labels = np.concatenate(cand_labels, axis=1)
        shared = np.concatenate(cand_shared, axis=1)
        priority = np.vectorize(rank.__getitem__, otypes=[np.int64])(labels) if labels.size else labels
        for i, r in enumerate(rows):
            touch = shared[i] > 0
            if not touch.any():
                continue
            # most frames in common; ties: the earlier label
            best = np.lexsort((priority[i][touch], -shared[i][touch]))[0]
            label[r] = labels[i][touch][best]
            overlap[r] = shared[i][touch][best]
            overlaps[r] = "+".join(sorted(set(labels[i][touch]), key=rank.__getitem__))
    return pd.DataFrame({
        "video": fp["video"].to_numpy(), "subject": fp["subject"].to_numpy(), "type": fp["type"].to_numpy(),
        "onset": fp["onset"].to_numpy(np.int64), "offset": fp["offset"].to_numpy(np.int64),
        "length": (fp["offset"] - fp["onset"] + 1).to_numpy(np.int64), "score": fp["score"].to_numpy(np.float64),
        "epoch": fp["epoch"].to_numpy() if "epoch" in fp.columns else np.zeros(n, dtype=np.int64),
        "label": label, "overlap": overlap, "overlaps": overlaps, "best_iou": np.round(best_iou, 6),
    })


def label_misses(pred: pd.DataFrame, gt: pd.DataFrame, matching: Matching, mask: np.ndarray,
                 iou_threshold: float) -> pd.DataFrame:
    """One row per ground truth that no kept TP hits, with its type, length and why (module doc).

    Columns: video, subject, type, onset, offset, length, label (``mislocalised``,
    ``other-type``, ``unspotted``), overlap (most frames a kept prediction of the label's
    type shares with it, 0 when unspotted), best_iou (highest IoU with a kept prediction of
    its type). ``iou_threshold`` is not used to label (the matching already decided) but
    is kept for a uniform signature with :func:`label_false_positives`.
    """
    del iou_threshold
    sel = np.asarray(mask, dtype=bool)
    hit = np.zeros(len(gt), dtype=bool)
    if len(gt):
        hit[(matching.gt_hit(sel) % (1 << 32)).astype(np.int64)] = True
    miss = gt.iloc[np.flatnonzero(~hit)].reset_index(drop=True)
    n = len(miss)
    label = np.full(n, "unspotted", dtype=object)
    overlap = np.zeros(n, dtype=np.int64)
    best_iou = np.zeros(n)
    kept = pred.iloc[np.flatnonzero(sel)]
    kept_by_video = kept.groupby("video", sort=False).indices if len(kept) else {}
    for video, rows in miss.groupby("video", sort=False).indices.items():
        if video not in kept_by_video:
            continue
        p = kept.iloc[kept_by_video[video]]
        p_on, p_off = _intervals(p, "onset", "offset")
        on, off = _intervals(miss.iloc[rows], "onset", "offset")
        shared = _shared_frames(on, off, p_on, p_off)
        union = np.maximum(off[:, None], p_off[None, :]) - np.minimum(on[:, None], p_on[None, :]) + 1
        same = miss["type"].to_numpy()[rows][:, None] == p["type"].to_numpy()[None, :]
        best_iou[rows] = np.where(same, shared / union, 0.0).max(axis=1)
        same_shared = np.where(same, shared, 0).max(axis=1)
        other_shared = np.where(~same, shared, 0).max(axis=1)
        label[rows] = np.where(same_shared > 0, "mislocalised", np.where(other_shared > 0, "other-type", "unspotted"))
        overlap[rows] = np.where(same_shared > 0, same_shared, other_shared)
    return pd.DataFrame({
        "video": miss["video"].to_numpy(), "subject": miss["subject"].to_numpy(), "type": miss["type"].to_numpy(),
        "onset": miss["onset"].to_numpy(np.int64), "offset": miss["offset"].to_numpy(np.int64),
        "length": (miss["offset"] - miss["onset"] + 1).to_numpy(np.int64), "label": label, "overlap": overlap,
        "best_iou": np.round(best_iou, 6),
    })


def _touched(cover: np.ndarray, length: int) -> float:
    """Share of the placements of a ``length``-frame interval in a video that touch a frame marked in ``cover``."""
    n = len(cover)
    length = min(max(int(length), 1), n)
    cs = np.concatenate([[0], np.cumsum(cover, dtype=np.int64)])
    return float(((cs[length:] - cs[:n - length + 1]) > 0).mean())


def touch_chance(false_positives: pd.DataFrame, gt: pd.DataFrame, distractors: pd.DataFrame | None,
                 n_frames: Mapping[str, int]) -> pd.DataFrame:
    """Per false positive, the chance that an interval of its length, put uniformly at random in its
    video (``n_frames`` per video), touches each label's intervals: columns ``mislocalised`` (an
    expression of its type), ``other-type``, each distractor kind, and ``nothing`` (none of them).
    Rows follow ``false_positives``; a video of unknown length gives NaN."""
    kinds = [] if distractors is None else [k for k in _label_order(distractors) if k in set(distractors["kind"])]
    cols = ["mislocalised", "other-type", *kinds, "nothing"]
    out = np.full((len(false_positives), len(cols)), np.nan)
    for video, rows in false_positives.groupby("video", sort=False).indices.items():
        n = int(n_frames.get(video, 0))
        if n <= 0:
            continue

        def cover(df: pd.DataFrame | None, start: str, end: str) -> np.ndarray:
            c = np.zeros(n, dtype=bool)
            if df is not None:
                for a, b in df.loc[df["video"] == video, [start, end]].itertuples(index=False):
                    c[max(int(a), 0):max(min(int(b), n - 1) + 1, 0)] = True
            return c

        by_type = {t: cover(gt[gt["type"] == t], "onset", "offset") for t in TYPES}
        by_kind = {k: cover(distractors[distractors["kind"] == k], "start", "end") for k in kinds}
        for r in rows:
            t, length = false_positives["type"].iat[r], int(false_positives["length"].iat[r])
            own, other = by_type.get(t, np.zeros(n, bool)), np.logical_or.reduce(
                [c for ty, c in by_type.items() if ty != t] or [np.zeros(n, bool)])
            covers = [own, other, *(by_kind[k] for k in kinds)]
            out[r] = [_touched(c, length) for c in covers] + [1.0 - _touched(np.logical_or.reduce(covers), length)]
    return pd.DataFrame(out, columns=cols)


def errors_by_length(pred: pd.DataFrame, gt: pd.DataFrame, matching: Matching, mask: np.ndarray,
                     false_positives: pd.DataFrame, misses: pd.DataFrame, unit: int = LENGTH_UNIT,
                     max_bins: int = MAX_BINS, labels: Sequence[str] = FP_LABELS) -> pd.DataFrame:
    """Per length bin: kept predictions, TP, FP and the FP share (the paper's Fig. 4), FP per
    label, and per type the ground truths and misses.

    Predictions are binned by their own length, ground truths by theirs. Rows run from the
    first bin to the last occupied one (at least one row). Columns: length (bin name), lo,
    hi (empty for the open last bin), n_pred, tp, fp, fp_share (empty without predictions),
    n_pred_<type>, fp_<type>, fp_<label> for each of ``labels`` (and any other label found),
    n_gt_<type>, fn_<type>.
    """
    sel = np.asarray(mask, dtype=bool)
    kept = pred[sel]
    kept_len = (kept["offset"] - kept["onset"] + 1).to_numpy(np.int64)
    gt_len = (gt["offset"] - gt["onset"] + 1).to_numpy(np.int64)
    lengths = np.concatenate([kept_len, gt_len, false_positives["length"].to_numpy(np.int64),
                              misses["length"].to_numpy(np.int64), [1]])
    n_bins = int(length_bin(lengths, unit, max_bins).max()) + 1
    idx = np.arange(n_bins)

    def count(lengths_: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        b = length_bin(lengths_, unit, max_bins)
        if where is not None:
            b = b[np.asarray(where, dtype=bool)]
        return np.bincount(b, minlength=n_bins)[:n_bins].astype(np.int64)

    out = pd.DataFrame({"length": [bin_name(i, unit, max_bins) for i in idx], "lo": idx * unit + 1,
                        "hi": [np.nan if i >= max_bins - 1 else (i + 1) * unit for i in idx]})
    out["hi"] = out["hi"].astype("Int64")
    tp_kept = matching.tp[sel]
    out["n_pred"] = count(kept_len)
    out["tp"] = count(kept_len, tp_kept)
    out["fp"] = out["n_pred"] - out["tp"]
    out["fp_share"] = np.where(out["n_pred"] > 0, np.round(safe_ratio(out["fp"], out["n_pred"]), 6), np.nan)
    k_type = kept["type"].to_numpy()
    for t in TYPES:
        out[f"n_pred_{t}"] = count(kept_len, k_type == t)
        out[f"fp_{t}"] = count(kept_len, (k_type == t) & ~tp_kept)
    fp_len = false_positives["length"].to_numpy(np.int64)
    fp_label = false_positives["label"].to_numpy()
    for lab in list(labels) + sorted(set(fp_label) - set(labels)):
        out[f"fp_{lab}"] = count(fp_len, fp_label == lab)
    g_type = gt["type"].to_numpy()
    m_len, m_type = misses["length"].to_numpy(np.int64), misses["type"].to_numpy()
    for t in TYPES:
        out[f"n_gt_{t}"] = count(gt_len, g_type == t)
        out[f"fn_{t}"] = count(m_len, m_type == t)
    return out


@dataclass
class ErrorAnalysis:
    """The error analysis of one protocol's final predictions (:func:`analyse_errors`)."""

    false_positives: pd.DataFrame
    misses: pd.DataFrame
    by_length: pd.DataFrame
    distractors: pd.DataFrame | None
    n_pred: int
    n_gt: int
    iou_threshold: float
    unit: int = LENGTH_UNIT
    max_bins: int = MAX_BINS
    chance: pd.DataFrame | None = None   # :func:`touch_chance`, rows as ``false_positives``

    @property
    def labels(self) -> list[str]:
        """The FP labels in tie-break order (a distractor table's unknown kinds included)."""
        return _label_order(self.distractors)

    def rows(self) -> pd.DataFrame:
        """``errors.csv``: one row per FP and per miss (FN), columns :data:`ERROR_COLUMNS`."""
        fp = self.false_positives.assign(error="FP")
        fn = self.misses.assign(error="FN", overlaps="", score=np.nan, epoch=pd.NA)
        parts = [df for df in (fp, fn) if len(df)]
        if not parts:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in ERROR_COLUMNS})
        both = pd.concat(parts, ignore_index=True)
        both["length_bin"] = [bin_name(int(b), self.unit, self.max_bins)
                              for b in length_bin(both["length"], self.unit, self.max_bins)]
        both["score"] = both["score"].astype(np.float64).round(6)
        return both[ERROR_COLUMNS].sort_values(["video", "onset", "offset", "error"], kind="stable") \
            .reset_index(drop=True)


def analyse_errors(pred: pd.DataFrame, gt: pd.DataFrame, matching: Matching, mask: np.ndarray,
                   iou_threshold: float, distractors: pd.DataFrame | None = None,
                   n_frames: Mapping[str, int] | None = None, unit: int = LENGTH_UNIT,
                   max_bins: int = MAX_BINS) -> ErrorAnalysis:
    """Label the false positives and misses of the predictions kept by ``mask`` and bin them by length.

    ``pred``/``gt``/``matching`` as for :func:`pipeline.scoring.metrics.count_by_type`;
    ``mask`` the protocol's selection (``ProtocolResult.mask`` in the evaluate stage);
    ``distractors`` the dataset's ``resample/distractors.csv`` or ``None`` when it has none;
    ``n_frames`` (frames per video) enables the chance levels of :func:`touch_chance`.
    """
    fps = label_false_positives(pred, gt, matching, mask, iou_threshold, distractors)
    misses = label_misses(pred, gt, matching, mask, iou_threshold)
    by_length = errors_by_length(pred, gt, matching, mask, fps, misses, unit, max_bins,
                                 labels=_label_order(distractors))
    chance = None if n_frames is None else touch_chance(fps, gt, distractors, n_frames)
    return ErrorAnalysis(fps, misses, by_length, distractors, int(np.asarray(mask, dtype=bool).sum()), len(gt),
                         float(iou_threshold), unit, max_bins, chance)


def errors_markdown(ea: ErrorAnalysis, protocol: str, fps: float | None = None) -> str:
    """The ``## Error analysis`` section of ``summary.md``: FP labels, misses, and both per length bin.

    ``protocol`` names the prediction set analysed (e.g. ``cross-fold, one-to-one``);
    ``fps`` the processed frame rate, to state the length unit in seconds.
    """
    fp, fn = ea.false_positives, ea.misses
    lines = ["", "## Error analysis", "",
             f"Final predictions of **{protocol}**: {ea.n_pred} predictions, {len(fp)} false positives; "
             f"{ea.n_gt} ground truths, {len(fn)} missed (one row each in `errors.csv`, plot `errors.png`)."]
    if ea.distractors is not None:
        kinds = ea.distractors["kind"].value_counts()
        listed = ", ".join(f"{LABEL_NAMES.get(k, k)} {int(kinds.get(k, 0))}" for k in
                           [x for x in ea.labels if x in kinds.index])
        lines.append(f"Distractors listed by the dataset (`resample/distractors.csv`): {len(ea.distractors)} "
                     f"events ({listed or 'none'}). Slow head drift and sensor noise run through every synthetic "
                     "video and are not intervals, so no false positive is labelled drift: *nothing listed* "
                     "means that only drift and noise moved there.")
    else:
        lines.append("This dataset lists no distractors (real data): false positives are labelled against the "
                     "ground truth only, and *nothing listed* means no expression overlaps them.")
    lines += ["Each false positive is labelled by what it shares most frames with; *touches*: the share of "
              "false positives overlapping such an interval at all; *by chance*: the share expected if each were "
              "put at a random place in its video (same length).", ""]
    if len(fp):
        lines += ["| false positive overlaps most | macro | micro | all | share | touches | by chance |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        counts = fp.groupby(["label", "type"]).size().unstack("type").reindex(columns=list(TYPES)).fillna(0)
        touched = fp["overlaps"].str.split("+")
        for lab in [x for x in ea.labels if x in counts.index or (ea.chance is not None and x in ea.chance)]:
            row = counts.loc[lab].astype(int) if lab in counts.index else pd.Series(0, index=list(TYPES))
            total = int(row.sum())
            name = LABEL_NAMES.get(lab, lab).replace("threshold", f"{ea.iou_threshold:g}")
            touches = (touched.map(lambda xs: xs == [""]) if lab == "nothing"
                       else touched.map(lambda xs: lab in xs)).mean()
            chance = (f"{ea.chance[lab].mean():.0%}" if ea.chance is not None and lab in ea.chance
                      and ea.chance[lab].notna().any() else "-")
            lines.append(f"| {name} | {row['macro']} | {row['micro']} | {total} | {total / len(fp):.0%} | "
                         f"{touches:.0%} | {chance} |")
    else:
        lines.append("No false positives.")
    if len(fn):
        by = fn["label"].value_counts()
        lines += ["", f"Misses: {len(fn)} = " + ", ".join(
            f"{int(by.get(k, 0))} {text}" for k, text in (
                ("unspotted", "with no kept prediction overlapping"),
                ("mislocalised", "overlapped by a kept prediction of their type that matched elsewhere or too "
                                 f"little (IoU < {ea.iou_threshold:g})"),
                ("other-type", "overlapped only by predictions of the other type"))) + "."]
    seconds = f", {ea.unit / fps:.2f} s at {fps:g} fps" if fps else ""
    lines += ["", f"Per interval length (bins of {ea.unit} frames{seconds}; predictions binned by their length, "
                  "ground truths by theirs; FP share = false positives / predictions, as the paper's Fig. 4):", "",
              "| length (frames) | predictions | FP | FP share | macro GT | macro missed | micro GT | micro missed |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in ea.by_length.to_dict("records"):
        if r["n_pred"] == 0 and r["n_gt_macro"] + r["n_gt_micro"] == 0:
            continue
        share = "-" if r["n_pred"] == 0 else f"{r['fp_share']:.2f}"
        lines.append(f"| {r['length']} | {r['n_pred']} | {r['fp']} | {share} | {r['n_gt_macro']} | {r['fn_macro']} "
                     f"| {r['n_gt_micro']} | {r['fn_micro']} |")
    return "\n".join(lines) + "\n"


def plot_errors(ea: ErrorAnalysis, path: str | Path, title: str) -> None:
    """``errors.png``: false positives per length bin stacked by label with the FP share on a second
    axis (left), and per type the ground truths and misses per length bin (right)."""
    from matplotlib.figure import Figure

    from pipeline.scoring.report import TYPE_COLORS, save_figure

    t = ea.by_length
    x = np.arange(len(t))
    fig = Figure(figsize=(13, 4.5), dpi=100)
    left, right = fig.subplots(1, 2)
    bottom = np.zeros(len(t))
    for lab in ea.labels:
        col = f"fp_{lab}"
        if col not in t.columns or not t[col].any():
            continue
        left.bar(x, t[col], bottom=bottom, color=LABEL_COLORS.get(lab), label=LABEL_NAMES.get(lab, lab), width=0.8)
        bottom += t[col].to_numpy()
    left.set_ylabel("false positives")
    share = left.twinx()
    has = t["n_pred"].to_numpy() > 0
    share.plot(x[has], t["fp_share"].to_numpy(np.float64)[has], "kD", label="FP share (right axis)")
    headroom = 1.9   # the legend sits above the bars and the FP share markers
    left.set_ylim(0, max(1.0, float(bottom.max())) * headroom)
    share.set_ylim(0, headroom)
    share.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
    share.set_ylabel("FP share (FP / predictions)")
    handles, names = left.get_legend_handles_labels()
    h2, n2 = share.get_legend_handles_labels()
    left.legend(handles + h2, names + n2, fontsize=7, loc="upper left")
    left.set_title("false positives by what they overlap most", fontsize=9)
    width = 0.4
    for k, ty in enumerate(TYPES):
        pos = x + (k - 0.5) * width
        right.bar(pos, t[f"n_gt_{ty}"], width=width, color=TYPE_COLORS[ty], alpha=0.3, label=f"{ty} ground truth")
        right.bar(pos, t[f"fn_{ty}"], width=width, color=TYPE_COLORS[ty], label=f"{ty} missed")
    right.set_ylabel("intervals")
    right.legend(fontsize=7, loc="upper right")
    right.set_title("ground truths and misses", fontsize=9)
    for ax in (left, right):
        ax.set_xticks(x)
        ax.set_xticklabels(t["length"], rotation=45, fontsize=7)
        ax.set_xlabel(f"interval length (frames, bins of {ea.unit})")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
