"""SAMM-LV: ``SAMM_longvideos/006_1/006_1_0001.jpg`` + ``SAMM_LongVideos_V?_Release.xlsx``.

Sheet ``FACS_Movement_Only`` starts with preamble lines; the header row is found by
its content (the first row naming Subject, Filename, Onset, Apex, Offset and Type)
rather than trusting a fixed ``header=9``, which differs between releases. Filename
``006_1_2`` is video ``006_1``, expression 2. An apex that is empty or negative (some
releases write -1) counts as missing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pipeline.errors import InputError
from pipeline.layouts.common import (LayoutData, VideoEntry, frames_root, is_empty, normalize_type, read_workbook,
                                     resolve_annotation_file, rows_frame, to_number)
from pipeline.layouts.params import IngestParams

log = logging.getLogger(__name__)

SHEET = "FACS_Movement_Only"
REQUIRED = ("subject", "filename", "onset", "apex", "offset", "type")


def _norm(cell: Any) -> str:
    return str(cell).strip().lower() if isinstance(cell, str) else ""


def read_samm(preset: Mapping[str, Any], root: Path, params: IngestParams) -> LayoutData:
    """Read the SAMM-LV spreadsheet and find the video folders under ``frames_dir``."""
    path = resolve_annotation_file(preset, root)
    frames = frames_root(preset, root)
    sheet = read_workbook(path, [SHEET])[SHEET]
    header_row = None
    for i in range(len(sheet)):
        names = {_norm(c) for c in sheet.iloc[i]}
        if {"subject", "filename", "onset"} <= names:
            header_row = i
            break
    if header_row is None:
        raise InputError(f"{path}: sheet '{SHEET}' has no header row naming Subject, Filename, Onset, Apex, Offset, "
                         "Type. Use the dataset's original spreadsheet.")
    columns = {_norm(c): j for j, c in enumerate(sheet.iloc[header_row]) if _norm(c)}
    missing_cols = [c for c in REQUIRED if c not in columns]
    if missing_cols:
        raise InputError(f"{path}: sheet '{SHEET}' (header on row {header_row + 1}) lacks column(s) "
                         f"{', '.join(missing_cols)}. Use the dataset's original spreadsheet.")

    records: list[dict[str, Any]] = []
    missing: dict[str, str] = {}
    for i in range(header_row + 1, len(sheet)):
        row = sheet.iloc[i]
        filename = row.iloc[columns["filename"]]
        if is_empty(filename):
            continue
        name = str(filename).strip()
        origin = f"{path} sheet '{SHEET}' row {i + 1} ({name})"
        parts = name.split("_")
        if len(parts) < 3:
            raise InputError(f"{origin}: Filename '{name}' is not <subject>_<video>_<expression> (e.g. 006_1_2). "
                             "Fix the cell.")
        video = "_".join(parts[:-1])
        folder = frames / video
        if not folder.is_dir():
            missing.setdefault(video, origin)
            continue
        apex = to_number(row.iloc[columns["apex"]], origin, "Apex", allow_missing=True)
        if not np.isnan(apex) and apex < 0:
            apex = float("nan")
        records.append({
            "video": video, "subject": parts[0],
            "type": normalize_type(row.iloc[columns["type"]], origin),
            "source_onset": to_number(row.iloc[columns["onset"]], origin, "Onset"),
            "source_apex": apex,
            "source_offset": to_number(row.iloc[columns["offset"]], origin, "Offset"),
            "origin": origin,
        })
    if missing:
        listing = "; ".join(f"{k} ({v})" for k, v in sorted(missing.items()))
        raise InputError(f"{frames}: no video folder for {len(missing)} video(s) in {path.name}: {listing}. Link the "
                         "complete SAMM_longvideos folder of the dataset, or delete those rows from the spreadsheet.")
    videos = [VideoEntry(video=d.name, subject=d.name.split("_")[0], source=str(d))
              for d in sorted(p for p in frames.iterdir() if p.is_dir())]
    return LayoutData(videos=videos, rows=rows_frame(records), annotation_file=path)
