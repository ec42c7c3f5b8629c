"""Small datasets in the real layouts, written into tmp folders for tests.

Frames are tiny real JPEGs (OpenCV-encoded); a video's frames are hard links to one
file so that thousands of frames cost little. Spreadsheets are real .xlsx files
written by openpyxl.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import yaml
from openpyxl import Workbook


def jpeg_bytes(color: bool = True, size: int = 8, value: int = 0) -> bytes:
    """A small valid JPEG (colour with distinct channels, or grayscale)."""
    if color:
        img = np.zeros((size, size, 3), np.uint8)
        img[..., 0], img[..., 1], img[..., 2] = 30 + value % 50, 120, 220
    else:
        img = np.full((size, size), 100 + value % 100, np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def write_frames(folder: Path, numbers: Iterable[int], name: str = "img_{n}.jpg", color: bool = True,
                 link: bool = True) -> list[Path]:
    """Write frames ``name.format(n=...)`` for every number; hard links to one JPEG when ``link``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = jpeg_bytes(color)
    paths = []
    src: Path | None = None
    for n in numbers:
        p = folder / name.format(n=n)
        if link and src is not None:
            os.link(src, p)
        else:
            p.write_bytes(data)
            src = p
        paths.append(p)
    return paths


def write_casme2_xlsx(path: Path, codes: Sequence[Sequence], rule1: Sequence[Sequence], rule2: Sequence[Sequence],
                      first_sheet: str = "CASFEcode_final", sheets: int = 3) -> Path:
    """A CAS(ME)^2 spreadsheet: no header rows; sheets codes, naming rule1, naming rule2."""
    wb = Workbook()
    ws = wb.active
    ws.title = first_sheet
    for row in codes:
        ws.append(list(row))
    if sheets >= 2:
        ws2 = wb.create_sheet("naming rule1")
        for row in rule1:
            ws2.append(list(row))
    if sheets >= 3:
        ws3 = wb.create_sheet("naming rule2")
        for row in rule2:
            ws3.append(list(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)
    return path


SAMM_HEADER = ["Subject", "Filename", "Inducement Code", "Onset", "Apex", "Offset", "Duration", "Type",
               "Action Units", "Notes"]


def write_samm_xlsx(path: Path, rows: Sequence[Sequence], preamble: int = 9, header: Sequence[str] = SAMM_HEADER,
                    sheet: str = "FACS_Movement_Only") -> Path:
    """A SAMM-LV spreadsheet: ``preamble`` text lines, then the header row and the rows."""
    wb = Workbook()
    ws = wb.active
    ws.title = "Info"
    ws.append(["SAMM Long Videos release notes"])
    ws = wb.create_sheet(sheet)
    for i in range(preamble):
        ws.append([f"preamble line {i + 1}"] if i % 3 == 0 else [])
    ws.append(list(header))
    for row in rows:
        ws.append(list(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)
    return path


def write_preset(workdir: Path, name: str, preset: dict) -> Path:
    """Write ``configs/datasets/<name>.yaml`` under ``workdir``."""
    path = workdir / "configs" / "datasets" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(preset, sort_keys=False))
    return path


def casme2_dataset(root: Path, n_frames: dict[str, int] | None = None, extra_codes: Sequence[Sequence] = (),
                   first_sheet: str = "CASFEcode_final", sheets: int = 3, columns: int = 9) -> dict:
    """A two-subject CAS(ME)^2-layout dataset; returns facts the tests check.

    Subjects s15 (participant 1, rule1 prefix ``s15``) and s16 (participant 2, prefix
    ``16``); videos 15_0101disgustingteeth (40 frames), 15_0102eatingworms (30),
    16_0101disgustingteeth (20), plus an unannotated 16_0508funnydunkey (12).
    """
    n = {"15_0101disgustingteeth": 40, "15_0102eatingworms": 30, "16_0101disgustingteeth": 20,
         "16_0508funnydunkey": 12}
    n.update(n_frames or {})
    for video, count in n.items():
        write_frames(root / "rawpic" / f"s{video[:2]}" / video, range(1, count + 1), "img_{n}.jpg")
    codes = [
        [1, "disgust1_1", 3, 5, 9, "4", "disgust", "macro-expression", "disgust"],
        [1, "disgust1_2", 12, 14, 0, "4+7", "disgust", "micro-expression", "disgust"],   # offset missing
        [1, "disgust2_1", 2, 6, 4, "12", "disgust", "macro-expression", "disgust"],      # offset before apex
        [2, "disgust1_1", 10, 11, 15, "1+2", "surprise", "micro-expression", "surprise"],
    ]
    codes = [list(r)[:columns] for r in codes + [list(r) for r in extra_codes]]
    rule1 = [["Sub1", "s15", 1], ["Sub2", "16", 2]]
    rule2 = [[101, "disgust1"], [102, "disgust2"], [508, "funnydunkey"]]
    write_casme2_xlsx(root / "CAS(ME)^2code_final.xlsx", codes, rule1, rule2, first_sheet, sheets)
    return {"n_frames": n, "codes": codes}


def samm_dataset(root: Path, release: str = "V2") -> dict:
    """A SAMM-LV-layout dataset: videos 006_1 (60 frames), 006_2 (45), 007_3 (50)."""
    n = {"006_1": 60, "006_2": 45, "007_3": 50}
    for video, count in n.items():
        write_frames(root / "SAMM_longvideos" / video, range(1, count + 1), f"{video}_{{n:04d}}.jpg", color=False)
    rows = [
        [6, "006_1_1", "1_1", 5, 9, 20, 16, "Macro", "AU12", ""],
        [6, "006_1_2", "1_1", 30, 33, 40, 11, "Micro - 1/2", "AU4", ""],
        [6, "006_2_1", "2_1", 10, -1, 44, 35, "Macro", "AU1", "apex unknown"],
        [6, "006_2_2", "2_1", 40, 44, 52, 13, "Micro - 1/2", "AU2", "past the end"],
        [7, "007_3_1", "3_1", 1, 8, 12, 12, "Micro - 1/2", "AU14", ""],
    ]
    write_samm_xlsx(root / f"SAMM_LongVideos_{release}_Release.xlsx", rows)
    return {"n_frames": n, "rows": rows}


def ingested_samm(workspace) -> None:
    """A small SAMM-LV dataset (:func:`samm_dataset`) in ``workspace`` as preset ``samm`` (200 -> 30 fps,
    grayscale), ingested: ready for the resample stage."""
    samm_dataset(workspace.root / "data/raw/samm")
    workspace.preset("samm", root="data/raw/samm", layout="samm", frames_dir="SAMM_longvideos",
                     annotation_file="SAMM_LongVideos_V?_Release.xlsx", source_fps=200, target_fps=30, color=False)
    workspace.run("ingest", "samm")
