"""The generic door: a folder of frame folders and/or video files plus a canonical CSV.

``annotation_file`` (default ``annotations.csv`` in the root) has columns video,
subject, onset, offset, type and optionally apex, in the dataset's own numbering: the
number in the frame file names for frame folders (``img_00012.jpg`` -> 12, any base),
the 0-based decode index for video files (mp4/avi/mov, read with decord). An empty or
absent apex is replaced by the interval's midpoint at ingest. A video is a sub-folder
of ``root/frames_dir`` (its name) or a video file there (its stem).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from pipeline.errors import InputError
from pipeline.layouts.common import (VIDEO_EXTENSIONS, LayoutData, VideoEntry, frames_root, normalize_type,
                                     resolve_annotation_file, rows_frame, to_number)
from pipeline.layouts.params import IngestParams

log = logging.getLogger(__name__)

REQUIRED = ("video", "subject", "onset", "offset", "type")


def find_videos(folder: Path, exclude: Path | None = None) -> dict[str, tuple[Path, str]]:
    """video name -> (path, kind) for the frame folders and video files in ``folder``."""
    found: dict[str, tuple[Path, str]] = {}
    for entry in sorted(folder.iterdir()):
        if exclude is not None and entry.resolve() == exclude.resolve():
            continue
        if entry.is_dir() and not entry.name.startswith("."):
            kind, name = "frames", entry.name
        elif entry.is_file() and entry.suffix.lower() in VIDEO_EXTENSIONS:
            kind, name = "file", entry.stem
        else:
            continue
        if name in found:
            raise InputError(f"{folder}: two videos are called '{name}' ({found[name][0].name} and {entry.name}). "
                             "Rename one of them.")
        found[name] = (entry, kind)
    return found


def read_generic(preset: Mapping[str, Any], root: Path, params: IngestParams) -> LayoutData:
    """Read the canonical annotations CSV and find the frame folders and video files."""
    path = resolve_annotation_file(preset, root)
    frames = frames_root(preset, root)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas parser errors
        raise InputError(f"{path}: cannot be read as CSV ({type(exc).__name__}: {exc}). Write it as a CSV with "
                         f"columns {', '.join(REQUIRED)}[, apex].") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing_cols = [c for c in REQUIRED if c not in table.columns]
    if missing_cols:
        raise InputError(f"{path}: missing column(s) {', '.join(missing_cols)}. The canonical annotations.csv has "
                         f"columns {', '.join(REQUIRED)} and optionally apex.")
    found = find_videos(frames, exclude=path)
    records: list[dict[str, Any]] = []
    missing: dict[str, str] = {}
    subjects: dict[str, str] = {}
    for i, row in enumerate(table.to_dict("records")):
        origin = f"{path} line {i + 2}"
        video = str(row["video"]).strip()
        if video not in found:
            missing.setdefault(video, origin)
            continue
        subject = str(row["subject"]).strip()
        if not subject:
            raise InputError(f"{origin}: empty subject for video {video}. Fill in the subject.")
        if subjects.setdefault(video, subject) != subject:
            raise InputError(f"{origin}: video {video} has subject '{subject}' here and '{subjects[video]}' on an "
                             "earlier line. A video belongs to one subject: fix the column.")
        records.append({
            "video": video, "subject": subject, "type": normalize_type(row["type"], origin),
            "source_onset": to_number(row["onset"], origin, "onset"),
            "source_apex": to_number(row.get("apex", ""), origin, "apex", allow_missing=True),
            "source_offset": to_number(row["offset"], origin, "offset"),
            "origin": origin,
        })
    if missing:
        listing = "; ".join(f"{k} ({v})" for k, v in sorted(missing.items()))
        raise InputError(f"{frames}: no frame folder or video file for {len(missing)} video(s) of {path.name}: "
                         f"{listing}. Add them to {frames} or delete their lines.")
    videos = [VideoEntry(video=name, subject=subjects.get(name, name), source=str(p), kind=kind)
              for name, (p, kind) in found.items()]
    return LayoutData(videos=videos, rows=rows_frame(records), annotation_file=path)
