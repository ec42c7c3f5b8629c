"""Frame listing and checks at ingest: numeric order, gaps, empty and unreadable images."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.datasets import write_frames

from pipeline.errors import InputError, StageFailed
from pipeline.layouts.common import check_contiguous, frame_number, list_frames, sample_indices

PRESET = dict(layout="generic", frames_dir="videos", annotation_file="annotations.csv", source_fps=30,
              target_fps=30)


def test_frame_number_and_numeric_order(tmp_path):
    assert frame_number("img_12.jpg") == 12
    assert frame_number("006_1_0042.jpg") == 42
    assert frame_number("frame.jpg") is None
    write_frames(tmp_path / "v", [1, 2, 10, 9, 100], "img_{n}.jpg")
    (tmp_path / "v" / "notes.txt").write_text("not a frame")
    numbers, paths, sizes = list_frames(tmp_path / "v")
    assert numbers.tolist() == [1, 2, 9, 10, 100]
    assert [p.rsplit("/", 1)[1] for p in paths] == ["img_1.jpg", "img_2.jpg", "img_9.jpg", "img_10.jpg",
                                                    "img_100.jpg"]
    assert (sizes > 0).all()


def test_gap_and_duplicate_numbers(tmp_path):
    with pytest.raises(InputError, match=r"video v: frame number\(s\) 4\.\.6 missing in .*v \(1 gap"):
        check_contiguous(np.array([1, 2, 3, 7, 8]), tmp_path / "v", "v")
    write_frames(tmp_path / "d", [1, 2], "img_{n}.jpg")
    write_frames(tmp_path / "d", [2], "img_{n:03d}.jpg")
    with pytest.raises(InputError, match=r"have the same frame number 2"):
        list_frames(tmp_path / "d")


def test_sample_indices():
    assert sample_indices(10, 3) == [0, 4, 9]
    assert sample_indices(1, 3) == [0]
    assert sample_indices(100, 1) == [0, 99]
    assert sample_indices(5, 10) == [0, 1, 2, 3, 4]


def _generic(workspace, n: int = 20, **params):
    root = workspace.root / "data/raw/g"
    paths = write_frames(root / "videos" / "a", range(1, n + 1), "f{n:05d}.jpg")
    write_frames(root / "videos" / "b", range(1, n + 1), "f{n:05d}.jpg")
    (root / "annotations.csv").write_text("video,subject,onset,apex,offset,type\na,s1,2,4,8,macro\n"
                                          "b,s2,3,,9,micro\n")
    workspace.preset("g", root="data/raw/g", **PRESET)
    if params:
        workspace.set_params("ingest", **params)
    return root, paths


@pytest.mark.parametrize("case, match", [
    ("gap", r"a: video a: frame number\(s\) 7 missing in .*videos/a"),
    ("empty_folder", r"a: video a: .*videos/a holds no frame images"),
    ("empty_file", r"a: video a: .*f00005\.jpg is empty \(1 empty frame file"),
    ("corrupt_last", r"a: video a: .*f00020\.jpg cannot be decoded as an image"),
])
def test_bad_frames_fail_the_stage_naming_the_file(workspace, case, match):
    root, paths = _generic(workspace)
    if case == "gap":
        paths[6].unlink()
    elif case == "empty_folder":
        for p in paths:
            p.unlink()
    elif case == "empty_file":
        paths[4].unlink()
        paths[4].write_bytes(b"")
    elif case == "corrupt_last":
        paths[-1].unlink()
        paths[-1].write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(StageFailed, match=match):
        workspace.run("ingest", "g")
    assert not workspace.out("g", "ingest").exists()


def test_corrupt_middle_frame_needs_a_large_enough_sample(workspace):
    """The documented trade-off: only ``decode_sample`` frames are decoded at ingest."""
    root, paths = _generic(workspace, decode_sample=3)
    paths[4].unlink()
    paths[4].write_bytes(b"garbage, but not empty")
    workspace.run("ingest", "g")          # frames 0, 10, 19 decoded: frame 4 is not looked at
    workspace.set_params("ingest", decode_sample=20)
    with pytest.raises(StageFailed, match=r"f00005\.jpg cannot be decoded"):
        workspace.run("ingest", "g")


def test_color_detected_when_preset_does_not_say(workspace):
    root, _ = _generic(workspace)
    write_frames(root / "videos" / "b", range(1, 21), "g{n:05d}.jpg", color=False)
    for p in (root / "videos" / "b").glob("f*.jpg"):
        p.unlink()
    workspace.run("ingest", "g")
    from pipeline.io.tables import read_videos

    videos = read_videos(workspace.out("g", "ingest") / "videos.csv").set_index("video")
    assert videos["color"].to_dict() == {"a": 1, "b": 0}
