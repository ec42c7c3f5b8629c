"""Evaluation outputs: MEGC export, timelines, training curves, the summary table.

Everything here writes files or returns text; nothing prints. Files are written through
:mod:`pipeline.io.atomic` (``write_json``/``write_text`` are re-exported here for old
imports only). Figures use ``matplotlib.figure.Figure`` directly (no pyplot, no global
backend state).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import InputError
from pipeline.io.atomic import atomic_path
from pipeline.io.atomic import write_json, write_text  # noqa: F401  (old imports; new code: pipeline.io.atomic)
from pipeline.io.tables import TYPES, to_source_frames, to_source_intervals
from pipeline.scoring.protocols import DESCRIPTIONS, OUTPUT_NAMES

log = logging.getLogger(__name__)

MEGC_COLUMNS = ["video", "onset", "offset", "type", "score"]
TYPE_COLORS = {"macro": "tab:blue", "micro": "tab:orange"}


def save_figure(fig: Any, path: str | Path) -> None:
    """Save a matplotlib figure atomically, in the format of ``path``'s suffix (default png)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt)


def export_megc(pred: pd.DataFrame, frames: pd.DataFrame) -> pd.DataFrame:
    """Final intervals in the dataset's own frame numbering (MEGC challenge format).

    ``pred``: video, onset, offset, type, score at the processed frame rate; every
    frame index goes through :func:`pipeline.io.tables.to_source_frames` (the one export
    function): onsets become the dataset numbers of their kept frames, offsets the last
    source frame each kept frame stands for (``end=True``). A prediction in a merged video
    (``resample.merge``) is exported in the source video holding most of its frames,
    clipped to it (:func:`pipeline.io.tables.to_source_intervals`; never split).
    Sorted by video, onset.
    """
    parts = []
    for video, rows in pred.groupby("video", sort=True):
        names, onset, offset = to_source_intervals(frames, video, rows["onset"].to_numpy(), rows["offset"].to_numpy())
        out = pd.DataFrame({
            "video": names,
            "onset": to_source_frames(frames, video, onset),
            "offset": to_source_frames(frames, video, offset, end=True),
            "type": rows["type"].to_numpy(),
            "score": np.round(rows["score"].to_numpy(np.float64), 6),
        })
        parts.append(out)
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("video", "type") else float) for c in MEGC_COLUMNS})
    return pd.concat(parts, ignore_index=True).sort_values(["video", "onset", "offset"], kind="stable") \
        .reset_index(drop=True)[MEGC_COLUMNS]


def pick_timeline_videos(per_video: pd.DataFrame, n: int) -> list[tuple[str, str]]:
    """Up to ``n`` videos to draw, as (video, why): the worst, the best, then evenly spread.

    ``per_video``: video, n_gt, f1 (overall F1 of the default protocol). Videos with
    ground truth are preferred; ties are broken by name.
    """
    if n <= 0 or per_video.empty:
        return []
    pool = per_video[per_video["n_gt"] > 0]
    if pool.empty:
        pool = per_video
    ranked = pool.sort_values(["f1", "video"], kind="stable").reset_index(drop=True)
    picks: list[tuple[str, str]] = [(ranked.loc[0, "video"], "worst")]
    if len(ranked) > 1 and n > 1:
        picks.append((ranked.loc[len(ranked) - 1, "video"], "best"))
    for q in np.linspace(0, len(ranked) - 1, num=max(n - 2, 0) + 2)[1:-1]:
        if len(picks) >= min(n, len(ranked)):
            break
        i = int(round(q))
        for j in sorted(range(len(ranked)), key=lambda x: abs(x - i)):
            if ranked.loc[j, "video"] not in {v for v, _ in picks}:
                picks.append((ranked.loc[j, "video"], "middle"))
                break
    return picks


def plot_timeline(path: str | Path, video: str, gt: pd.DataFrame, pred: pd.DataFrame, kept: np.ndarray,
                  tp: np.ndarray, thresholds: Mapping[str, float], n_frames: int | None, title: str) -> None:
    """One PNG: per type, ground truth as shaded spans and predictions as bars at their score.

    ``pred`` holds the video's predictions of the chosen epoch; ``kept`` marks those at or
    above the threshold (drawn green when TP, red when FP); the rest are drawn faint.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.2), dpi=100)
    axes = fig.subplots(len(TYPES), 1, sharex=True)
    end = n_frames or int(max([1] + list(gt["offset"]) + list(pred["offset"]))) + 1
    for ax, t in zip(axes, TYPES):
        for on, off in gt.loc[gt["type"] == t, ["onset", "offset"]].itertuples(index=False):
            ax.axvspan(on, off + 1, color="0.75", alpha=0.6, lw=0)
        sel = (pred["type"] == t).to_numpy()
        on, off, score = (pred.loc[sel, c].to_numpy(np.float64) for c in ("onset", "offset", "score"))
        k, p = kept[sel], tp[sel]
        ax.hlines(score[~k], on[~k], off[~k] + 1, color="0.6", lw=1, alpha=0.5)
        ax.hlines(score[k & p], on[k & p], off[k & p] + 1, color="tab:green", lw=3, label="TP")
        ax.hlines(score[k & ~p], on[k & ~p], off[k & ~p] + 1, color="tab:red", lw=3, label="FP")
        ax.axhline(thresholds[t], color="k", ls="--", lw=0.8)
        ax.set_ylim(0, 1.05)
        ax.set_xlim(0, end)
        ax.set_ylabel(f"{t}\nscore")
    axes[-1].set_xlabel("frame (processed frame rate). Grey spans: ground truth; green: TP, red: FP, "
                       "faint: below threshold; dashed: threshold")
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def collect_training_curves(live_root: str | Path) -> pd.DataFrame:
    """Read dvclive logs ``<live_root>/<fold>/plots/metrics/**/*.tsv`` into a long table.

    Columns: fold, metric (path below ``plots/metrics`` without ``.tsv``), step, value.
    Empty (with those columns) when there are no logs.
    """
    root = Path(live_root)
    rows = []
    for tsv in sorted(root.glob("*/plots/metrics/**/*.tsv")):
        fold = tsv.relative_to(root).parts[0]
        metric = tsv.relative_to(root / fold / "plots" / "metrics").with_suffix("").as_posix()
        try:
            df = pd.read_csv(tsv, sep="\t")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise InputError(f"{tsv}: unreadable dvclive log ({exc}). Rerun the train stage.") from exc
        value_col = Path(metric).name
        if "step" not in df.columns or value_col not in df.columns:
            raise InputError(f"{tsv}: expected columns step and {value_col} (dvclive format). Rerun the train stage.")
        rows.append(pd.DataFrame({"fold": fold, "metric": metric, "step": df["step"].to_numpy(),
                                  "value": pd.to_numeric(df[value_col], errors="coerce").to_numpy()}))
    if not rows:
        return pd.DataFrame({"fold": pd.Series(dtype=str), "metric": pd.Series(dtype=str),
                             "step": pd.Series(dtype=int), "value": pd.Series(dtype=float)})
    return pd.concat(rows, ignore_index=True)


def training_curves_wide(long: pd.DataFrame) -> pd.DataFrame:
    """Per step, each metric's mean, min and max over folds (``/`` in names becomes ``_``)."""
    if long.empty:
        return pd.DataFrame({"step": pd.Series(dtype=int)})
    stats = long.groupby(["metric", "step"])["value"].agg(["mean", "min", "max"]).reset_index()
    out = None
    for metric, rows in stats.groupby("metric", sort=True):
        name = metric.replace("/", "_")
        part = rows.rename(columns={"mean": name, "min": f"{name}_min", "max": f"{name}_max"}) \
            .drop(columns="metric")
        out = part if out is None else out.merge(part, on="step", how="outer")
    return out.sort_values("step").reset_index(drop=True).round(6)


def with_caveats(title: str, caveats: Sequence[str], width: int = 120) -> str:
    """A picture's title with its caveats (:func:`pipeline.scoring.caveats.caveat_lines`) below it, each
    wrapped at ``width`` characters."""
    import textwrap

    return "\n".join([title] + [part for line in caveats for part in textwrap.wrap(line, width)])


def plot_training_curves(long: pd.DataFrame, path: str | Path, title: str, caveats: Sequence[str] = ()) -> Any:
    """One panel per metric: a thin line per fold (one colour per fold in every panel, named in a legend
    beside the panels) and the mean over folds in black, against the epoch (dvclive's step + 1: the
    1-based numbering of predictions.csv); ``caveats`` under the title. Returns the figure."""
    import matplotlib as mpl
    from matplotlib.figure import Figure

    metrics = sorted(long["metric"].unique()) if not long.empty else []
    folds = sorted(long["fold"].unique()) if not long.empty else []
    cols = min(3, max(1, len(metrics)))
    nrows = max(1, math.ceil(len(metrics) / cols))
    legend_cols = max(1, math.ceil(len(folds) / 24))
    legend_w = 1.3 * legend_cols if folds else 0.0
    fig = Figure(figsize=(4.5 * cols + legend_w, 3.2 * nrows + 0.25 * len(caveats)), dpi=100)
    axes = np.atleast_1d(fig.subplots(nrows, cols)).ravel()
    if not metrics:
        axes[0].text(0.5, 0.5, "no dvclive training logs found", ha="center", va="center")
        axes[0].set_axis_off()
    cmap = mpl.colormaps["tab20" if len(folds) > 10 else "tab10"]
    colors = {f: cmap(i % cmap.N) for i, f in enumerate(folds)}
    handles = {}
    for ax, metric in zip(axes, metrics):
        rows = long[long["metric"] == metric]
        for fold, fold_rows in rows.groupby("fold"):
            (line,) = ax.plot(fold_rows["step"] + 1, fold_rows["value"], lw=0.8, alpha=0.6, color=colors[fold],
                              label=str(fold))
            handles.setdefault(fold, line)
        mean = rows.groupby("step")["value"].mean()
        (line,) = ax.plot(mean.index + 1, mean.to_numpy(), color="k", lw=2, label="mean over folds")
        handles.setdefault("mean over folds", line)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("epoch")
    for ax in axes[len(metrics):] if metrics else []:
        ax.set_axis_off()
    fig.suptitle(with_caveats(title, caveats, width=int(11 * fig.get_figwidth())), fontsize=9)
    right = 1.0 - legend_w / fig.get_figwidth()
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center right", fontsize=7, ncols=legend_cols,
                   title="fold", title_fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, right, 1))
    save_figure(fig, path)
    return fig


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def spread(values: Sequence[float]) -> dict[str, float]:
    """min, median, max of per-subject choices (how cross-fold thresholds are summarised)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return {"min": math.nan, "median": math.nan, "max": math.nan}
    return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}


def _spread(d: Mapping[str, float], digits: int = 2) -> str:
    if d["min"] == d["max"]:
        return f"{d['min']:.{digits}f}"
    return f"{d['min']:.{digits}f}-{d['max']:.{digits}f} (median {d['median']:.{digits}f})"


def summary_markdown(doc: Mapping[str, Any], per_subject: pd.DataFrame, default_column: str) -> str:
    """The end-of-stage table (Markdown) from the metrics document written to metrics/<ds>.json.

    ``per_subject`` is the per-subject table; ``default_column`` the column prefix of the
    default protocol in it (its ``<prefix>_f1`` column lists the weakest subjects).
    """
    gt = doc["ground_truth"]
    lines = [f"# Evaluation: {doc['dataset']}", ""]
    if doc.get("caveats"):
        lines += ["**Read with these caveats:**", ""] + [f"- {c}" for c in doc["caveats"]] + [""]
    lines += [
        f"IoU >= {doc['iou_threshold']}; ground truth: {gt['macro']} macro + {gt['micro']} micro = "
        f"{gt['overall']} intervals in {gt['videos']} videos, {gt['subjects']} subjects; "
        f"{doc['predictions']['rows']} predictions over {len(doc['predictions']['epochs'])} epoch(s).",
        f"Default: protocol **{doc['default']['protocol']}**, counting **{doc['default']['counting']}**. "
        "`paper-optimistic` chooses thresholds and epoch on the very predictions it scores (as the "
        "published code does); it is an upper bound, not a result.",
    ]
    names = {v: k for k, v in OUTPUT_NAMES.items()}
    lines += [""] + [f"- `{name}`: {DESCRIPTIONS[names[name]]}" for name in doc["protocols"]]
    if "published" in doc["countings"]:
        lines.append("Counting `published` (the published code's rule) lets several predictions hit one ground truth: "
                     "TP can exceed the ground truths, so recall and F1 can exceed 1; FN counts ground truths that "
                     "no prediction found.")
    search = next((b["search"] for c in doc["countings"] for b in doc[c].values() if "search" in b), None)
    if search:
        lines.append(f"`paper-optimistic` searches as `evaluate.paper_search` sets (docs/reproduce.md): epochs "
                     f"{search['epochs']}, macro thresholds "
                     f"{search['macro_grid'][0]:.3f}-{search['macro_grid'][1]:.3f}, "
                     f"micro {search['micro_grid'][0]:.3f}-{search['micro_grid'][1]:.3f}, score {search['comparison']} "
                     f"threshold, scores read as {search['score_text'] or 'predicted'}, ties {search['ties']}.")
    if doc.get("reproduction"):
        lines.append(reproduction_markdown(doc["reproduction"]))
    lines += [
        "",
        "| protocol | counting | macro F1 | micro F1 | overall F1 | precision | recall | TP | FP | FN | epoch | "
        "threshold macro | threshold micro |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for counting in doc["countings"]:
        for name, block in doc[counting].items():
            o = block["overall"]
            sel = block["selection"]
            if "per_subject" in sel:
                ps = sel["per_subject"]
                epoch = _spread(ps["epoch"], 0)
                tma, tmi = _spread(ps["macro"]), _spread(ps["micro"])
            else:
                digits = 3 if "search" in block else 2   # the published search's thresholds step by 0.001
                epoch, tma, tmi = str(sel["epoch"]), f"{sel['macro']:.{digits}f}", f"{sel['micro']:.{digits}f}"
            lines.append(f"| {name} | {counting} | {_fmt(block['macro']['f1'])} | {_fmt(block['micro']['f1'])} | "
                         f"{_fmt(o['f1'])} | {_fmt(o['precision'])} | {_fmt(o['recall'])} | {o['tp']} | {o['fp']} | "
                         f"{o['fn']} | {epoch} | {tma} | {tmi} |")
    allsub = doc[doc["default"]["counting"]]["cross-fold"]["selection"].get("all_subjects") \
        if "cross-fold" in doc[doc["default"]["counting"]] else None
    if allsub:
        lines += ["", f"Thresholds for new videos (chosen on all subjects, `thresholds.json`): macro "
                      f"{allsub['macro']:.2f}, micro {allsub['micro']:.2f}, epoch {allsub['epoch']}."]
    if not per_subject.empty:
        col = f"{default_column}_f1"
        worst = per_subject.sort_values([col, "subject"], kind="stable").head(3)
        lines += ["", f"Lowest per-subject overall F1 ({doc['default']['protocol']}): " + ", ".join(
            f"{s} {f:.3f}" for s, f in zip(worst["subject"], worst[col]))]
    return "\n".join(lines) + "\n"


def reproduction_markdown(block: Mapping[str, Any]) -> str:
    """One sentence: which published-protocol switches were on (``block``: details.json's ``reproduction``,
    :func:`pipeline.scoring.caveats.reproduction`), its short code first."""
    def state(entry: Mapping[str, Any]) -> str:
        value = entry["value"]
        mark = {True: "published", False: "not published", None: "unknown"}[entry["published"]]
        if isinstance(value, Mapping):   # the paper search: its knobs are in the line above
            return mark
        return f"{'null' if value is None else str(value).lower()} ({mark})"

    parts = [f"`{name}` {state(entry)}" for name, entry in block.items() if name != "code"]
    return (f"Published-protocol switches (docs/reproduce.md; code `{block['code']}`, as `m2es summary` prints it): "
            + ", ".join(parts) + ".")


def baseline_markdown(doc: Mapping[str, Any]) -> str:
    """The summary's comparison of IAENet and the non-learned baseline (``doc["baseline"]``): macro, micro
    and overall F1 under the cross-fold and paper-optimistic protocols, default counting; "" without a baseline."""
    base = doc.get("baseline")
    if not base:
        return ""
    counting = base.get("counting", doc["default"]["counting"])
    lines = ["", f"## IAENet beside a non-learned baseline ({counting})", "",
             f"Baseline `{base['method']}`: {base.get('description') or 'no learning'}; its score thresholds are "
             "chosen by the same protocols as IAENet's, so the gap is what learning adds.", "",
             "| method | protocol | macro F1 | micro F1 | overall F1 | TP | FP | FN |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in ("cross-fold", "paper-optimistic"):
        for label, blocks in (("IAENet", doc.get(counting, {})), ("baseline", base)):
            b = blocks.get(name)
            if not b:
                continue
            o = b["overall"]
            lines.append(f"| {label} | {name} | {_fmt(b['macro']['f1'])} | {_fmt(b['micro']['f1'])} | "
                         f"{_fmt(o['f1'])} | {o['tp']} | {o['fp']} | {o['fn']} |")
    return "\n".join(lines) + "\n"

