"""What ``m2es spot`` writes per input: intervals.csv, intervals.json, timeline.png, annotated.mp4.

Every file is written atomically (:mod:`pipeline.io.atomic`): a temporary name beside it, then
one rename, so a reader never sees half a file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import cv2
import h5py
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from pipeline.core.paths import DataPaths
from pipeline.io.atomic import atomic_path, write_json
from pipeline.io.decode import BadFrameError, open_source
from pipeline.io.h5io import read_attr_json
from pipeline.io.tables import TYPES, read_frames, read_videos, write_table
from pipeline.spot.errors import SpotError
from pipeline.spot.ground_truth import IOU_THRESHOLD
from pipeline.spot.inputs import VIDEO_NAME, SpotInput
from pipeline.spot.intervals import passes, to_input_frames
from pipeline.spot.messages import UserTerms

CSV_COLUMNS = ["video", "type", "onset", "apex", "offset", "onset_s", "apex_s", "offset_s", "score"]
TYPE_COLORS = {"macro": "tab:blue", "micro": "tab:orange"}
#: with ``--ground-truth``: spotted intervals that match one (TP) and those that do not (FP); ground truth spans
HIT_COLOR, MISS_COLOR, GT_COLOR = "tab:green", "tab:red", "0.8"
_BGR = {"macro": (200, 120, 30), "micro": (20, 140, 250)}
_LABEL_BOX = (20, 20, 20)   # annotated.mp4: labels are white text on this dark box, readable on any picture


def jsonable(obj: Any) -> Any:
    """Plain Python values for json (numpy scalars, NaN -> None)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_intervals(csv_path: Path, json_path: Path, intervals: pd.DataFrame, doc: Mapping[str, Any]) -> None:
    """``intervals.csv`` (:data:`CSV_COLUMNS`) and ``intervals.json`` (the whole report)."""
    write_table(intervals[CSV_COLUMNS], csv_path)
    write_json(json_path, jsonable(doc))


def plot_spot_timeline(path: Path, inp: SpotInput, cand: pd.DataFrame, lost: np.ndarray,
                       thresholds: Mapping[str, float], spans: pd.DataFrame, frames: pd.DataFrame, last_frame: int,
                       first_frame: int, gt: pd.DataFrame | None, title: str, hits: np.ndarray | None = None
                       ) -> None:
    """``timeline.png``: the figure of :func:`timeline_figure`, written atomically."""
    fig = timeline_figure(inp, cand, lost, thresholds, spans, frames, last_frame, first_frame, gt, title, hits)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def timeline_figure(inp: SpotInput, cand: pd.DataFrame, lost: np.ndarray, thresholds: Mapping[str, float],
                    spans: pd.DataFrame, frames: pd.DataFrame, last_frame: int, first_frame: int,
                    gt: pd.DataFrame | None, title: str, hits: np.ndarray | None = None) -> Figure:
    """Scores of every candidate over time (seconds), thresholds, kept intervals, lost-face spans, ground truth.

    Kept intervals are drawn in their type's colour; with ``hits`` (one flag per kept interval, in
    ``cand``'s order: it matches a ground truth, :func:`~pipeline.spot.ground_truth.hits`) those that match
    are green and the others red, over grey ground-truth spans.
    """
    times = to_input_frames(cand, frames, last_frame, first_frame, inp.fps) if len(cand) else None
    hit = np.zeros(len(cand), dtype=bool)
    if hits is not None and len(cand):
        kept_rows = np.flatnonzero(~lost & passes(cand, thresholds))
        if len(kept_rows) != len(hits):
            raise ValueError(f"{len(hits)} hit flags for {len(kept_rows)} kept intervals")
        hit[kept_rows] = hits
    fig = Figure(figsize=(12, 4.2), dpi=100)
    axes = fig.subplots(len(TYPES), 1, sharex=True)
    end = (last_frame - first_frame + 1) / inp.fps
    for ax, t in zip(axes, TYPES):
        if gt is not None:
            for on, off in gt.loc[gt["type"] == t, ["onset", "offset"]].itertuples(index=False):
                ax.axvspan((on - first_frame) / inp.fps, (off - first_frame + 1) / inp.fps, color=GT_COLOR, lw=0,
                           label="ground truth")
        for r in spans.itertuples():
            ax.axvspan(r.onset_s, r.offset_s, facecolor="none", edgecolor="0.4", hatch="///", lw=0)
        if times is not None:
            sel = (cand["type"] == t).to_numpy()
            score = cand["score"].to_numpy(np.float64)
            on, off = times["onset_s"].to_numpy(), times["offset_s"].to_numpy()
            keep = sel & ~lost & (score >= thresholds[t])
            faint = sel & ~keep
            ax.hlines(score[faint], on[faint], off[faint], color="0.6", lw=1, alpha=0.6, label="not kept")
            if hits is None:
                ax.hlines(score[keep], on[keep], off[keep], color=TYPE_COLORS[t], lw=3, label="spotted")
            else:
                for sel_hit, color, label in ((keep & hit, HIT_COLOR, "spotted, matches ground truth"),
                                              (keep & ~hit, MISS_COLOR, "spotted, no ground truth matched")):
                    ax.hlines(score[sel_hit], on[sel_hit], off[sel_hit], color=color, lw=3, label=label)
        ax.axhline(thresholds[t], color="k", ls="--", lw=0.8)
        ax.set_ylim(0, 1.05)
        ax.set_xlim(0, end)
        ax.set_ylabel(f"{t}\nscore")
    legend = "faint: below threshold or in a lost-face span; dashed: threshold; hatched: face lost"
    if hits is not None:
        legend = (f"green: spotted, matches a ground truth (same type, IoU >= {IOU_THRESHOLD:g}); red: spotted, "
                  f"matches none; grey spans: ground truth\n{legend}")
    else:
        legend = f"coloured: spotted; {legend}" + ("; grey spans: ground truth" if gt is not None else "")
    axes[-1].set_xlabel(f"time (s) of {inp.path.name} at {inp.fps:g} fps. {legend}", fontsize=8)
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def draw_label(img: np.ndarray, text: str, org: tuple[int, int], scale: float, thickness: int,
               swatch: tuple[int, int, int] | None = None) -> None:
    """White ``text`` with its baseline at ``org`` on a dark box (readable on any picture), after a small
    square of ``swatch`` (BGR) when given; drawn into ``img`` (BGR) in place."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x, y = org
    pad = 3
    sw = th + 2 * pad if swatch is not None else 0
    cv2.rectangle(img, (x - pad, y - th - pad), (x + sw + tw + pad, y + base + pad), _LABEL_BOX, cv2.FILLED)
    if swatch is not None:
        cv2.rectangle(img, (x, y - th), (x + th, y), swatch, cv2.FILLED)
    cv2.putText(img, text, (x + sw, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def write_annotated(path: Path, paths: DataPaths, intervals: pd.DataFrame, spans: pd.DataFrame, faces_path: Path,
                    codec: str, fps: float, terms: UserTerms | None = None) -> None:
    """A copy of the input with the face box, spotted intervals and lost-face spans drawn (mp4 via OpenCV).

    ``terms`` rewrites a decode error about the cache into the user's terms."""
    videos = read_videos(paths.ingest / "videos.csv")
    row = videos.iloc[0]
    frames = read_frames(paths.ingest / "frames.csv").sort_values("frame")
    numbers = frames["source_frame"].to_numpy(np.int64)
    source = open_source(VIDEO_NAME, str(row["kind"]), str(row["source"]), True, numbers,
                         frames["path"].tolist(), threads=2)
    with h5py.File(faces_path, "r") as f:
        box = read_attr_json(f, "box")
        ref_shape = read_attr_json(f, "frame_shape")
    on, off = intervals["onset"].to_numpy(), intervals["offset"].to_numpy()
    types, scores = intervals["type"].to_numpy(), intervals["score"].to_numpy()
    lost_on, lost_off = spans["onset"].to_numpy(), spans["offset"].to_numpy()
    size: tuple[int, int] | None = None

    def draw(pos: int, frame: np.ndarray) -> np.ndarray:
        img = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR if frame.ndim == 3 else cv2.COLOR_GRAY2BGR)
        if size is not None and (img.shape[1], img.shape[0]) != size:
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        h, w = img.shape[:2]
        n = int(numbers[pos])
        if box is not None and ref_shape:
            sx, sy = w / ref_shape[1], h / ref_shape[0]
            cv2.rectangle(img, (int(box[0] * sx), int(box[1] * sy)), (int(box[2] * sx), int(box[3] * sy)),
                          (90, 200, 90), 1)
        active = np.flatnonzero((on <= n) & (n <= off))
        for k, i in enumerate(active):
            color = _BGR.get(str(types[i]), (255, 255, 255))
            cv2.rectangle(img, (2 + 3 * k, 2 + 3 * k), (w - 3 - 3 * k, h - 3 - 3 * k), color, 3)
            draw_label(img, f"{types[i]} {scores[i]:.2f}", (10, 24 + 24 * k), 0.6, 2, color)
        if np.any((lost_on <= n) & (n <= lost_off)):
            draw_label(img, "face lost", (10, h - 32), 0.6, 2)
        draw_label(img, f"frame {n}  {(n - numbers[0]) / fps:.2f} s", (10, h - 10), 0.45, 1)
        return img

    first = source.read(0)
    size = (int(first.shape[1]), int(first.shape[0]))
    with atomic_path(path) as tmp:
        # OpenCV picks the container from the file name: write under the target's suffix, then take its place
        video_tmp = tmp.with_name(tmp.name + path.suffix)
        writer = cv2.VideoWriter(str(video_tmp), cv2.VideoWriter_fourcc(*codec), float(fps), size)
        try:
            if not writer.isOpened():
                raise SpotError(f"{path}: OpenCV cannot write {codec} video here; set params.yaml "
                                "spot.annotate_codec to a codec your OpenCV build supports (e.g. mp4v, avc1, MJPG).")
            last: np.ndarray | None = None
            for _, img in tqdm(source.map(draw, batch=32), total=len(numbers), desc="annotate", unit="frame",
                               leave=False):
                if isinstance(img, BadFrameError):
                    if last is None:
                        raise SpotError(f"{path}: {terms(str(img)) if terms else img}")
                    img = last
                writer.write(img)
                last = img
            writer.release()
            os.replace(video_tmp, tmp)
        finally:
            writer.release()
            video_tmp.unlink(missing_ok=True)
