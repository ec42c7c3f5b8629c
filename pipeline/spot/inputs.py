"""One input of ``m2es spot``: probing it, its content key, and its cache folder.

The cache folder ``<spot.cache_dir>/<key>/`` of an input is named by :func:`content_key`
(SHA-256 of the input's bytes; for a frame folder, of every frame file's name, size and
bytes) and holds ``raw/``: a link to the input under a fixed name plus an empty
generic-layout ``annotations.csv``, the dataset the stages then run on.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import decord
from tqdm.auto import tqdm

from pipeline.errors import InputError
from pipeline.io.atomic import write_text
from pipeline.layouts.common import DEFAULT_IMAGE_EXTENSIONS, frame_number, list_frames
from pipeline.spot.errors import SpotError
from pipeline.spot.native import quiet_native_stderr

VIDEO_NAME = "video"  # the input's name inside its cache (file names never depend on the user's paths)
LINKED_VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov")
ANNOTATIONS_HEADER = "video,subject,onset,apex,offset,type\n"


@dataclass
class SpotInput:
    """One input as given on the command line."""

    path: Path
    kind: str            # file | frames
    name: str
    fps: float
    key: str = ""

    @property
    def label(self) -> str:
        """How messages name the input."""
        return str(self.path)


def probe_input(arg: str, fps: float | None, extensions: Sequence[str] = DEFAULT_IMAGE_EXTENSIONS) -> SpotInput:
    """Check that ``arg`` exists and find its kind and frame rate (``fps`` overrides a file's own).

    A folder must hold numbered frame images (``extensions``); a file must open as a video (what the
    decoder prints about a broken file is kept off the terminal: the error says it)."""
    path = Path(arg).expanduser()
    if not path.exists():
        raise SpotError(f"{path}: no such file or folder. Give a video file or a folder of frame images.")
    if fps is not None and not fps > 0:
        raise SpotError(f"--fps {fps}: must be positive.")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name if path.is_dir() else path.stem) or "input"
    if path.is_dir():
        if fps is None:
            raise SpotError(f"{path}: a frame folder has no frame rate; pass --fps (e.g. --fps 200 for SAMM-LV, "
                            "--fps 30 for CAS(ME)^2).")
        if not _has_frames(path, extensions):
            raise SpotError(f"{path}: no numbered frame images ({', '.join(extensions)}) in this folder. Give a "
                            "folder of frame images named with their frame number (img_00001.jpg, ...) or a video "
                            "file.")
        return SpotInput(path.resolve(), "frames", name, float(fps))
    if not os.access(path, os.R_OK):
        raise SpotError(f"{path}: not readable (permission denied). Fix its permissions or copy it.")
    try:
        with quiet_native_stderr():
            reader = decord.VideoReader(str(path))
            n, own_fps = len(reader), float(reader.get_avg_fps())
            del reader
    except Exception as exc:  # noqa: BLE001 - decord raises its own error types for broken files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpotError(f"{path}: cannot be read as a video ({first}). The file is unreadable or truncated: "
                        "re-encode it (ffmpeg -i IN -c:v libx264 OUT.mp4) or extract its frames into a folder "
                        "and pass the folder with --fps.") from None
    if n == 0:
        raise SpotError(f"{path}: the video has no frames. Replace the file.")
    if fps is None:
        if not own_fps > 0 or not math.isfinite(own_fps):
            raise SpotError(f"{path}: the file records no frame rate; pass --fps.")
        fps = own_fps
    return SpotInput(path.resolve(), "file", name, float(fps))


def _has_frames(folder: Path, extensions: Sequence[str]) -> bool:
    """True when ``folder`` holds at least one numbered image file (as :func:`list_frames` counts them)."""
    exts = tuple(e.lower() for e in extensions)
    try:
        with os.scandir(folder) as scan:
            return any(e.name.lower().endswith(exts) and frame_number(e.name) is not None for e in scan)
    except OSError as exc:
        raise SpotError(f"{folder}: cannot be listed ({exc.strerror or exc}). Check the folder and its "
                        "permissions.") from None


def content_key(inp: SpotInput, extensions: Sequence[str], chunk_mb: int = 8) -> str:
    """SHA-256 of the input's content: a file's bytes; a folder's frame files' names, sizes and bytes.

    Streams every byte (size and mtime are not enough: a re-encoded file can keep both).
    """
    h = hashlib.sha256()
    chunk = chunk_mb << 20

    def feed(path: str | Path) -> None:
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)

    try:
        if inp.kind == "file":
            h.update(b"file\0")
            feed(inp.path)
        else:
            h.update(b"frames\0")
            _, paths, sizes = list_frames(inp.path, tuple(extensions), inp.name)
            for p, size in tqdm(list(zip(paths, sizes)), desc=f"hash {inp.name}", unit="frame", leave=False):
                h.update(f"{Path(p).name}\0{int(size)}\0".encode())
                feed(p)
    except InputError as exc:   # list_frames names the video first; messages name the input's path
        raise SpotError(str(exc).removeprefix(f"video {inp.name}: ")) from None
    except OSError as exc:
        raise SpotError(f"{inp.path}: cannot be read ({exc.strerror or exc}). Check the file and its "
                        "permissions.") from None
    return h.hexdigest()[:24]


def ensure_writable(folder: Path, what: str, flag: str) -> Path:
    """Create ``folder`` if needed and check that a file can be written there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".m2es-write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SpotError(f"{folder}: the {what} folder cannot be written ({exc.strerror or exc}). "
                        f"Pass a writable folder with {flag}.") from None
    return folder


def link_path(inp: SpotInput, raw: Path) -> Path:
    """The fixed-name link to the input in its cache's raw folder (``video`` or ``video.<ext>``)."""
    if inp.kind == "file":
        ext = inp.path.suffix.lower() if inp.path.suffix.lower() in LINKED_VIDEO_EXTENSIONS else ".mp4"
        return raw / f"{VIDEO_NAME}{ext}"
    return raw / VIDEO_NAME


def new_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first (what creating it makes)."""
    made = []
    for f in (folder, *folder.parents):
        if f.exists() or f.is_symlink():
            break
        made.append(f)
    return made


def remove_empty(folders: Sequence[Path]) -> None:
    """Remove each folder that is empty (in the order given: deepest first); others stay as they are."""
    for f in folders:
        try:
            f.rmdir()
        except OSError:   # not empty, or already gone
            pass


def prepare_cache(inp: SpotInput, cache_root: Path) -> tuple[Path, Path]:
    """The input's cache folder and raw folder: a fixed-name link to the input + an empty annotations.csv."""
    base = ensure_writable(cache_root / inp.key, "cache", "--cache-dir")
    raw = base / "raw"
    raw.mkdir(exist_ok=True)
    link = link_path(inp, raw)
    for old in raw.iterdir():  # a previous run of the same content may have used another extension
        if old.name != link.name and old.name != "annotations.csv":
            old.unlink()
    if not (link.is_symlink() and Path(os.readlink(link)) == inp.path):
        tmp = raw / f".{link.name}.{uuid.uuid4().hex[:8]}"
        os.symlink(inp.path, tmp, target_is_directory=inp.kind == "frames")
        os.replace(tmp, link)
    ann = raw / "annotations.csv"
    if not ann.is_file():
        write_text(ann, ANNOTATIONS_HEADER)
    return base, raw
