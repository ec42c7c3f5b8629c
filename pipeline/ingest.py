"""Stage ``ingest``: a dataset in its own layout -> ``videos.csv``, ``annotations.csv``, ``frames.csv``.

``python -m pipeline.ingest --dataset NAME`` reads the preset (layout, root, frames_dir,
annotation_file, source_fps, color), lets the layout reader parse the annotation file
and find the videos (:mod:`pipeline.layouts`), lists and checks every video's frames
(:mod:`pipeline.layouts.common`: numbering gaps, empty files, a decoded sample), and
writes the three tables under ``data/<ds>/ingest/``. Onset/apex/offset are 0-based
positions in the source sequence; ``source_*`` keep the dataset's numbers.

Interval rules (counted and logged):

* an onset before the first frame is clipped to it;
* an interval ending past the last frame, or with offset before onset, is skipped
  (``ingest.invalid_intervals: skip``, the published SAMM-LV handling) or stops the
  stage (``error``);
* a missing apex, or one outside [onset, offset], becomes the interval's midpoint;
* duplicate rows (same video, type, onset, apex, offset) are kept once.

A dataset whose root holds ``distractors.csv`` (the synthetic presets: every unlabelled
blink, head turn, head jerk and lighting change, in the dataset's numbering) gets it
converted the same way (:func:`locate_events`) into ``data/<ds>/ingest/distractors.csv``,
which resample carries to the target fps and evaluate uses for its error analysis. Real
datasets have none: then no file is written (and a stale one is removed).

Nothing is written unless every video and every row passed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from pipeline.core.runner import VideoTask, map_videos
from pipeline.core.stage import StageContext, stage_main
from pipeline.errors import ConfigError, InputError
from pipeline.io.tables import (ANNOTATION_COLUMNS, DISTRACTOR_COLUMNS, DISTRACTORS_FILE, FRAME_COLUMNS, VIDEO_COLUMNS,
                                read_distractors, write_table)
from pipeline.layouts import get_reader
from pipeline.layouts.common import (LayoutData, check_contiguous, check_images, count_video_file, dataset_root,
                                     is_color, list_frames)
from pipeline.layouts.params import POLICIES, IngestParams

log = logging.getLogger(__name__)


def scan_video(task: VideoTask) -> dict[str, Any]:
    """List and check one video's frames (payload: source, kind, extensions, decode_sample).

    Returns ``numbers`` (the dataset's frame numbers in order), ``paths`` (empty strings
    for video files), ``color`` (from the decoded sample).
    """
    p = task.payload
    if p["kind"] == "file":
        n, images = count_video_file(p["source"], task.video, int(p["decode_sample"]))
        numbers = np.arange(n, dtype=np.int64)
        paths = [""] * n
    else:
        numbers, paths, sizes = list_frames(p["source"], p["extensions"], task.video)
        check_contiguous(numbers, p["source"], task.video)
        images = check_images(paths, sizes, task.video, int(p["decode_sample"]))
    return {"numbers": numbers, "paths": paths, "color": any(is_color(im) for im in images)}


def locate_intervals(rows: pd.DataFrame, spans: Mapping[str, tuple[int, int]], policy: str = "skip",
                     annotation_file: str | Path = "") -> pd.DataFrame:
    """Turn raw rows (dataset numbers) into ``annotations.csv`` rows with 0-based positions.

    ``spans`` maps a video to (first, last) frame number; frame numbers are contiguous,
    so the position of number ``f`` is ``f - first``. See the module docstring for
    the rules; ``policy`` is ``skip`` or ``error`` for intervals past the end or reversed.
    """
    if policy not in POLICIES:
        raise ConfigError(f"params.yaml: ingest.invalid_intervals '{policy}' is not one of {', '.join(POLICIES)}.")
    out: list[dict[str, Any]] = []
    bad: list[str] = []
    clipped = apex_fixed = 0
    for r in rows.to_dict("records"):
        first, last = spans[r["video"]]
        onset, apex, offset = r["source_onset"], r["source_apex"], r["source_offset"]
        if offset < onset:
            bad.append(f"{r['origin']}: video {r['video']} interval {onset:.0f}..{offset:.0f} is reversed "
                       "(offset before onset)")
            continue
        if offset < first:
            bad.append(f"{r['origin']}: video {r['video']} interval {onset:.0f}..{offset:.0f} ends before the "
                       f"video's first frame {first}")
            continue
        if offset > last or onset > last:
            bad.append(f"{r['origin']}: video {r['video']} interval {onset:.0f}..{offset:.0f} ends past the "
                       f"video's last frame {last}")
            continue
        if onset < first:
            onset = first
            clipped += 1
        if np.isnan(apex) or not onset <= apex <= offset:
            apex = onset + (offset - onset) // 2
            apex_fixed += 1
        onset, apex, offset = int(onset), int(apex), int(offset)
        out.append({"video": r["video"], "subject": r["subject"], "onset": onset - first, "apex": apex - first,
                    "offset": offset - first, "type": r["type"], "source_onset": onset, "source_apex": apex,
                    "source_offset": offset})
    if bad:
        if policy == "error":
            raise InputError(f"{annotation_file}: {len(bad)} invalid interval(s):\n  " + "\n  ".join(bad)
                             + "\nFix or delete these rows, or set ingest.invalid_intervals: skip in params.yaml.")
        for line in bad:
            log.warning("%s; skipped", line)
        log.warning("%s: %d invalid interval(s) skipped (ingest.invalid_intervals: skip)", annotation_file, len(bad))
    if clipped:
        log.warning("%s: %d onset(s) before the video's first frame clipped to it", annotation_file, clipped)
    if apex_fixed:
        log.info("%s: %d missing or out-of-interval apex(es) set to the interval midpoint", annotation_file,
                 apex_fixed)
    table = pd.DataFrame.from_records(out, columns=ANNOTATION_COLUMNS)
    key = ["video", "type", "source_onset", "source_apex", "source_offset"]
    dup = table.duplicated(key)
    if dup.any():
        for r in table[dup].to_dict("records"):
            log.warning("%s: duplicate annotation of video %s (%s %d..%d) dropped", annotation_file, r["video"],
                        r["type"], r["source_onset"], r["source_offset"])
        log.warning("%s: %d duplicate row(s) dropped", annotation_file, int(dup.sum()))
        table = table[~dup]
    return table.sort_values(["video", "onset", "offset", "type"], kind="stable").reset_index(drop=True)


def locate_events(events: pd.DataFrame, spans: Mapping[str, tuple[int, int]],
                  origin: str | Path = DISTRACTORS_FILE) -> pd.DataFrame:
    """A dataset's distractor table (start, end in its numbering) -> ``distractors.csv`` rows of ingest.

    ``spans`` maps each ingested video to its (first, last) frame number; start/end become
    0-based positions (``number - first``) and the dataset's numbers move to
    ``source_start``/``source_end``. Events of videos not ingested are left out; an event
    reaching past either end of its video is clipped to it, one wholly outside is dropped
    (both logged). The generator's other columns follow, as read.
    """
    extra = [c for c in events.columns if c not in DISTRACTOR_COLUMNS]
    rows = events[events["video"].isin(spans)].copy()
    if len(rows) < len(events):
        log.info("%s: %d distractor(s) of videos not ingested left out", origin, len(events) - len(rows))
    first = rows["video"].map({v: s[0] for v, s in spans.items()}).to_numpy(np.int64)
    last = rows["video"].map({v: s[1] for v, s in spans.items()}).to_numpy(np.int64)
    start, end = rows["start"].to_numpy(np.int64), rows["end"].to_numpy(np.int64)
    outside = (end < first) | (start > last)
    if outside.any():
        log.warning("%s: %d distractor(s) outside their video's frames dropped", origin, int(outside.sum()))
    clipped = int(((start < first) | (end > last))[~outside].sum())
    if clipped:
        log.warning("%s: %d distractor(s) clipped to their video's frames", origin, clipped)
    s_start, s_end = np.maximum(start, first), np.minimum(end, last)
    rows["source_start"], rows["source_end"] = s_start, s_end
    rows["start"], rows["end"] = s_start - first, s_end - first
    rows = rows[~outside]
    return rows[DISTRACTOR_COLUMNS + extra].sort_values(["video", "start", "end", "kind"], kind="stable") \
        .reset_index(drop=True)


def build_tables(data: LayoutData, scans: Mapping[str, dict[str, Any]], fps: float, color: bool | None,
                 policy: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(videos, annotations, frames) tables from a layout's data and the per-video scans."""
    entries = sorted((e for e in data.videos if e.video in scans), key=lambda e: e.video)
    videos = pd.DataFrame.from_records([
        {"video": e.video, "subject": e.subject, "fps": fps, "n_frames": len(scans[e.video]["numbers"]),
         "source": e.source, "kind": e.kind,
         "color": int(scans[e.video]["color"] if color is None else bool(color))}
        for e in entries], columns=VIDEO_COLUMNS)
    parts = []
    for e in entries:
        s = scans[e.video]
        n = len(s["numbers"])
        parts.append(pd.DataFrame({"video": e.video, "frame": np.arange(n, dtype=np.int64),
                                   "source_frame": s["numbers"], "path": s["paths"]}))
    frames = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=FRAME_COLUMNS)
    spans = {e.video: (int(scans[e.video]["numbers"][0]), int(scans[e.video]["numbers"][-1])) for e in entries}
    annotations = locate_intervals(data.rows[data.rows["video"].isin(spans)], spans, policy, data.annotation_file)
    return videos, annotations, frames


def run(ctx: StageContext) -> None:
    """Ingest the dataset of ``ctx`` into ``data/<ds>/ingest/``."""
    p = IngestParams.from_params(ctx.section())  # a bad key or value fails before any input is read
    preset = ctx.dataset
    if "source_fps" not in preset:
        raise ConfigError(f"configs/datasets/{ctx.name}.yaml: missing key 'source_fps' (the frame rate of the "
                          "dataset's videos).")
    fps = float(preset["source_fps"])
    if not fps > 0:
        raise ConfigError(f"configs/datasets/{ctx.name}.yaml: source_fps {preset['source_fps']} must be positive.")
    root = dataset_root(preset)
    data = get_reader(preset["layout"], ctx.name)(preset, root, p)
    annotated = set(data.rows["video"])
    chosen = [e for e in data.videos if e.video in annotated or p.include_unannotated]
    skipped = len(data.videos) - len(chosen)
    if skipped:
        log.info("%s: %d video(s) without annotations left out (ingest.include_unannotated: false)", ctx.name,
                 skipped)
    if not chosen:
        raise InputError(f"{data.annotation_file}: no annotated video found under {root}. Check the preset's root "
                         f"and frames_dir in configs/datasets/{ctx.name}.yaml.")
    tasks = [VideoTask(e.video, None, "", {"source": e.source, "kind": e.kind, "extensions": p.extensions(),
                                           "decode_sample": p.decode_sample}) for e in chosen]
    scans = map_videos(scan_video, tasks, stage="ingest", parallel=ctx.parallel)
    videos, annotations, frames = build_tables(data, scans, fps, preset.get("color"), p.invalid_intervals)
    out = ctx.paths.ingest
    events = read_distractors(root / DISTRACTORS_FILE, DISTRACTOR_COLUMNS[:5])
    if events is None:
        (out / DISTRACTORS_FILE).unlink(missing_ok=True)   # a table of an earlier dataset there is stale
    else:
        spans = {v: (int(scans[v]["numbers"][0]), int(scans[v]["numbers"][-1])) for v in videos["video"]}
        events = locate_events(events, spans, root / DISTRACTORS_FILE)
        write_table(events, out / DISTRACTORS_FILE)
        log.info("%s: %d distractor events (%s) -> %s", ctx.name, len(events),
                 ", ".join(f"{k} {n}" for k, n in sorted(events["kind"].value_counts().items())),
                 out / DISTRACTORS_FILE)
    write_table(frames, out / "frames.csv")
    write_table(annotations, out / "annotations.csv")
    write_table(videos, out / "videos.csv")
    counts = annotations["type"].value_counts().to_dict()
    log.info("%s: %d videos, %d frames, %d annotations (%d macro, %d micro) -> %s", ctx.name, len(videos),
             len(frames), len(annotations), counts.get("macro", 0), counts.get("micro", 0), out)


main = stage_main("ingest", run)

if __name__ == "__main__":
    raise SystemExit(main())
