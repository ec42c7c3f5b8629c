"""How a synthetic dataset lies on disk: names, frame files and annotation files.

Three layouts, matching what the ingest stage reads for real data:

* ``casme2``: ``<frames_dir>/s15/15_0101disgustingteeth/img_1.jpg`` (1-based, unpadded)
  and ``CAS(ME)^2code_final.xlsx`` (three headerless sheets: expressions, ``naming
  rule1``, ``naming rule2``);
* ``samm``: ``<frames_dir>/006_1/006_1_0001.jpg`` (1-based, 4 digits) and
  ``SAMM_LongVideos_V3_Release.xlsx`` (sheet ``FACS_Movement_Only``, 9 preamble lines,
  then the header row);
* ``mp4``: ``<video>.mp4`` files (``cv2.VideoWriter``, ``mp4v``) plus the generic
  ``annotations.csv`` (frames are 0-based decode indices).

Every layout also gets ``ground_truth.csv`` (one row per expression, in the dataset's
own frame numbering, with AUs, regions and amplitude) and ``distractors.csv``.
"""

from __future__ import annotations

import os
import re
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import pandas as pd
from openpyxl import Workbook

from pipeline.errors import ConfigError
from pipeline.io.atomic import atomic_path, partial_path
from pipeline.io.tables import write_table
from pipeline.synthetic.schedule import Event, Instance

#: Subject folder numbers of the real CAS(ME)^2 (participant i+1 -> s<number>), then 41, 42, ...
CASME2_SUBJECT_NUMBERS = (15, 16, 19, 20, 21, 22, 23, 24, 25, 26, 27, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 40)
#: Subject numbers of the real SAMM-LV, then 038, 039, ...
SAMM_SUBJECT_NUMBERS = (6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 28, 30,
                        31, 32, 33, 34, 35, 36, 37)
#: CAS(ME)^2-style stimuli: (video code, stimulus name, free-text folder suffix).
CASME2_STIMULI = (
    (101, "disgust1", "disgustingteeth"), (102, "disgust2", "eatingworms"), (401, "anger1", "girlcrashing"),
    (402, "anger2", "beatingpregnantwoman"), (502, "happy1", "cup"), (503, "happy2", "funnyfarting"),
    (505, "happy3", "funnyinnovations"), (507, "happy4", "climbingthewall"), (508, "happy5", "funnydunkey"),
)
LAYOUTS = ("casme2", "samm", "mp4")
GROUND_TRUTH = "ground_truth.csv"
DISTRACTORS = "distractors.csv"
GT_COLUMNS = ["video", "subject", "participant", "onset", "apex", "offset", "type", "aus", "regions", "emotion",
              "amplitude_px224", "n_frames", "fps"]


@dataclass
class VideoSpec:
    """One video of a synthetic dataset: who, how long, what happens, where it goes."""

    video: str
    subject: str
    participant: int
    subject_index: int
    video_index: int
    n_frames: int
    fps: float
    rel_path: str                    # frame folder or video file, relative to the dataset root
    stimulus: tuple[int, str, str] | None = None
    instances: list[Instance] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    drift: dict[str, float] = field(default_factory=dict)
    seed: int = 0


def _number(numbers: Sequence[int], i: int) -> int:
    return numbers[i] if i < len(numbers) else numbers[-1] + 1 + i - len(numbers)


def _stimulus(j: int) -> tuple[int, str, str]:
    if j < len(CASME2_STIMULI):
        return CASME2_STIMULI[j]
    k = j - len(CASME2_STIMULI) + 1
    return 600 + k, f"others{k}", f"clip{k}"


def name_video(layout: str, frames_dir: str, subject_index: int, video_index: int
               ) -> tuple[str, str, int, str, tuple[int, str, str] | None]:
    """(video, subject, participant, path relative to the root, stimulus) of one video.

    ``subject_index`` and ``video_index`` are 0-based. CAS(ME)^2 subjects are
    ``s15``-style folders (participant = index + 1), SAMM-LV subjects ``006``-style.
    """
    if layout == "casme2":
        num = _number(CASME2_SUBJECT_NUMBERS, subject_index)
        stim = _stimulus(video_index)
        video = f"{num}_{stim[0]:04d}{stim[2]}"
        subject = f"s{num}"
        return video, subject, subject_index + 1, f"{frames_dir}/{subject}/{video}", stim
    if layout in ("samm", "mp4"):
        num = _number(SAMM_SUBJECT_NUMBERS, subject_index)
        subject = f"{num:03d}"
        video = f"{subject}_{video_index + 1}"
        rel = f"{frames_dir}/{video}" if layout == "samm" else f"{video}.mp4"
        return video, subject, subject_index + 1, rel, None
    raise ConfigError(f"synth: unknown layout '{layout}'; use one of {', '.join(LAYOUTS)}.")


def frame_name(layout: str, video: str, number: int) -> str:
    """File name of frame ``number`` (the dataset's 1-based number) of ``video``."""
    if layout == "casme2":
        return f"img_{number}.jpg"
    if layout == "samm":
        return f"{video}_{number:04d}.jpg"
    raise ConfigError(f"synth: layout '{layout}' has no frame files.")


def first_frame_number(layout: str) -> int:
    """The dataset's number of a video's first frame: 1 for frame folders, 0 for video files."""
    return 0 if layout == "mp4" else 1


class FrameSink:
    """Writes one video's frames (JPEG folder or mp4) under a temporary name; ``commit`` publishes it."""

    def __init__(self, layout: str, root: Path, spec: VideoSpec, jpeg_quality: int, color: bool, size: tuple[int, int]):
        self.layout = layout
        self.final = Path(root) / spec.rel_path
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = partial_path(self.final)
        self.spec = spec
        self.params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
        self.count = 0
        self.writer = None
        if layout == "mp4":
            self.writer = cv2.VideoWriter(str(self.tmp.with_suffix(".mp4")), cv2.VideoWriter_fourcc(*"mp4v"),
                                          float(spec.fps), (int(size[0]), int(size[1])), bool(color))
            if not self.writer.isOpened():
                raise ConfigError(f"{self.final}: OpenCV cannot write mp4v video here; use synth.format: frames.")
            self.tmp = self.tmp.with_suffix(".mp4")
        else:
            self.tmp.mkdir(parents=True)

    def write(self, frame: np.ndarray) -> None:
        """Append the next frame."""
        self.count += 1
        if self.writer is not None:
            self.writer.write(frame)
            return
        path = self.tmp / frame_name(self.layout, self.spec.video, self.count)
        if not cv2.imwrite(str(path), frame, self.params):
            raise OSError(f"{path}: could not write the frame")

    def commit(self) -> None:
        """Close and rename to the final name (replacing an older copy)."""
        if self.writer is not None:
            self.writer.release()
            os.replace(self.tmp, self.final)
            return
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(self.final, old)
            _rmtree(old)
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        """Remove the temporary output."""
        if self.writer is not None:
            self.writer.release()
            Path(self.tmp).unlink(missing_ok=True)
        elif Path(self.tmp).exists():
            _rmtree(Path(self.tmp))


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def ground_truth_table(specs: Iterable[VideoSpec], layout: str) -> pd.DataFrame:
    """Canonical ground truth: one row per expression in the dataset's own frame numbering."""
    base = first_frame_number(layout)
    rows = []
    for v in specs:
        for i in v.instances:
            rows.append({"video": v.video, "subject": v.subject, "participant": v.participant,
                         "onset": i.onset + base, "apex": i.apex + base, "offset": i.offset + base,
                         "type": i.type, "aus": i.au_codes, "regions": "+".join(i.regions),
                         "emotion": i.emotion, "amplitude_px224": round(i.amplitude_px224, 4),
                         "n_frames": v.n_frames, "fps": v.fps})
    return pd.DataFrame(rows, columns=GT_COLUMNS)


def distractor_table(specs: Iterable[VideoSpec], layout: str) -> pd.DataFrame:
    """Every unlabelled distractor event (start, end in the dataset's numbering)."""
    base = first_frame_number(layout)
    rows = [{"video": v.video, "subject": v.subject, "kind": e.kind, "start": e.start + base, "end": e.end + base,
             **{k: round(val, 4) for k, val in e.values.items()}}
            for v in specs for e in v.events]
    return pd.DataFrame(rows, columns=["video", "subject", "kind", "start", "end"] +
                        sorted({k for r in rows for k in r} - {"video", "subject", "kind", "start", "end"}))


def _save_workbook(wb: Workbook, path: Path) -> None:
    """Save atomically and byte-deterministically (fixed zip entry times and document dates).

    openpyxl stamps the save time into the zip entries and docProps/core.xml; without
    fixing them, identical content would change the dataset's DVC hash on every run and
    rerun every stage downstream.
    """
    with atomic_path(path) as tmp:
        wb.save(tmp)
        with zipfile.ZipFile(tmp) as src:
            entries = [(info.filename, src.read(info)) for info in src.infolist()]
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for name, data in entries:
                if name == "docProps/core.xml":
                    data = re.sub(rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*(<)", rb"\g<1>2000-01-01T00:00:00Z\2",
                                  data)
                dst.writestr(zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0)), data,
                             compress_type=zipfile.ZIP_DEFLATED)


def write_casme2_xlsx(specs: Sequence[VideoSpec], path: Path) -> None:
    """``CAS(ME)^2code_final.xlsx``: three headerless sheets, as the real release."""
    wb = Workbook()
    ws = wb.active
    ws.title = "CASFEcode_final"
    for v in specs:
        assert v.stimulus is not None
        for k, i in enumerate(v.instances, start=1):
            ws.append([v.participant, f"{v.stimulus[1]}_{k}", i.onset + 1, i.apex + 1, i.offset + 1, i.au_codes,
                       i.emotion, f"{i.type}-expression", i.emotion])
    rule1 = wb.create_sheet("naming rule1")
    for v in sorted({(v.participant, v.subject) for v in specs}):
        rule1.append([v[1], int(v[1][1:]), v[0]])
    rule2 = wb.create_sheet("naming rule2")
    for code, stim, _ in sorted({v.stimulus for v in specs if v.stimulus}):
        rule2.append([code, stim])
    _save_workbook(wb, path)


SAMM_PREAMBLE = (
    "SAMM Long Videos - synthetic release generated by m2es (pipeline/synth.py)",
    "Layout and columns follow SAMM_LongVideos_V3_Release.xlsx; faces are synthetic.",
    "Frame numbers are 1-based at 200 fps, as the image file names.",
    "Type: Macro, or Micro - 1/2 (at most half a second).",
    "Duration = Offset - Onset + 1 (frames).",
    "Action Units are FACS codes joined with '+'.",
    "Notes: the generator's amplitude in px at a 224-px face.",
    "Distractors (blinks, head motion, lighting) are not listed.",
    "Sheet: FACS_Movement_Only",
)
SAMM_HEADER = ["Subject", "Filename", "Inducement Code", "Onset", "Apex", "Offset", "Duration", "Type",
               "Action Units", "Notes"]


def write_samm_xlsx(specs: Sequence[VideoSpec], path: Path) -> None:
    """``SAMM_LongVideos_V3_Release.xlsx``: sheet FACS_Movement_Only, 9 preamble rows, header, rows."""
    wb = Workbook()
    ws = wb.active
    ws.title = "FACS_Movement_Only"
    for line in SAMM_PREAMBLE:
        ws.append([line])
    ws.append(SAMM_HEADER)
    for v in specs:
        for k, i in enumerate(v.instances, start=1):
            ws.append([v.subject, f"{v.video}_{k}", v.video_index + 1, i.onset + 1, i.apex + 1, i.offset + 1,
                       i.offset - i.onset + 1, "Macro" if i.type == "macro" else "Micro - 1/2", i.au_codes,
                       f"amplitude {i.amplitude_px224:.2f} px@224"])
    _save_workbook(wb, path)


def write_generic_annotations(specs: Sequence[VideoSpec], path: Path) -> pd.DataFrame:
    """The generic ``annotations.csv`` for video files (0-based decode indices)."""
    gt = ground_truth_table(specs, "mp4")
    df = gt[["video", "subject", "onset", "apex", "offset", "type"]]
    write_csv(df, path)
    return df


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write a CSV atomically (through :func:`pipeline.io.tables.write_table`)."""
    write_table(df, path)
