"""What every layout shares: finding the annotation file, listing and checking frames.

Frame verification at ingest (a deliberate trade-off, see ``docs/architecture.md``):

* every frame file of a folder is listed and its frame number parsed from the name
  (the last run of digits in the file stem, compared as an integer: ``img_10`` sorts
  after ``img_9``);
* the numbers must be contiguous (no gap, no duplicate number);
* every file must be non-empty (one ``stat`` per file, cheap even for 500k frames);
* ``decode_sample`` frames per video (always the first and the last, the rest evenly
  spaced) are fully decoded with OpenCV, which catches truncated or corrupt images and
  tells us whether the frames are colour or grayscale.

Decoding every image of SAMM-LV (491k frames) would take longer than the whole
ingest; an unreadable frame outside the sample is caught later by ``crop``, which
decodes every kept frame and reports the file.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, InputError

log = logging.getLogger(__name__)

DEFAULT_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov")
_TRAILING_NUMBER = re.compile(r"(\d+)(?!.*\d)")


@dataclass
class VideoEntry:
    """One video as a layout finds it: a folder of frames or a video file."""

    video: str
    subject: str
    source: str
    kind: str = "frames"  # frames | file


@dataclass
class LayoutData:
    """What a layout reader returns: the videos it found and the raw annotation rows.

    ``rows`` has columns video, subject, type (already ``macro``/``micro``),
    source_onset, source_apex, source_offset (the dataset's numbers; apex may be NaN
    when the annotation has none) and origin (where the row came from, for messages).
    ``annotation_file`` is the file the rows were read from.
    """

    videos: list[VideoEntry]
    rows: pd.DataFrame
    annotation_file: Path
    notes: dict[str, int] = field(default_factory=dict)


ROW_COLUMNS = ["video", "subject", "type", "source_onset", "source_apex", "source_offset", "origin"]


def dataset_root(preset: Mapping[str, Any]) -> Path:
    """The dataset's root folder, checked to exist."""
    root = Path(str(preset["root"]))
    if root.is_dir():
        return root
    name = preset.get("name")
    if preset.get("synthetic"):
        fix = (f"does not exist yet: run `dvc repro synth@{name}` (or `m2es synth --dataset {name}`) first, "
               "which generates it.")
    else:
        fix = (f"does not exist. Link or copy the dataset there (ln -s /path/to/dataset {root}) or set 'root' in "
               f"configs/datasets/{name}.yaml.")
    raise InputError(f"dataset root {root} ({'synthetic ' if preset.get('synthetic') else ''}preset '{name}') {fix}")


def frames_root(preset: Mapping[str, Any], root: Path) -> Path:
    """The folder holding the video folders (``root/frames_dir``), checked to exist."""
    sub = preset.get("frames_dir") or ""
    folder = root / sub if sub else root
    if not folder.is_dir():
        raise InputError(
            f"{folder}: frames folder not found in the dataset root. Check that the dataset is complete, or set "
            f"'frames_dir' in configs/datasets/{preset.get('name')}.yaml to the folder holding the video folders."
        )
    return folder


def resolve_annotation_file(preset: Mapping[str, Any], root: Path) -> Path:
    """The annotation file ``root/annotation_file``; the name may be a glob (one match required).

    The root is escaped before globbing, so dataset paths containing ``(``, ``)``, ``^``,
    ``[`` or spaces are taken literally.
    """
    pattern = preset.get("annotation_file")
    name = preset.get("name")
    if not pattern:
        raise ConfigError(f"configs/datasets/{name}.yaml: missing key 'annotation_file' (the annotation file "
                          "name relative to 'root').")
    pattern = str(pattern)
    if glob.has_magic(pattern):
        matches = sorted(Path(p) for p in glob.glob(os.path.join(glob.escape(str(root)), pattern)))
    else:
        candidate = root / pattern
        matches = [candidate] if candidate.is_file() else []
    if not matches:
        raise InputError(
            f"{root / pattern}: annotation file not found. Put the dataset's annotation file in {root} or set "
            f"'annotation_file' in configs/datasets/{name}.yaml."
        )
    if len(matches) > 1:
        raise InputError(
            f"{root / pattern}: {len(matches)} files match ({', '.join(p.name for p in matches)}). Keep one "
            f"release or name it exactly in 'annotation_file' of configs/datasets/{name}.yaml."
        )
    return matches[0]


def frame_number(name: str) -> int | None:
    """The frame number in a frame file name: the last run of digits in its stem."""
    m = _TRAILING_NUMBER.search(Path(name).stem)
    return int(m.group(1)) if m else None


def list_frames(folder: str | Path, extensions: Sequence[str] = DEFAULT_IMAGE_EXTENSIONS,
                video: str | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
    """List the frame images of ``folder``: (numbers sorted numerically, paths, file sizes).

    Raises :class:`InputError` when the folder has no frames or two files carry the same number.
    """
    folder = Path(folder)
    video = video or folder.name
    exts = tuple(e.lower() for e in extensions)
    entries: list[tuple[int, str, int]] = []
    try:
        scan = list(os.scandir(folder))
    except OSError as exc:
        raise InputError(f"video {video}: cannot list {folder} ({exc.strerror}). Check the folder and its "
                         "permissions.") from exc
    for entry in scan:
        if not entry.name.lower().endswith(exts):
            continue
        number = frame_number(entry.name)
        if number is None:
            continue
        entries.append((number, entry.path, entry.stat().st_size))
    if not entries:
        raise InputError(f"video {video}: {folder} holds no frame images ({', '.join(exts)}). Restore the "
                         "video's frames or remove the folder and its annotations.")
    entries.sort(key=lambda e: e[0])
    numbers = np.fromiter((e[0] for e in entries), dtype=np.int64, count=len(entries))
    paths = [e[1] for e in entries]
    sizes = np.fromiter((e[2] for e in entries), dtype=np.int64, count=len(entries))
    dup = np.flatnonzero(np.diff(numbers) == 0)
    if dup.size:
        i = int(dup[0])
        raise InputError(f"video {video}: {paths[i]} and {paths[i + 1]} have the same frame number "
                         f"{numbers[i]}. Keep one of them.")
    return numbers, paths, sizes


def check_contiguous(numbers: np.ndarray, folder: str | Path, video: str) -> None:
    """Raise :class:`InputError` naming the first missing frame number when there is a gap."""
    gaps = np.flatnonzero(np.diff(numbers) != 1)
    if gaps.size:
        i = int(gaps[0])
        missing = (f"{numbers[i] + 1}" if numbers[i + 1] == numbers[i] + 2
                   else f"{numbers[i] + 1}..{numbers[i + 1] - 1}")
        raise InputError(
            f"video {video}: frame number(s) {missing} missing in {folder} ({gaps.size} gap(s); frames run "
            f"{numbers[0]}..{numbers[-1]}). Restore the missing frames from the dataset."
        )


def sample_indices(n: int, k: int) -> list[int]:
    """Indices of ``k`` frames out of ``n`` to decode: first, last and evenly spaced between."""
    if n <= 0 or k <= 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, num=min(k, n) if k > 1 else 1)} | {0, n - 1})


def decode_image(path: str) -> np.ndarray | None:
    """Decode one image with OpenCV (unchanged channels); None when unreadable."""
    import cv2

    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def is_color(image: np.ndarray, tolerance: float = 2.0) -> bool:
    """True when an image has colour: 3+ channels whose mean absolute difference exceeds ``tolerance``.

    The tolerance (in grey levels) absorbs the small channel differences that lossy
    codecs leave in grayscale content stored as RGB.
    """
    if image.ndim == 2 or image.shape[2] == 1:
        return False
    c = image[..., :3].astype(np.int16)
    spread = max(float(np.abs(c[..., 0] - c[..., 1]).mean()), float(np.abs(c[..., 1] - c[..., 2]).mean()))
    return spread > tolerance


def check_images(paths: Sequence[str], sizes: np.ndarray, video: str, decode_sample: int) -> list[np.ndarray]:
    """Check that every frame file is non-empty and that a sample decodes; return the decoded sample."""
    empty = np.flatnonzero(sizes <= 0)
    if empty.size:
        raise InputError(f"video {video}: {paths[int(empty[0])]} is empty ({empty.size} empty frame file(s) in "
                         "this video). Restore the frames from the dataset.")
    images = []
    for i in sample_indices(len(paths), decode_sample):
        image = decode_image(paths[i])
        if image is None:
            raise InputError(f"video {video}: {paths[i]} cannot be decoded as an image (corrupt or truncated). "
                             "Restore the frame from the dataset.")
        images.append(image)
    return images


def count_video_file(path: str | Path, video: str, decode_sample: int) -> tuple[int, list[np.ndarray]]:
    """Number of frames of a video file (decord), decoding a sample to check it is readable."""
    try:
        import decord

        reader = decord.VideoReader(str(path))
        n = len(reader)
        images = [reader[i].asnumpy() for i in sample_indices(n, decode_sample)]
    except Exception as exc:  # decord raises its own error types for unreadable files
        raise InputError(f"video {video}: {path} cannot be decoded ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}). Re-encode it (e.g. ffmpeg -i IN "
                         "-c:v libx264 OUT.mp4) or extract its frames into a folder.") from None
    if n == 0:
        raise InputError(f"video {video}: {path} has no frames. Replace the file or remove it.")
    return n, images


def normalize_type(label: Any, origin: str) -> str:
    """Map a dataset's expression type label to ``macro`` / ``micro``.

    Accepts the labels of CAS(ME)^2 (``macro-expression``), SAMM-LV (``Macro``,
    ``Micro - 1/2``) and the canonical ``macro`` / ``micro`` (any case).
    """
    text = str(label).strip().lower() if label is not None else ""
    if text.startswith("macro"):
        return "macro"
    if text.startswith("micro"):
        return "micro"
    raise InputError(f"{origin}: unknown expression type '{label}'. Use macro or micro (CAS(ME)^2: "
                     "macro-expression / micro-expression; SAMM-LV: Macro / Micro - 1/2).")


def to_number(value: Any, origin: str, what: str, allow_missing: bool = False) -> float:
    """A frame number from a spreadsheet cell (NaN when missing and allowed)."""
    if is_empty(value):
        if allow_missing:
            return float("nan")
        raise InputError(f"{origin}: {what} is empty. Fill in the frame number or delete the row.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        if allow_missing:
            return float("nan")
        raise InputError(f"{origin}: {what} '{value}' is not a frame number. Fix the cell.") from None
    if not number.is_integer():
        raise InputError(f"{origin}: {what} {value} is not a whole frame number. Fix the cell.")
    return number


def read_workbook(path: Path, sheets: Sequence[str | int] | None = None) -> dict[str | int, pd.DataFrame]:
    """Read sheets of an .xlsx file without headers; errors name the file.

    ``sheets`` None reads every sheet, keyed by position (0, 1, ...); otherwise the named sheets.
    Cells are taken literally (``n/a`` stays text, empty cells are empty strings).
    """
    try:
        with pd.ExcelFile(path, engine="openpyxl") as book:
            names = list(book.sheet_names)
            if sheets is None:
                return {i: book.parse(name, header=None, keep_default_na=False) for i, name in enumerate(names)}
            missing = [s for s in sheets if s not in names]
            if missing:
                raise InputError(f"{path}: sheet(s) {', '.join(map(str, missing))} not found (sheets: "
                                 f"{', '.join(names)}). Use the dataset's original annotation spreadsheet.")
            return {s: book.parse(s, header=None, keep_default_na=False) for s in sheets}
    except InputError:
        raise
    except Exception as exc:  # openpyxl/zipfile errors for corrupt or non-xlsx files
        raise InputError(f"{path}: cannot be read as an .xlsx spreadsheet ({type(exc).__name__}: {exc}). "
                         "Use the dataset's original annotation spreadsheet.") from None


def is_empty(value: Any) -> bool:
    """True for an empty spreadsheet cell (None, NaN or blank text)."""
    return value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str)
                                                                                and not value.strip())


def rows_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Raw annotation rows as a DataFrame with :data:`ROW_COLUMNS`."""
    return pd.DataFrame.from_records(records, columns=ROW_COLUMNS)
