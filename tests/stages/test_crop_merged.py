"""Crop of a merged video (resample.merge): frames read from two real frame folders, one face box per part."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd
from skimage import data

from pipeline.core.runner import ParallelParams, map_videos
from pipeline.crop import build_tasks, source_parts
from pipeline.cropping.video import crop_video
from pipeline.io.tables import SOURCE_VIDEO

SEQ = ParallelParams(backend="sequential")
PARAMS = {"size": 112, "search_frames": 5, "threads": 2, "batch": 8}


def render(dx: float = 0, dy: float = 0, seed: int = 0) -> np.ndarray:
    """The astronaut's face (about 90 px) moved by (dx, dy) on a grey 640x480 frame, with sensor noise."""
    m = np.float32([[1, 0, 60 + dx], [0, 1, -20 + dy]])
    img = cv2.warpAffine(data.astronaut(), m, (640, 480), flags=cv2.INTER_LINEAR, borderValue=(128, 128, 128))
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)


def write_frames(folder: Path, frames: Sequence[np.ndarray], video: str) -> list[str]:
    """SAMM-style frames <video>_0001.jpg ...; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(frames, start=1):
        p = folder / f"{video}_{i:04d}.jpg"
        assert cv2.imwrite(str(p), cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(str(p))
    return paths


def shift_between(a: np.ndarray, b: np.ndarray) -> float:
    """Translation (pixels) between two crops by phase correlation."""
    ga, gb = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).astype(np.float64) for x in (a, b))
    (sx, sy), _ = cv2.phaseCorrelate(ga, gb, cv2.createHanningWindow(ga.shape[::-1], cv2.CV_64F))
    return float(np.hypot(sx, sy))


def test_merged_video_is_cropped_from_two_folders_with_a_box_per_part(tmp_path: Path) -> None:
    """Part 001_1: the face at (0, 0); part 001_2 (another recording): 150 px right, 60 down. Each part gets its
    own reference frame and box, so the face sits alike in every crop; frames come from both folders."""
    a = write_frames(tmp_path / "raw" / "001_1", [render(seed=i) for i in range(6)], "001_1")
    b = write_frames(tmp_path / "raw" / "001_2", [render(150, 60, seed=10 + i) for i in range(7)], "001_2")
    videos = pd.DataFrame([{"video": "001_99", "subject": "001", "fps": 30.0, "n_frames": 13,
                            "source": f"{Path(a[0]).parent};{Path(b[0]).parent}", "kind": "frames", "color": 1,
                            "source_fps": 200.0}])
    frames = pd.DataFrame({"video": "001_99", "frame": range(13), "source_frame": list(range(1, 7)) + list(range(1, 8)),
                           "path": a + b, SOURCE_VIDEO: ["001_1"] * 6 + ["001_2"] * 7})
    assert source_parts(frames) == [[0, 6], [6, 13]]
    (task,) = build_tasks(videos, frames, tmp_path / "faces", PARAMS)
    unmerged = build_tasks(videos, frames.drop(columns=[SOURCE_VIDEO]), tmp_path / "faces", PARAMS)[0]
    assert task.digest != unmerged.digest and "parts" not in unmerged.payload   # unmerged digests as before
    res = map_videos(crop_video, [task], stage="crop", parallel=SEQ)
    assert res["001_99"]["warnings"] == []
    with h5py.File(tmp_path / "faces" / "001_99.h5") as f:
        out, boxes = f["frames"][...], f["boxes"][...]
        assert list(f["source_frames"][...]) == list(range(1, 7)) + list(range(1, 8))
        assert list(f.attrs["part_starts"]) == [0, 6]
        assert list(f.attrs["part_reference_frames"]) == [0, 6]
        part_boxes = f.attrs["part_boxes"]
    assert out.shape == (13, 112, 112, 3)
    assert (boxes[:6] == part_boxes[0]).all() and (boxes[6:] == part_boxes[1]).all()
    dx, dy = (boxes[6] - boxes[0])[:2]
    assert abs(dx - 150) <= 3 and abs(dy - 60) <= 3                   # the second part's box follows its face
    assert max(shift_between(out[0], out[i]) for i in (3, 6, 9, 12)) < 1.0
