"""Merging short videos and small subjects (``resample.merge``; the published SAMM-LV protocol).

The published SAMM-LV tooling (LGSNet's ``samm_sampler.py``, ``label_new_part`` /
``merge_verify`` / ``merge_all`` / ``pic_merge``, run with ``--sliding_window 2000``, which
IAENet's SAMM-LV features come from) concatenates, at the source rate and before the
200 -> 30 fps sampling, so that every video holds at least one 128-frame window:

1. **Small subjects** -> subject ``099``, video ``099_99``. The subjects are sorted by their
   total number of frames (ascending; ties: subject name) and taken while
   ``length <= limit`` or (the frames taken so far ``<= limit`` and one was taken); the
   first subject failing both stops the walk (:func:`published_selection`). On SAMM-LV:
   031 (654 frames), then 023 (2001: taken because 654 <= 2000), not 028 (2001).
2. **Short videos of a subject** -> ``<subject>_99``: the same walk over the subject's
   videos sorted by length (ascending; ties: video name). Every video ``<= limit`` is
   taken, and the shortest longer one too while the taken frames are ``<= limit``. A
   subject of step 1 gives all its videos, shortest first.
3. The subjects of step 1 are concatenated into ``099_99`` in step 1's order, each
   subject's part being its step-2 video.

``limit`` is ``min_source_frames`` (published 2000 frames at 200 fps, 300 at 30 fps, so
each merged video exceeds two 128-frame windows). The frames of a merged video are its
parts' frames in order; annotation (and distractor) positions are shifted by the part's
start, their ``source_*`` numbers stay the part's own, and a ``source_video`` column
(frames, annotations, distractors) names the part each row comes from. The kept frames
are then chosen over the merged sequence, as the published tooling sampled the merged
folder (the 6, 7, 7 pattern runs on across part boundaries).

Deviations from the published code, both documented in docs/reproduce.md:

* equal lengths are ordered by name; the published code ordered equal-length videos by
  Python set iteration (hash-seed dependent). On the real SAMM-LV only 009_2 and 009_4
  (1000 frames each) tie: the published table has 009_4 first, m2es 009_2.
* a subject's total is the sum of its videos' lengths; the published code summed the
  distinct lengths (no SAMM-LV subject of step 1 is affected).

Videos merged must be image folders (``kind`` frames) of one frame rate and colour mode;
videos that are files are refused (their frames cannot be read from several sources).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.section import Section, knob
from pipeline.errors import ConfigError, InputError
from pipeline.io.tables import SOURCE_VIDEO

log = logging.getLogger(__name__)

SOURCE_SEPARATOR = ";"          # videos.csv source of a merged video: its parts' sources joined by this


@dataclass(frozen=True)
class MergeParams(Section):
    """The nested ``resample.merge`` mapping (explained in configs/params.reference.yaml and the module doc)."""

    SECTION = "resample.merge"

    enabled: bool = knob(False)                 # samm_lv preset: true (published)
    min_source_frames: int = knob(2000, min=1)  # the published sliding_window, in source frames
    video_id: str = knob("99")                  # merged video of a subject: <subject>_<video_id>
    subject: str = knob("099")                  # subject of the merged small subjects


def published_selection(items: Sequence[tuple[str, int]], limit: int) -> list[str]:
    """Names taken by the published walk (``merge_verify``) over ``items`` = (name, length).

    Items are sorted by (length, name); each is taken while its length is ``<= limit``,
    or while the lengths taken so far sum to ``<= limit`` and at least one was taken.
    """
    taken: list[str] = []
    total = 0
    for i, (name, n) in enumerate(sorted(items, key=lambda t: (t[1], t[0]))):
        if n > limit and (total > limit or i == 0):
            break
        taken.append(name)
        total += n
    return taken


def merge_plan(videos: pd.DataFrame, p: MergeParams) -> dict[str, tuple[str, str, list[str]]]:
    """``{merged video: (subject, merged video, [ingest videos in order])}`` of the published rule.

    ``videos``: an ingest videos.csv (video, subject, n_frames). A subject whose walk
    takes no video (its shortest video is longer than ``min_source_frames``) has no entry.
    """
    limit = p.min_source_frames
    length = dict(zip(videos["video"].astype(str), videos["n_frames"].astype(int)))
    by_subject: dict[str, list[str]] = {}
    for v, s in zip(videos["video"].astype(str), videos["subject"].astype(str)):
        by_subject.setdefault(s, []).append(v)
    small = published_selection([(s, sum(length[v] for v in vs)) for s, vs in sorted(by_subject.items())], limit)
    plan: dict[str, tuple[str, str, list[str]]] = {}
    for s in sorted(by_subject):
        items = [(v, length[v]) for v in by_subject[s]]
        parts = ([v for v, _ in sorted(items, key=lambda t: (t[1], t[0]))] if s in small
                 else published_selection(items, limit))
        if parts:
            plan[f"{s}_{p.video_id}"] = (s, f"{s}_{p.video_id}", parts)
    if small:
        name = f"{p.subject}_{p.video_id}"
        parts = [v for s in small for v in plan.pop(f"{s}_{p.video_id}")[2]]
        plan[name] = (p.subject, name, parts)
    taken = {v for _, _, parts in plan.values() for v in parts}
    clash = sorted(set(plan) & (set(length) - taken))
    if clash:
        raise ConfigError(f"resample.merge: merged video name(s) {', '.join(clash)} already name a video that is not "
                          "merged. Set resample.merge.video_id (or resample.merge.subject) to an unused value.")
    if small and p.subject in {s for s in by_subject if s not in small}:
        raise ConfigError(f"resample.merge.subject = {p.subject!r} is a subject of the dataset. Set it to an unused "
                          "subject name.")
    return plan


def _check_parts(videos: pd.DataFrame, name: str, parts: list[str]) -> pd.DataFrame:
    rows = videos.set_index("video").loc[parts]
    if (rows["kind"] != "frames").any():
        bad = rows.index[rows["kind"] != "frames"][0]
        raise InputError(f"resample.merge: video {bad} (to merge into {name}) is a video file; only image folders can "
                         "be merged. Set resample.merge.enabled: false for this dataset.")
    for col in ("fps", "color"):
        if rows[col].astype(float).nunique() > 1:
            raise InputError(f"resample.merge: the videos to merge into {name} ({', '.join(parts)}) differ in {col} "
                             f"({', '.join(map(str, rows[col]))}). Set resample.merge.enabled: false for this dataset.")
    return rows


def _shift(table: pd.DataFrame | None, columns: Sequence[str], rename: dict[str, tuple[str, str, int]]
           ) -> pd.DataFrame | None:
    """Rows of merged parts renamed to their merged video/subject and ``columns`` shifted by the part's start;
    ``source_video`` added (every row). Rows keep their order."""
    if table is None:
        return None
    out = table.copy()
    src = out["video"].astype(str)
    out[SOURCE_VIDEO] = src
    hit = src.isin(list(rename))
    if hit.any():
        start = src[hit].map({v: r[2] for v, r in rename.items()}).astype(np.int64)
        for c in columns:
            out.loc[hit, c] = out.loc[hit, c].astype(np.int64) + start
        if "subject" in out.columns:
            out.loc[hit, "subject"] = src[hit].map({v: r[1] for v, r in rename.items()})
        out.loc[hit, "video"] = src[hit].map({v: r[0] for v, r in rename.items()})
    return out


def merge_tables(videos: pd.DataFrame, annotations: pd.DataFrame, frames: pd.DataFrame, p: MergeParams,
                 events: pd.DataFrame | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """Ingest tables with the merges of :func:`merge_plan` applied (module doc); (videos, annotations, frames,
    events). Merged videos are listed in place of their first part; every other row keeps its place.
    With ``p.enabled`` false the tables are returned as they are (no ``source_video`` column)."""
    if not p.enabled:
        return videos, annotations, frames, events
    plan = merge_plan(videos, p)
    rename: dict[str, tuple[str, str, int]] = {}          # ingest video -> (merged video, subject, start)
    merged_rows: dict[str, dict[str, Any]] = {}
    for name, (subject, _, parts) in plan.items():
        rows = _check_parts(videos, name, parts)
        start = 0
        for v in parts:
            rename[v] = (name, subject, start)
            start += int(rows.loc[v, "n_frames"])
        first = rows.iloc[0]
        merged_rows[name] = {**{c: first[c] for c in videos.columns if c != "video"}, "video": name,
                             "subject": subject, "n_frames": start,
                             "source": SOURCE_SEPARATOR.join(str(s) for s in rows["source"])}
        log.info("resample.merge: %s <- %s (%d frames at the source rate)", name, " + ".join(parts), start)
    out_videos = []
    for v in videos.to_dict("records"):
        target = rename.get(str(v["video"]))
        if target is None:
            out_videos.append(v)
        elif target[0] in merged_rows:
            out_videos.append(merged_rows.pop(target[0]))
    vids = pd.DataFrame.from_records(out_videos, columns=list(videos.columns))
    order = {name: i for i, name in enumerate(vids["video"])}
    # frames: each merged video's parts in plan order, renumbered 0..n-1
    fr = _shift(frames, ["frame"], rename)
    part_index = {v: i for _, _, parts in plan.values() for i, v in enumerate(parts)}
    fr["_part"] = fr[SOURCE_VIDEO].map(part_index).fillna(0).astype(np.int64)
    fr["_rank"] = fr["video"].map(order)
    fr = fr.sort_values(["_rank", "_part", "frame"], kind="stable").drop(columns=["_part", "_rank"])
    fr = fr.reset_index(drop=True)
    anns = _shift(annotations, ["onset", "apex", "offset"], rename)
    ev = _shift(events, ["start", "end"], rename)
    return vids, anns, fr, ev
