"""Decoding the frames of one video: image folders (OpenCV) and video files (decord).

A :class:`FrameSource` is the ordered list of frames a stage wants from one video
(usually the video's rows of ``resample/frames.csv``); position ``i`` is the 0-based
frame index of the processed sequence. Frames come back as ``uint8`` arrays, RGB
``[H, W, 3]`` for colour sources and ``[H, W]`` for grayscale ones.

* Image folders are decoded with OpenCV from the file's bytes. JPEG files can be
  decoded at 1/2, 1/4 or 1/8 of their size (``IMREAD_REDUCED_*``, the DCT does the
  shrinking, so it is faster than a full decode); a file that is empty, truncated (no
  JPEG end marker) or undecodable raises :class:`BadFrameError` naming its path.
  :func:`read_patch` decodes only the part of a JPEG around a box (libjpeg-turbo, see
  :mod:`pipeline.io.jpeg_region`), with the same pixels as the whole decode.
* Video files are decoded with decord; ``source_frame`` is the 0-based decode index.
  They are always decoded at full size (``supports_reduce`` is False).

:meth:`FrameSource.map` applies a per-frame function in a thread pool (decoding and
OpenCV release the GIL), yielding results in order, with a bad frame yielded as its
:class:`BadFrameError` instead of a result so that the caller decides what to do;
:meth:`FrameSource.map_groups` does the same per group of consecutive frames (the crop
stage's storage chunks), one task per group, with whole frames or with patches around a
box per frame.
"""

from __future__ import annotations

import logging
from collections import deque
from functools import lru_cache
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np

from pipeline.errors import InputError
from pipeline.io.jpeg_region import JPEG_SOI, MARGIN, Patch, available, decode_region, jpeg_shape, libjpeg_version

log = logging.getLogger(__name__)

REDUCTIONS = (1, 2, 4, 8)
_JPEG_EOI = b"\xff\xd9"
_RGB_FLAG = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10 decodes straight to RGB
BoxFn = Callable[[tuple[int, ...]], Sequence[int]]  # decoded frame shape -> the box wanted in it
RegionFn = Callable[[int, tuple[int, ...]], Sequence[int]]  # (position, decoded frame shape) -> box


class BadFrameError(InputError):
    """One frame could not be decoded; ``path`` is its file (or ``file#index``)."""

    def __init__(self, message: str, path: str, position: int | None = None):
        super().__init__(message)
        self.path = path
        self.position = position


def _imread_flag(color: bool, reduce: int) -> tuple[int, bool]:
    """OpenCV flag for a colour/grayscale decode at 1/``reduce``; second value: BGR needs swapping."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce}")
    if not color:
        return {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
                4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[reduce], False
    flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
            4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[reduce]
    if _RGB_FLAG is not None:
        return (flag & ~cv2.IMREAD_COLOR) | _RGB_FLAG, False
    return flag, True


def _jpeg_is_truncated(data: np.ndarray) -> bool:
    """True for JPEG bytes without an end-of-image marker (trailing zero padding allowed)."""
    if data.size < 4 or bytes(data[:2]) != JPEG_SOI:
        return False
    tail = bytes(data[-64:]).rstrip(b"\x00\r\n ")
    return not tail.endswith(_JPEG_EOI)


def _read_bytes(path: str) -> np.ndarray:
    """A frame file's bytes; BadFrameError naming it when missing, empty or a truncated JPEG."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise BadFrameError(f"{path}: cannot read frame ({exc.strerror or exc}). "
                            "Check that the dataset is complete and readable.", path) from exc
    if data.size == 0:
        raise BadFrameError(f"{path}: frame file is empty (0 bytes). Restore it from the dataset.", path)
    if _jpeg_is_truncated(data):
        raise BadFrameError(f"{path}: truncated JPEG (no end-of-image marker). Restore it from the dataset.", path)
    return data


def _decode_whole(data: np.ndarray, path: str, color: bool, reduce: int) -> np.ndarray:
    """OpenCV's decode of a file's bytes at 1/``reduce``; BadFrameError naming ``path`` when it fails."""
    flag, swap = _imread_flag(color, reduce)
    image = cv2.imdecode(data, flag)
    if image is None:
        raise BadFrameError(f"{path}: not a decodable image. Restore it from the dataset.", path)
    if swap:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def read_image(path: str | Path, *, color: bool, reduce: int = 1) -> np.ndarray:
    """Decode one image file to RGB ``[H, W, 3]`` (``color``) or ``[H, W]``, at 1/``reduce`` size.

    Raises :class:`BadFrameError` (an :class:`InputError`) naming the file when it is
    missing, empty, a truncated JPEG or not decodable.
    """
    path = str(path)
    return _decode_whole(_read_bytes(path), path, color, reduce)


def _test_jpegs() -> list[tuple[np.ndarray, bool]]:
    """Small JPEGs with edges and noise everywhere: colour 4:2:0, colour 4:4:4, grey (bytes, colour?)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:80, 0:112]
    base = np.stack([xx * 2, yy * 3, (xx + yy) % 64 * 4], axis=-1).astype(np.float64)
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    out = []
    for extra, grey in (([cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420], False),
                        ([cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444], False),
                        ([], True)):
        ok, buf = cv2.imencode(".jpg", img[..., 0] if grey else img, [cv2.IMWRITE_JPEG_QUALITY, 90, *extra])
        if not ok:
            raise RuntimeError("OpenCV cannot encode JPEG")
        out.append((buf.ravel(), not grey))
    return out


@lru_cache(maxsize=None)
def region_decoder_agrees(margin: int = MARGIN) -> bool:
    """True when the region decoder is built and gives OpenCV's pixels here (checked once per process).

    The two may link different libjpeg-turbo builds (OpenCV bundles its own). Small test
    JPEGs (colour 4:2:0 and 4:4:4, grey) are decoded whole by OpenCV and around boxes
    that start and end off the 8/16-px block grid by the region decoder, at 1/1 and 1/2,
    as colour and grey; one differing pixel and :func:`read_patch` decodes whole frames,
    so crops never depend on which library decoded them. ``margin``: the region decoder's.
    """
    if not available():
        return False
    # edges off the block grid, at odd and even pixels (fancy upsampling at a cut edge shows on odd ones)
    boxes = ((13, 11, 62, 60), (0, 0, 36, 28), (51, 21, 112, 80), (-7, 30, 46, 92), (5, 3, 99, 74))
    for data, color in _test_jpegs():
        for want_color in {color, False}:
            for reduce in (1, 2):
                whole = _decode_whole(data, "<test JPEG>", want_color, reduce)
                if jpeg_shape(data, want_color, reduce) != whole.shape:
                    return False
                for box in boxes:
                    b = [v // reduce for v in box]
                    patch = decode_region(data, b, whole.shape, want_color, reduce, margin)
                    if patch is None:
                        return False
                    x0, y0 = max(b[0], 0), max(b[1], 0)
                    x1, y1 = min(b[2], whole.shape[1]), min(b[3], whole.shape[0])
                    mine = patch.pixels[y0 - patch.y:y1 - patch.y, x0 - patch.x:x1 - patch.x]
                    if not np.array_equal(mine, whole[y0:y1, x0:x1]):
                        if margin == MARGIN:
                            log.warning("the JPEG region decoder (libjpeg-turbo %s) does not reproduce OpenCV's "
                                        "decode on this machine; the crop stage decodes whole frames",
                                        libjpeg_version())
                        return False
    return True


def read_patch(path: str | Path, region: BoxFn, *, color: bool, reduce: int = 1) -> Patch:
    """Decode the part of one image file that holds ``region(frame_shape)``'s box.

    ``region`` gets the shape the whole frame decodes to at 1/``reduce`` and returns the
    box [x0, y0, x1, y1) wanted in those pixels. JPEG files are decoded around the box
    only (:mod:`pipeline.io.jpeg_region`); other files, and every file when the extension is
    not built or does not agree with OpenCV (:func:`region_decoder_agrees`), are decoded
    whole with OpenCV: the same pixels either way. Errors as :func:`read_image`.
    """
    path = str(path)
    data = _read_bytes(path)
    shape = jpeg_shape(data, color, reduce) if region_decoder_agrees() else None
    if shape is not None:
        patch = decode_region(data, region(shape), shape, color, reduce)
        if patch is not None:
            return patch
    return Patch.whole(_decode_whole(data, path, color, reduce))


def choose_reduction(crop_side: float, size: int, allowed: Sequence[int] = REDUCTIONS) -> int:
    """The largest decode reduction that keeps a ``crop_side``-pixel crop at least ``size`` pixels."""
    best = 1
    for k in sorted(allowed):
        if crop_side / k >= size:
            best = k
    return best


class FrameSource:
    """The ordered frames of one video. Subclasses implement :meth:`_decode_batch`."""

    supports_reduce = False

    def __init__(self, video: str, color: bool, threads: int = 2):
        self.video = video
        self.color = bool(color)
        self.threads = max(1, int(threads))

    def __len__(self) -> int:
        raise NotImplementedError

    def label(self, position: int) -> str:
        """What to name in messages for frame ``position`` (its file, or ``file#index``)."""
        raise NotImplementedError

    def read(self, position: int, reduce: int = 1) -> np.ndarray:
        """Decode one frame (raises :class:`BadFrameError`)."""
        raise NotImplementedError

    def map(self, func: Callable[[int, np.ndarray], Any], positions: Sequence[int] | None = None,
            reduce: int = 1, batch: int = 64) -> Iterator[tuple[int, Any]]:
        """Yield ``(position, func(position, frame))`` in order; a bad frame yields its BadFrameError.

        Work runs in ``threads`` threads, ``batch`` frames in flight at most.
        """
        def one(group: list[int], items: list[np.ndarray | BadFrameError]) -> Any:
            item = items[0]
            return item if isinstance(item, BadFrameError) else func(group[0], item)

        for group, result in self.map_groups(one, 1, positions, reduce, window=batch):
            yield group[0], result

    def map_groups(self, func: Callable[[list[int], list[Any]], Any], group: int,
                   positions: Sequence[int] | None = None, reduce: int = 1,
                   window: int = 8, region: RegionFn | None = None) -> Iterator[tuple[list[int], Any]]:
        """Yield ``(group_positions, func(group_positions, items))`` for consecutive groups, in order.

        ``items`` holds each position's frame, or its :class:`BadFrameError`; one call of
        ``func`` per ``group`` frames (fewer for the last) runs in the thread pool right after
        the group is decoded, so per-group work (cropping, compressing a storage chunk) costs
        one task instead of one per frame. ``window`` groups are in flight at most.

        With ``region`` (``(position, frame_shape) -> box``) the items are
        :class:`~pipeline.io.jpeg_region.Patch` es holding at least that box of each frame:
        JPEG frames are decoded around the box only (:func:`read_patch`), other sources
        yield their whole frames as patches.
        """
        positions = list(range(len(self)) if positions is None else positions)
        group = max(1, int(group))
        window = max(1, int(window))
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            pending: deque = deque()
            for start in range(0, len(positions), group):
                g = positions[start:start + group]
                ahead = positions[start:start + window * group]
                pending.append((g, self._submit_group(pool, func, g, reduce, ahead, region)))
                if len(pending) >= window:
                    g0, fut = pending.popleft()
                    yield g0, fut.result()
            while pending:
                g0, fut = pending.popleft()
                yield g0, fut.result()

    def _submit_group(self, pool: ThreadPoolExecutor, func: Callable[[list[int], list[Any]], Any],
                      group: list[int], reduce: int, ahead: list[int], region: RegionFn | None) -> Future:
        """Start ``func`` on ``group`` (``ahead``: the positions wanted next, this group's first)."""
        raise NotImplementedError


class ImageFolderSource(FrameSource):
    """Frames stored as one image file each (CAS(ME)^2 ``rawpic``, SAMM-LV folders)."""

    supports_reduce = True

    def __init__(self, video: str, paths: Sequence[str | Path], color: bool, threads: int = 2):
        super().__init__(video, color, threads)
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def label(self, position: int) -> str:
        return self.paths[position]

    def read(self, position: int, reduce: int = 1) -> np.ndarray:
        try:
            return read_image(self.paths[position], color=self.color, reduce=reduce)
        except BadFrameError as exc:
            raise BadFrameError(f"video {self.video}, frame {position}: {exc}", exc.path, position) from None

    def read_patch(self, position: int, region: RegionFn, reduce: int = 1) -> Patch:
        """Decode the part of frame ``position`` that holds ``region(position, shape)`` (see :func:`read_patch`)."""
        try:
            return read_patch(self.paths[position], lambda shape: region(position, shape),
                              color=self.color, reduce=reduce)
        except BadFrameError as exc:
            raise BadFrameError(f"video {self.video}, frame {position}: {exc}", exc.path, position) from None

    def _decode_group(self, func: Callable[[list[int], list[Any]], Any], group: list[int], reduce: int,
                      region: RegionFn | None) -> Any:
        items: list[Any] = []
        for position in group:
            try:
                items.append(self.read(position, reduce) if region is None
                             else self.read_patch(position, region, reduce))
            except BadFrameError as exc:
                items.append(exc)
        return func(group, items)

    def _submit_group(self, pool, func, group, reduce, ahead, region):
        return pool.submit(self._decode_group, func, group, reduce, region)


class VideoFileSource(FrameSource):
    """Frames decoded from one video file with decord; ``indices`` are 0-based decode indices."""

    def __init__(self, video: str, path: str | Path, indices: Sequence[int], color: bool, threads: int = 2):
        super().__init__(video, color, threads)
        self.path = str(path)
        self.indices = [int(i) for i in indices]
        self._reader = None
        self._decoded: dict[int, np.ndarray | BadFrameError] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def label(self, position: int) -> str:
        return f"{self.path}#{self.indices[position]}"

    def _open(self):
        if self._reader is None:
            import decord

            if not Path(self.path).is_file():
                raise InputError(f"video {self.video}: video file {self.path} not found. "
                                 "Check videos.csv: source and the dataset root.")
            try:
                self._reader = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=self.threads)
            except Exception as exc:  # decord raises its own DECORDError for any broken file
                raise InputError(f"video {self.video}: {self.path} cannot be opened as a video ({exc}). "
                                 "Re-encode or restore the file.") from exc
            n = len(self._reader)
            bad = [i for i in self.indices if i < 0 or i >= n]
            if bad:
                raise InputError(f"video {self.video}: {self.path} has {n} frames but frames.csv asks for "
                                 f"decode index {bad[0]}. Rerun ingest and resample on this dataset.")
        return self._reader

    def _decode(self, chunk: Sequence[int]) -> list[np.ndarray | BadFrameError]:
        reader = self._open()
        wanted = [self.indices[p] for p in chunk]
        try:
            frames = list(reader.get_batch(wanted).asnumpy())
        except Exception as exc:  # noqa: BLE001 - fall back to one frame at a time to name the bad one
            log.debug("%s: batch decode failed (%s), decoding one by one", self.path, exc)
            frames = []
            for p, i in zip(chunk, wanted):
                try:
                    reader.seek(i)
                    frames.append(reader.next().asnumpy())
                except Exception as exc1:  # noqa: BLE001
                    frames.append(BadFrameError(f"video {self.video}: {self.path}: frame {i} cannot be decoded "
                                                f"({exc1}). Re-encode or restore the file.", self.label(p), p))
        if not self.color:
            frames = [f if isinstance(f, BadFrameError) else cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        return frames

    def read(self, position: int, reduce: int = 1) -> np.ndarray:
        frame = self._decode([position])[0]
        if isinstance(frame, BadFrameError):
            raise frame
        return frame

    def _submit_group(self, pool, func, group, reduce, ahead, region):
        # decord decodes in its own threads, so frames come from one batched call per window
        # of positions, made here; only ``func`` runs in the pool
        if group[0] not in self._decoded:
            self._decoded = dict(zip(ahead, self._decode(ahead)))
        items = [self._decoded.pop(p) for p in group]
        if region is not None:
            items = [f if isinstance(f, BadFrameError) else Patch.whole(f) for f in items]
        return pool.submit(func, group, items)


def open_source(video: str, kind: str, source: str | Path, color: bool, source_frames: Sequence[int],
                paths: Sequence[str] | None = None, threads: int = 2) -> FrameSource:
    """The frame source of one video from its ``videos.csv`` row and ``frames.csv`` rows.

    ``kind`` is ``frames`` (``paths`` are the image files) or ``file`` (``source`` is the
    video file and ``source_frames`` its 0-based decode indices).
    """
    if kind == "frames":
        paths = list(paths or [])
        missing = [i for i, p in enumerate(paths) if not p]
        if missing or len(paths) != len(source_frames):
            raise InputError(f"video {video}: frames.csv has no image path for frame {missing[0] if missing else 0}. "
                             "Rerun ingest and resample on this dataset.")
        return ImageFolderSource(video, paths, color, threads)
    if kind == "file":
        return VideoFileSource(video, source, source_frames, color, threads)
    raise InputError(f"video {video}: videos.csv kind '{kind}' is not 'frames' or 'file'. Rerun ingest.")
