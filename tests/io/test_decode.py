"""Frame decoding: image folders (OpenCV, reduced JPEG decode, bad files) and video files (decord)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from pipeline.io.decode import (BadFrameError, ImageFolderSource, VideoFileSource, choose_reduction, open_source,
                             read_image)
from pipeline.errors import InputError


def _frame(i: int, shape: tuple[int, int] = (240, 320)) -> np.ndarray:
    """A colour RGB frame with a marker that moves with ``i`` (so frames are distinguishable)."""
    img = cv2.resize(data.astronaut(), (shape[1], shape[0]))
    img[10:20, 10 + 5 * i:20 + 5 * i] = (255, 0, 0)
    return img


def _write_jpegs(folder: Path, frames: list[np.ndarray]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(frames, start=1):
        p = folder / f"img_{i}.jpg"
        bgr = f if f.ndim == 2 else cv2.cvtColor(f, cv2.COLOR_RGB2BGR)
        assert cv2.imwrite(str(p), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(str(p))
    return paths


def test_read_image_is_rgb_and_grayscale_stays_2d(tmp_path: Path) -> None:
    rgb = _frame(0)
    (path,) = _write_jpegs(tmp_path, [rgb])
    img = read_image(path, color=True)
    assert img.shape == (240, 320, 3) and img.dtype == np.uint8
    # RGB order: the red marker is red, not blue
    assert img[15, 15, 0] > 200 and img[15, 15, 2] < 60
    assert np.abs(img.astype(int) - rgb).mean() < 4
    gray = read_image(path, color=False)
    assert gray.shape == (240, 320)


def test_reduced_decode_matches_downscaled_full_decode(tmp_path: Path) -> None:
    (path,) = _write_jpegs(tmp_path, [_frame(0, (480, 640))])
    full = read_image(path, color=True)
    for k in (2, 4, 8):
        red = read_image(path, color=True, reduce=k)
        assert red.shape == (480 // k, 640 // k, 3)
        ref = cv2.resize(full, (640 // k, 480 // k), interpolation=cv2.INTER_AREA)
        assert np.abs(red.astype(int) - ref).mean() < 3, k


def test_choose_reduction() -> None:
    assert choose_reduction(300, 224) == 1
    assert choose_reduction(448, 224) == 2
    assert choose_reduction(700, 224) == 2
    assert choose_reduction(900, 224) == 4
    assert choose_reduction(900, 112) == 8
    assert choose_reduction(100, 224) == 1


def test_bad_files_name_their_path(tmp_path: Path) -> None:
    (good,) = _write_jpegs(tmp_path, [_frame(0)])
    blob = Path(good).read_bytes()
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(blob[: int(len(blob) * 0.9)])  # OpenCV alone would decode this with grey rows
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all" * 10)
    for path, what in ((empty, "empty"), (trunc, "truncated"), (junk, "not a decodable"),
                       (tmp_path / "missing.jpg", "cannot read")):
        with pytest.raises(BadFrameError, match=what) as info:
            read_image(path, color=True)
        assert str(path) in str(info.value)
        assert isinstance(info.value, InputError)
    # trailing zero padding after the end marker is still a complete JPEG
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(blob + b"\x00" * 16)
    assert read_image(padded, color=True).shape == (240, 320, 3)


def test_folder_source_map_is_ordered_and_reports_bad_frames(tmp_path: Path) -> None:
    frames = [_frame(i) for i in range(12)]
    paths = _write_jpegs(tmp_path, frames)
    Path(paths[5]).write_bytes(b"")
    src = open_source("v1", "frames", tmp_path, True, list(range(1, 13)), paths, threads=2)
    assert isinstance(src, ImageFolderSource) and src.supports_reduce
    out = list(src.map(lambda pos, f: (pos, f[15, 15 + 5 * pos, 0]), batch=5))
    assert [p for p, _ in out] == list(range(12))
    for pos, res in out:
        if pos == 5:
            assert isinstance(res, BadFrameError) and res.path == paths[5] and "v1" in str(res)
        else:
            assert res[0] == pos and res[1] > 200  # the marker of frame pos is where frame pos put it
    with pytest.raises(InputError, match="no image path"):
        open_source("v2", "frames", tmp_path, True, [1, 2], ["a.jpg", ""])
    with pytest.raises(InputError, match="kind 'avi'"):
        open_source("v3", "avi", tmp_path, True, [1], ["a.jpg"])


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


def test_video_file_source_decodes_the_listed_indices(tmp_path: Path) -> None:
    frames = [_frame(i) for i in range(20)]
    path = tmp_path / "v.avi"
    _write_video(path, frames)
    indices = [0, 3, 7, 19]
    src = open_source("vid", "file", path, True, indices, threads=1)
    assert isinstance(src, VideoFileSource) and not src.supports_reduce
    out = list(src.map(lambda pos, f: f, batch=3))
    assert [p for p, _ in out] == [0, 1, 2, 3]
    for (pos, f), idx in zip(out, indices):
        assert f.shape == (240, 320, 3)
        assert np.abs(f.astype(int) - frames[idx]).mean() < 6, idx
    assert src.label(3).endswith("v.avi#19")
    gray = VideoFileSource("vid", path, indices, color=False).read(1)
    assert gray.shape == (240, 320)


def test_video_file_errors_name_the_video(tmp_path: Path) -> None:
    path = tmp_path / "v.avi"
    _write_video(path, [_frame(i) for i in range(5)])
    with pytest.raises(InputError, match=r"vid: .*has 5 frames but frames.csv asks for decode index 9"):
        VideoFileSource("vid", path, [0, 9], True).read(0)
    with pytest.raises(InputError, match="not found"):
        VideoFileSource("vid", tmp_path / "nope.mp4", [0], True).read(0)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="cannot be opened as a video"):
        VideoFileSource("vid", broken, [0], True).read(0)
