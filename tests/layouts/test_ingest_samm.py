"""Ingest of the SAMM-LV layout: header row found by content, release glob, skipped rows, bad input."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.datasets import SAMM_HEADER, samm_dataset, write_samm_xlsx

from pipeline.errors import InputError
from pipeline.io.tables import read_annotations, read_frames, read_videos

PRESET = dict(layout="samm", frames_dir="SAMM_longvideos", annotation_file="SAMM_LongVideos_V?_Release.xlsx",
              source_fps=200, target_fps=30, color=False)


def _setup(workspace, root: str = "data/raw/samm", **kwargs) -> Path:
    path = workspace.root / root
    samm_dataset(path, **kwargs)
    workspace.preset("samm", root=root, **PRESET)
    return path


def _expected():
    return {
        ("006_1", 4): ("macro", 8, 19, 5, 9, 20),
        ("006_1", 29): ("micro", 32, 39, 30, 33, 40),
        ("006_2", 9): ("macro", 26, 43, 10, 27, 44),     # apex -1 -> interval midpoint
        ("007_3", 0): ("micro", 7, 11, 1, 8, 12),
    }


def test_ingest_samm_tables(workspace, caplog):
    _setup(workspace)
    with caplog.at_level(logging.INFO):
        workspace.run("ingest", "samm")
    out = workspace.out("samm", "ingest")
    videos = read_videos(out / "videos.csv").set_index("video")
    assert videos["n_frames"].to_dict() == {"006_1": 60, "006_2": 45, "007_3": 50}
    assert videos["subject"].to_dict() == {"006_1": "006", "006_2": "006", "007_3": "007"}
    assert set(videos["fps"]) == {200.0} and set(videos["color"]) == {0}
    ann = read_annotations(out / "annotations.csv")
    got = {(r.video, r.onset): (r.type, r.apex, r.offset, r.source_onset, r.source_apex, r.source_offset)
           for r in ann.itertuples()}
    assert got == _expected()
    # the row past the video's last frame is reported and skipped
    assert "006_2_2" in caplog.text and "ends past the video's last frame 45" in caplog.text
    assert "1 invalid interval(s) skipped" in caplog.text
    frames = read_frames(out / "frames.csv")
    v = frames[frames["video"] == "006_2"]
    assert v["source_frame"].tolist() == list(range(1, 46))
    assert Path(v["path"].iloc[0]).name == "006_2_0001.jpg"


@pytest.mark.parametrize("preamble", [0, 4, 12])
def test_header_row_found_by_content(workspace, preamble):
    root = _setup(workspace)
    rows = [[6, "006_1_1", "1_1", 5, 9, 20, 16, "Macro", "AU12", ""]]
    write_samm_xlsx(root / "SAMM_LongVideos_V2_Release.xlsx", rows, preamble=preamble)
    workspace.run("ingest", "samm")
    ann = read_annotations(workspace.out("samm", "ingest") / "annotations.csv")
    assert ann[["video", "onset", "apex", "offset"]].values.tolist() == [["006_1", 4, 8, 19]]


def test_invalid_interval_policy_error(workspace):
    _setup(workspace)
    workspace.set_params("ingest", invalid_intervals="error")
    with pytest.raises(InputError, match=r"(?s)row 14 \(006_2_2\): video 006_2 interval 40\.\.52 ends past the "
                                         r"video's last frame 45.*invalid_intervals: skip"):
        workspace.run("ingest", "samm")
    assert not workspace.out("samm", "ingest").exists()


@pytest.mark.parametrize("case, match", [
    ("two_releases", r"2 files match \(SAMM_LongVideos_V2_Release\.xlsx, SAMM_LongVideos_V3_Release\.xlsx\)"),
    ("no_release", r"SAMM_LongVideos_V\?_Release\.xlsx: annotation file not found"),
    ("no_sheet", r"sheet\(s\) FACS_Movement_Only not found \(sheets: Info, Sheet2\)"),
    ("no_apex_column", r"lacks column\(s\) apex"),
    ("no_header", r"no header row naming Subject, Filename"),
    ("no_folder", r"no video folder for 1 video\(s\).*009_1 \(.*row 11"),
    ("bad_number", r"row 11 \(006_1_9\): Onset 'n/a' is not a frame number"),
    ("frames_dir", r"SAMM_longvideos: frames folder not found"),
])
def test_bad_input(workspace, case, match):
    root = _setup(workspace)
    book = root / "SAMM_LongVideos_V2_Release.xlsx"
    row = [6, "006_1_1", "1_1", 5, 9, 20, 16, "Macro", "AU12", ""]
    if case == "two_releases":
        write_samm_xlsx(root / "SAMM_LongVideos_V3_Release.xlsx", [row])
    elif case == "no_release":
        book.unlink()
    elif case == "no_sheet":
        write_samm_xlsx(book, [row], sheet="Sheet2")
    elif case == "no_apex_column":
        write_samm_xlsx(book, [row[:4] + row[5:]], header=[h for h in SAMM_HEADER if h != "Apex"])
    elif case == "no_header":
        write_samm_xlsx(book, [row], header=["Participant", "Clip", "Start", "Peak", "End"])
    elif case == "no_folder":
        write_samm_xlsx(book, [[9, "009_1_1", "1_1", 5, 9, 20, 16, "Macro", "AU12", ""]])
    elif case == "bad_number":
        write_samm_xlsx(book, [[6, "006_1_9", "1_1", "n/a", 9, 20, 16, "Macro", "AU12", ""]])
    elif case == "frames_dir":
        (root / "SAMM_longvideos").rename(root / "frames")
    with pytest.raises(InputError, match=match):
        workspace.run("ingest", "samm")
    assert not workspace.out("samm", "ingest").exists()


def test_cli_on_path_with_special_characters(workspace, repo_root):
    """``python -m pipeline.ingest`` (loky backend) on a root with ( ) ^ [ ] and spaces, globbing the release."""
    root = "data/raw/SAMM (LV) ^v2 [copy]"
    _setup(workspace, root=root)
    workspace.params["parallel"] = {"backend": "loky", "n_jobs": 2, "address": None, "fail_fast": False}
    workspace.save_params()
    proc = subprocess.run([sys.executable, "-m", "pipeline.ingest", "--dataset", "samm"], cwd=workspace.root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ann = read_annotations(workspace.out("samm", "ingest") / "annotations.csv")
    got = {(r.video, r.onset): (r.type, r.apex, r.offset, r.source_onset, r.source_apex, r.source_offset)
           for r in ann.itertuples()}
    assert got == _expected()
    frames = read_frames(workspace.out("samm", "ingest") / "frames.csv")
    assert all((workspace.root / p).is_file() for p in frames["path"])
    assert frames["path"].iloc[0].startswith(root)
