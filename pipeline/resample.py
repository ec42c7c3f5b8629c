"""Stage ``resample``: ingest tables at the source fps -> tables at the target fps.

``python -m pipeline.resample --dataset NAME`` keeps, per video, the source positions
``floor(j * src / tgt)`` for j = 0, 1, ... while inside the video (exact rational
arithmetic). For SAMM-LV 200 -> 30 fps this is exactly the published rule: groups of
20 frames split into sub-segments of 6, 7, 7, keeping the first frame of each
(positions 0, 6, 13, 20, 26, 33, ...). Equal rates keep every frame; a target above
the source rate is refused (frames are never duplicated).

``resample.merge`` (off by default; on in the samm_lv preset, the published SAMM-LV
protocol): before the kept frames are chosen, a subject's short videos are concatenated
into ``<subject>_99`` and the small subjects into ``099_99`` (:mod:`pipeline.merge`:
rule, order, naming); the kept frames are then chosen over each merged sequence, and
frames.csv, annotations.csv and distractors.csv gain ``source_video``. Off, the tables
are exactly what they were before the option existed.

Annotations are remapped onto the kept frames (:func:`remap_intervals`) by one of two
rules, ``resample.interval_map``:

* ``published`` (default; the published SAMM-LV tooling): every frame, onset, apex and
  offset alike, -> the last kept frame at or before it. For SAMM-LV (1-based frame
  numbers f, 200 -> 30 fps) that is 0-based position ``ceil(3f / 20) - 1``, i.e. the
  published processed table's 1-based ``ceil(f / (20/3))`` minus one. The tooling itself
  divided by 6.667, which differs from exact 20/3 on a few frames (docs/reproduce.md).
* ``kept_frames`` (ours; the synthetic SAMM-LV preset): onset -> the first kept frame at
  or after it, offset -> the last kept frame at or before it, apex -> the nearest kept
  frame (the earlier one on a tie), clipped into [onset, offset]; an interval that holds
  no kept frame becomes the single kept frame nearest its apex. The 30-fps interval then
  covers only frames inside the source interval; its onset is one frame later than the
  published one unless the source onset is itself a kept frame.

Intervals longer than ``max_duration_s`` seconds at the source rate are dropped, as the
published SAMM-LV protocol does; ``resample.duration_rule`` says how an interval's length
is counted (:func:`too_long`): ``published`` (default) ``offset - onset`` frames, so an
interval is kept while ``offset - onset <= max_duration_s * source_fps`` (published: ``<=
800`` at 200 fps); ``inclusive`` ``offset - onset + 1`` frames (one frame shorter limit).
Both compare exactly (rational arithmetic).

Outputs under ``data/<ds>/resample/``: videos.csv (fps = target, n_frames = kept count,
source_fps added), annotations.csv, frames.csv (kept frames only, renumbered 0..n-1,
with their source_frame and path), and distractors.csv when ingest wrote one (synthetic
datasets): each event's start/end remapped by the same rule as an annotation's
onset/offset (:func:`resample_events`; its apex is its middle frame), never dropped
for length, ``source_*`` unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.core.section import Section, knob
from pipeline.core.stage import StageContext, stage_main
from pipeline.errors import ConfigError, InputError
from pipeline.io.tables import (ANNOTATION_COLUMNS, DISTRACTORS_FILE, FRAME_COLUMNS, SOURCE_VIDEO, read_annotations,
                                read_distractors, read_frames, read_videos, write_table)
from pipeline.merge import MergeParams, merge_tables

log = logging.getLogger(__name__)

INTERVAL_MAPS = ("published", "kept_frames")   # resample.interval_map
DURATION_RULES = ("published", "inclusive")    # resample.duration_rule


@dataclass(frozen=True)
class ResampleParams(Section):
    """The ``resample`` section of params.yaml (knobs explained in configs/params.reference.yaml)."""

    SECTION = "resample"

    target_fps: float | None = knob(None, min=0.0)      # a preset's target_fps wins; None: the preset must set it
    max_duration_s: float | None = knob(None, min=0.0)  # drop longer intervals; None: keep every interval
    interval_map: str = knob("published", choices=INTERVAL_MAPS)     # annotation frames -> kept frames
    duration_rule: str = knob("published", choices=DURATION_RULES)   # interval length for max_duration_s
    merge: dict[str, Any] | None = knob({})   # short videos / small subjects merged (MergeParams)

    def check(self, where: str) -> None:
        """The nested ``merge`` mapping: unknown keys and bad values refused."""
        MergeParams.from_params(self.merge, where=f"{where}.merge")

    def merge_params(self) -> MergeParams:
        """The ``merge`` mapping as :class:`pipeline.merge.MergeParams` (defaults filled in)."""
        return MergeParams.from_params(self.merge)


def _fraction(value: float | int | str) -> Fraction:
    """An exact fraction of a frame rate given as int, float or string (29.97 -> 2997/100)."""
    return Fraction(str(value)).limit_denominator(1_000_000)


def kept_positions(n_frames: int, source_fps: float, target_fps: float) -> np.ndarray:
    """Source positions kept when resampling ``n_frames`` frames from ``source_fps`` to ``target_fps``.

    Position j of the output is source position ``floor(j * source_fps / target_fps)``.
    """
    src, tgt = _fraction(source_fps), _fraction(target_fps)
    if src <= 0 or tgt <= 0:
        raise ConfigError(f"frame rates must be positive (source {source_fps}, target {target_fps}).")
    if tgt > src:
        raise ConfigError(f"target_fps {target_fps} is above the source rate {source_fps}: resample only drops "
                          "frames. Set target_fps (preset or params.yaml resample.target_fps) <= source_fps.")
    ratio = src / tgt
    n_out = -(-n_frames * ratio.denominator // ratio.numerator)  # ceil(n / ratio): j * ratio < n
    j = np.arange(n_out, dtype=np.int64)
    return (j * ratio.numerator) // ratio.denominator


def remap_intervals(onset: np.ndarray, apex: np.ndarray, offset: np.ndarray, kept: np.ndarray,
                    rule: str = "kept_frames") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map source positions of intervals to positions in the kept sequence.

    ``rule`` is ``resample.interval_map`` (module doc): ``published`` maps every frame to
    the last kept frame at or before it; ``kept_frames`` (this function's default) maps
    the onset forward and the offset back onto kept frames inside the interval.
    """
    if rule not in INTERVAL_MAPS:
        raise ConfigError(f"resample.interval_map = {rule!r}: expected one of {', '.join(INTERVAL_MAPS)}.")
    kept = np.asarray(kept)
    onset, apex, offset = (np.asarray(a, dtype=np.int64) for a in (onset, apex, offset))
    if rule == "published":
        new_on, new_apex, new_off = (np.clip(np.searchsorted(kept, a, side="right") - 1, 0, len(kept) - 1)
                                     for a in (onset, apex, offset))
        return new_on, np.clip(new_apex, new_on, new_off), new_off
    new_on = np.searchsorted(kept, onset, side="left")
    new_off = np.searchsorted(kept, offset, side="right") - 1
    right = np.clip(np.searchsorted(kept, apex, side="left"), 0, len(kept) - 1)
    left = np.clip(right - 1, 0, len(kept) - 1)
    new_apex = np.where(np.abs(kept[left] - apex) <= np.abs(kept[right] - apex), left, right)
    empty = new_on > new_off
    new_on = np.where(empty, new_apex, new_on)
    new_off = np.where(empty, new_apex, new_off)
    new_apex = np.clip(new_apex, new_on, new_off)
    return new_on, new_apex, new_off


def too_long(onset: np.ndarray, offset: np.ndarray, source_fps: float, max_duration_s: float,
             rule: str = "published") -> np.ndarray:
    """Which intervals are longer than ``max_duration_s`` seconds at ``source_fps`` (exact comparison).

    ``rule`` is ``resample.duration_rule``: ``published`` counts ``offset - onset`` frames
    (published SAMM-LV: kept while ``offset - onset <= 800`` at 200 fps), ``inclusive``
    counts ``offset - onset + 1`` (every frame of the inclusive interval).
    """
    if rule not in DURATION_RULES:
        raise ConfigError(f"resample.duration_rule = {rule!r}: expected one of {', '.join(DURATION_RULES)}.")
    length = np.asarray(offset, dtype=np.int64) - np.asarray(onset, dtype=np.int64) + (rule == "inclusive")
    limit = _fraction(max_duration_s) * _fraction(source_fps)       # in frames, exact
    return length * limit.denominator > limit.numerator


def resample_tables(videos: pd.DataFrame, annotations: pd.DataFrame, frames: pd.DataFrame, target_fps: float,
                    max_duration_s: float | None, interval_map: str = "published", duration_rule: str = "published"
                    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Resample ingest tables to ``target_fps``; returns (videos, annotations, frames).

    ``interval_map`` and ``duration_rule`` are ``resample.interval_map`` and
    ``resample.duration_rule`` (module doc; defaults: the published SAMM-LV protocol).
    """
    out_videos: list[dict[str, Any]] = []
    out_frames: list[pd.DataFrame] = []
    out_ann: list[pd.DataFrame] = []
    frame_groups = dict(tuple(frames.groupby("video", sort=False)))
    ann_groups = dict(tuple(annotations.groupby("video", sort=False)))
    dropped = 0
    for v in tqdm(videos.to_dict("records"), desc="resample", unit="video", leave=False):
        video, src = v["video"], float(v["fps"])
        rows = frame_groups.get(video)
        if rows is None or len(rows) != int(v["n_frames"]):
            raise InputError(f"ingest tables: video {video} has n_frames {v['n_frames']} in videos.csv but "
                             f"{0 if rows is None else len(rows)} rows in frames.csv. Rerun ingest.")
        rows = rows.sort_values("frame")
        kept = kept_positions(len(rows), src, target_fps)
        picked = rows.iloc[kept]
        kept_rows = pd.DataFrame({"video": video, "frame": np.arange(len(kept), dtype=np.int64),
                                  "source_frame": picked["source_frame"].to_numpy(),
                                  "path": picked["path"].to_numpy()})
        if SOURCE_VIDEO in picked.columns:   # resample.merge: the part each kept frame comes from
            kept_rows[SOURCE_VIDEO] = picked[SOURCE_VIDEO].to_numpy()
        out_frames.append(kept_rows)
        out_videos.append({**v, "fps": float(target_fps), "n_frames": int(len(kept)), "source_fps": src})
        ann = ann_groups.get(video)
        if ann is None or ann.empty:
            continue
        ann = ann.copy()
        if max_duration_s is not None:
            long = too_long(ann["onset"].to_numpy(), ann["offset"].to_numpy(), src, max_duration_s, duration_rule)
            dropped += int(long.sum())
            ann = ann[~long]
        on, ap, off = remap_intervals(ann["onset"].to_numpy(), ann["apex"].to_numpy(), ann["offset"].to_numpy(),
                                      kept, interval_map)
        ann["onset"], ann["apex"], ann["offset"] = on, ap, off
        out_ann.append(ann)
    if dropped:
        log.info("resample: %d interval(s) longer than %.3g s dropped (resample.max_duration_s, duration_rule %s)",
                 dropped, max_duration_s, duration_rule)
    vids = pd.DataFrame.from_records(out_videos, columns=list(videos.columns) + ["source_fps"])
    anns = (pd.concat(out_ann, ignore_index=True) if out_ann else pd.DataFrame(columns=ANNOTATION_COLUMNS))
    frms = (pd.concat(out_frames, ignore_index=True) if out_frames else pd.DataFrame(columns=FRAME_COLUMNS))
    return vids, anns[ANNOTATION_COLUMNS + [c for c in anns.columns if c not in ANNOTATION_COLUMNS]], frms


def resample_events(events: pd.DataFrame, videos: pd.DataFrame, target_fps: float,
                    interval_map: str = "published") -> pd.DataFrame:
    """Remap a distractor table's start/end (ingest positions) onto the frames kept at ``target_fps``.

    ``videos`` is the ingest ``videos.csv`` (source fps and frame count per video). The
    kept frames are :func:`kept_positions`' and the mapping is :func:`remap_intervals` with
    the annotations' ``interval_map`` and the event's middle frame as its apex (kept_frames:
    start -> first kept frame at or after it, end -> last kept frame at or before it, an
    event holding no kept frame -> the kept frame nearest its middle; published: start and
    end -> the last kept frame at or before each). Events of videos not in ``videos`` are
    left out.
    """
    out = []
    info = {v["video"]: v for v in videos.to_dict("records")}
    for video, rows in events.groupby("video", sort=False):
        if video not in info:
            log.info("resample: %d distractor(s) of video %s, not in videos.csv, left out", len(rows), video)
            continue
        v = info[video]
        kept = kept_positions(int(v["n_frames"]), float(v["fps"]), target_fps)
        start, end = rows["start"].to_numpy(np.int64), rows["end"].to_numpy(np.int64)
        new_start, _, new_end = remap_intervals(start, (start + end) // 2, end, kept, interval_map)
        rows = rows.copy()
        rows["start"], rows["end"] = new_start, new_end
        out.append(rows)
    if not out:
        return events.iloc[:0].copy()
    return pd.concat(out, ignore_index=True)


def run(ctx: StageContext) -> None:
    """Resample the ingest tables of ``ctx``'s dataset into ``data/<ds>/resample/``."""
    p = ResampleParams.from_params(ctx.section())  # a bad key or value fails before any input is read
    target = ctx.dataset.get("target_fps") or p.target_fps
    if target is None:
        raise ConfigError(f"no target fps: set target_fps in configs/datasets/{ctx.name}.yaml or "
                          "resample.target_fps in params.yaml.")
    src = ctx.paths.ingest
    videos = read_videos(src / "videos.csv")
    annotations = read_annotations(src / "annotations.csv")
    frames = read_frames(src / "frames.csv")
    events = read_distractors(src / DISTRACTORS_FILE)
    videos, annotations, frames, events = merge_tables(videos, annotations, frames, p.merge_params(), events)
    vids, anns, frms = resample_tables(videos, annotations, frames, float(target), p.max_duration_s,
                                       p.interval_map, p.duration_rule)
    out = ctx.paths.resample
    if events is None:
        (out / DISTRACTORS_FILE).unlink(missing_ok=True)   # a table of an earlier ingest there is stale
    else:
        write_table(resample_events(events, videos, float(target), p.interval_map), out / DISTRACTORS_FILE)
    write_table(frms, out / "frames.csv")
    write_table(anns, out / "annotations.csv")
    write_table(vids, out / "videos.csv")
    counts = anns["type"].value_counts().to_dict()
    log.info("%s: %d videos at %g fps, %d kept frames, %d annotations (%d macro, %d micro) -> %s", ctx.name,
             len(vids), float(target), len(frms), len(anns), counts.get("macro", 0), counts.get("micro", 0), out)


main = stage_main("resample", run)

if __name__ == "__main__":
    raise SystemExit(main())
