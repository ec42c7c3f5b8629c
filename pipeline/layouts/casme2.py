"""CAS(ME)^2: ``rawpic/s15/15_0101disgustingteeth/img_N.jpg`` + ``CAS(ME)^2code_final.xlsx``.

The spreadsheet has no header row and three sheets, read by position (the first
sheet's name differs between releases):

1. one row per expression: participant number, clip name (``disgust1_1``), onset, apex,
   offset (0 = missing), AUs, emotion, type (``macro-expression`` / ``micro-expression``),
   self-reported emotion;
2. ``naming rule1``: column 1 the subject folder prefix (``15`` or ``s15``), column 2 the
   participant number;
3. ``naming rule2``: column 0 the video code (``101`` -> ``0101``), column 1 the stimulus
   name (``disgust1``).

A video folder is ``<subject digits>_<4-digit code><free text>`` inside the subject
folder. A missing or non-increasing offset (0, empty, or not after the apex) is
replaced by ``apex + ingest.offset_fallback`` as the published tooling does.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from pipeline.errors import InputError
from pipeline.layouts.common import (LayoutData, VideoEntry, frames_root, is_empty, normalize_type, read_workbook,
                                     resolve_annotation_file, rows_frame, to_number)
from pipeline.layouts.params import IngestParams

log = logging.getLogger(__name__)

_SUBJECT_DIR = re.compile(r"^s?(\d+)$", re.IGNORECASE)
_VIDEO_DIR = re.compile(r"^(\d+)_(\d{4})")


def _int_or_none(value: Any) -> int | None:
    """An integer from a cell holding ``15``, ``15.0``, ``'s15'`` or ``'0101'``; None otherwise."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    m = re.fullmatch(r"[sS]?(\d+)(\.0+)?", text)
    return int(m.group(1)) if m else None


def _naming_rules(sheets: Mapping[int, pd.DataFrame], path: Path) -> tuple[dict[int, int], dict[str, int]]:
    """(participant -> subject number, stimulus name -> video code) from sheets 2 and 3."""
    rule1, rule2 = sheets[1], sheets[2]
    if rule1.shape[1] < 3:
        raise InputError(f"{path}: sheet 2 (naming rule1) needs 3 columns (.., subject folder prefix, participant "
                         f"number), found {rule1.shape[1]}. Use the dataset's original spreadsheet.")
    if rule2.shape[1] < 2:
        raise InputError(f"{path}: sheet 3 (naming rule2) needs 2 columns (video code, stimulus name), found "
                         f"{rule2.shape[1]}. Use the dataset's original spreadsheet.")
    participants: dict[int, int] = {}
    for prefix, participant in zip(rule1.iloc[:, 1], rule1.iloc[:, 2]):
        p, s = _int_or_none(participant), _int_or_none(prefix)
        if p is not None and s is not None:
            participants[p] = s
    stimuli: dict[str, int] = {}
    for code, name in zip(rule2.iloc[:, 0], rule2.iloc[:, 1]):
        c = _int_or_none(code)
        if c is not None and isinstance(name, str) and name.strip():
            stimuli[name.strip()] = c
    if not participants or not stimuli:
        raise InputError(f"{path}: sheets 2/3 (naming rules) hold no participant or video code mapping. Use the "
                         "dataset's original spreadsheet.")
    return participants, stimuli


def _video_folders(frames: Path) -> dict[tuple[int, int], tuple[str, Path]]:
    """(subject number, video code) -> (subject folder name, video folder) for every folder found."""
    found: dict[tuple[int, int], tuple[str, Path]] = {}
    for subject_dir in sorted(p for p in frames.iterdir() if p.is_dir()):
        m = _SUBJECT_DIR.match(subject_dir.name)
        if not m:
            continue
        for video_dir in sorted(p for p in subject_dir.iterdir() if p.is_dir()):
            v = _VIDEO_DIR.match(video_dir.name)
            if v and int(v.group(1)) == int(m.group(1)):
                found[(int(m.group(1)), int(v.group(2)))] = (subject_dir.name, video_dir)
    return found


def read_casme2(preset: Mapping[str, Any], root: Path, params: IngestParams) -> LayoutData:
    """Read the CAS(ME)^2 spreadsheet and find every video folder under ``frames_dir``."""
    path = resolve_annotation_file(preset, root)
    frames = frames_root(preset, root)
    fallback = params.offset_fallback
    sheets = read_workbook(path)
    if len(sheets) < 3:
        raise InputError(f"{path}: {len(sheets)} sheet(s) found, CAS(ME)^2 needs 3 (codes, naming rule1, naming "
                         "rule2). Use the dataset's original spreadsheet.")
    participants, stimuli = _naming_rules(sheets, path)
    codes = sheets[0]
    if codes.shape[1] < 8:
        raise InputError(f"{path}: first sheet has {codes.shape[1]} column(s); expected at least 8 (participant, "
                         "clip, onset, apex, offset, AUs, emotion, type). Use the dataset's original spreadsheet.")
    folders = _video_folders(frames)
    with pd.ExcelFile(path, engine="openpyxl") as book:
        sheet_name = book.sheet_names[0]

    records: list[dict[str, Any]] = []
    missing: dict[str, str] = {}
    n_fallback = 0
    for i, row in enumerate(codes.itertuples(index=False)):
        origin = f"{path} sheet '{sheet_name}' row {i + 1}"
        cells = list(row)
        if all(is_empty(c) for c in cells):
            continue
        participant = _int_or_none(cells[0])
        if participant is None:
            if i == 0:  # a header row some copies add
                continue
            raise InputError(f"{origin}: participant '{cells[0]}' is not a number. Fix the cell.")
        clip = str(cells[1]).strip()
        stimulus = clip.rsplit("_", 1)[0]
        if participant not in participants:
            raise InputError(f"{origin}: participant {participant} is not in sheet 2 (naming rule1). Add it there.")
        if stimulus not in stimuli:
            raise InputError(f"{origin}: clip '{clip}': stimulus '{stimulus}' is not in sheet 3 (naming rule2). "
                             "Add it there or fix the clip name.")
        subject_no, code = participants[participant], stimuli[stimulus]
        key = (subject_no, code)
        if key not in folders:
            missing.setdefault(f"s{subject_no}/{subject_no}_{code:04d}*", origin)
            continue
        subject, folder = folders[key]
        onset = to_number(cells[2], origin, "onset")
        apex = to_number(cells[3], origin, "apex", allow_missing=True)
        offset = to_number(cells[4], origin, "offset", allow_missing=True)
        if apex == 0:
            apex = float("nan")
        anchor = onset if np.isnan(apex) else apex
        if np.isnan(offset) or offset == 0 or offset <= anchor:
            offset = anchor + fallback
            n_fallback += 1
        records.append({"video": folder.name, "subject": subject, "type": normalize_type(cells[7], origin),
                        "source_onset": onset, "source_apex": apex, "source_offset": offset, "origin": origin})
    if missing:
        listing = "; ".join(f"{k} ({v})" for k, v in sorted(missing.items()))
        raise InputError(f"{frames}: no video folder for {len(missing)} video(s) in {path.name}: {listing}. Link the "
                         "complete rawpic folder of the dataset, or delete those rows from the spreadsheet.")
    if n_fallback:
        log.warning("%s: %d missing or non-increasing offset(s) replaced by apex + %d (published tooling)",
                    path.name, n_fallback, fallback)
    videos = [VideoEntry(video=folder.name, subject=subject, source=str(folder))
              for (subject, folder) in sorted(folders.values(), key=lambda sv: sv[1].name)]
    return LayoutData(videos=videos, rows=rows_frame(records), annotation_file=path,
                      notes={"offset_fallback": n_fallback})
