"""The generic door: frame folders and video files plus a canonical annotations.csv.

Also runs the real published annotation tables of CAS(ME)^2 and SAMM-LV through this
door (converted to the canonical CSV, with frame folders of hard-linked tiny JPEGs of
the right lengths) and on through resample.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers.datasets import write_frames

from pipeline.errors import InputError
from pipeline.io.tables import read_annotations, read_frames, read_videos

PRESET = dict(layout="generic", frames_dir="videos", annotation_file="annotations.csv", source_fps=30,
              target_fps=30)
HEADER = "video,subject,onset,apex,offset,type\n"


def _write_video(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (32, 32))
    for i in range(n):
        writer.write(np.full((32, 32, 3), (i * 10) % 250, np.uint8))
    writer.release()


def _setup(workspace, lines: str, **preset) -> Path:
    root = workspace.root / "data/raw/g"
    write_frames(root / "videos" / "clipA", range(0, 30), "frame_{n:04d}.jpg")    # 0-based file numbers
    write_frames(root / "videos" / "clipB", range(1, 21), "img{n}.jpg", color=False)
    _write_video(root / "videos" / "clipC.avi", 24)
    (root / "annotations.csv").write_text(HEADER + lines)
    workspace.preset("g", root="data/raw/g", **{**PRESET, **preset})
    return root


GOOD = "clipA,s1,3,5,9,macro\nclipB,s2,2,,12,Micro\nclipC,s1,0,4,10,micro-expression\n"


def test_frame_folders_and_video_files(workspace):
    _setup(workspace, GOOD)
    workspace.run("ingest", "g")
    out = workspace.out("g", "ingest")
    videos = read_videos(out / "videos.csv").set_index("video")
    assert videos[["n_frames", "kind", "subject", "color"]].to_dict("index") == {
        "clipA": {"n_frames": 30, "kind": "frames", "subject": "s1", "color": 1},
        "clipB": {"n_frames": 20, "kind": "frames", "subject": "s2", "color": 0},
        "clipC": {"n_frames": 24, "kind": "file", "subject": "s1", "color": 0},
    }
    assert videos.loc["clipC", "source"].endswith("videos/clipC.avi")
    ann = read_annotations(out / "annotations.csv").set_index("video")
    assert ann[["onset", "apex", "offset", "type", "source_onset", "source_apex", "source_offset"]].to_dict(
        "index") == {
        "clipA": {"onset": 3, "apex": 5, "offset": 9, "type": "macro", "source_onset": 3, "source_apex": 5,
                  "source_offset": 9},
        "clipB": {"onset": 1, "apex": 6, "offset": 11, "type": "micro", "source_onset": 2, "source_apex": 7,
                  "source_offset": 12},   # empty apex -> midpoint
        "clipC": {"onset": 0, "apex": 4, "offset": 10, "type": "micro", "source_onset": 0, "source_apex": 4,
                  "source_offset": 10},
    }
    frames = read_frames(out / "frames.csv")
    c = frames[frames["video"] == "clipC"]
    assert c["source_frame"].tolist() == list(range(24)) and set(c["path"]) == {""}
    a = frames[frames["video"] == "clipA"]
    assert a["source_frame"].tolist() == list(range(30))


@pytest.mark.parametrize("lines, match", [
    ("clipA,s1,3,5,40,macro\n", r"(?s)line 5: video clipA interval 3\.\.40 ends past the video's last frame 29"),
    ("clipA,s1,9,5,3,macro\n", r"(?s)line 5: video clipA interval 9\.\.3 is reversed"),
])
def test_invalid_intervals(workspace, caplog, lines, match):
    _setup(workspace, GOOD + lines)
    with caplog.at_level(logging.WARNING):
        workspace.run("ingest", "g")                      # default policy: skip, logged
    import re

    assert re.search(match.replace("(?s)", ""), caplog.text)
    assert "1 invalid interval(s) skipped" in caplog.text
    assert len(read_annotations(workspace.out("g", "ingest") / "annotations.csv")) == 3
    workspace.set_params("ingest", invalid_intervals="error")
    (workspace.out("g", "ingest") / "annotations.csv").unlink()
    with pytest.raises(InputError, match=match):
        workspace.run("ingest", "g")
    assert not (workspace.out("g", "ingest") / "annotations.csv").exists()


@pytest.mark.parametrize("lines, match", [
    ("clipA,s1,3,5,9,sneeze\n", r"annotations\.csv line 5: unknown expression type 'sneeze'"),
    ("clipZ,s1,3,5,9,macro\n", r"no frame folder or video file for 1 video\(s\) of annotations\.csv: clipZ"),
    ("clipA,s9,3,5,9,macro\n", r"line 5: video clipA has subject 's9' here and 's1' on an earlier line"),
    ("clipA,s1,three,5,9,macro\n", r"line 5: onset 'three' is not a frame number"),
])
def test_bad_annotation_rows(workspace, lines, match):
    _setup(workspace, GOOD + lines)
    with pytest.raises(InputError, match=match):
        workspace.run("ingest", "g")
    assert not workspace.out("g", "ingest").exists()


def test_missing_column_and_unreadable_video(workspace):
    root = _setup(workspace, GOOD)
    (root / "annotations.csv").write_text("video,subject,start,end,type\nclipA,s1,1,2,macro\n")
    with pytest.raises(InputError, match=r"annotations\.csv: missing column\(s\) onset, offset"):
        workspace.run("ingest", "g")
    (root / "annotations.csv").write_text(HEADER + GOOD)
    (root / "videos" / "clipC.avi").write_bytes(b"RIFF not a video at all")
    from pipeline.errors import StageFailed

    with pytest.raises(StageFailed, match=r"clipC: video clipC: .*clipC\.avi cannot be decoded.*ffmpeg"):
        workspace.run("ingest", "g")


def test_onset_before_first_frame_clipped_and_duplicates_dropped(workspace, caplog):
    _setup(workspace, GOOD + "clipB,s2,0,3,6,macro\nclipA,s1,3,5,9,macro\n")
    with caplog.at_level(logging.INFO):
        workspace.run("ingest", "g")
    ann = read_annotations(workspace.out("g", "ingest") / "annotations.csv")
    assert len(ann) == 4
    row = ann[(ann["video"] == "clipB") & (ann["type"] == "macro")].iloc[0]
    assert (row["onset"], row["source_onset"]) == (0, 1)
    assert "1 onset(s) before the video's first frame clipped" in caplog.text
    assert "1 duplicate row(s) dropped" in caplog.text


# ---- the real published tables through the generic door ---------------------------------------------------


def _reference_dataset(workspace, table: pd.DataFrame, name: str, fps: int) -> pd.DataFrame:
    root = workspace.root / "data/raw" / name
    table = table.assign(vid=table["video"].map(lambda p: Path(p).name))
    lengths = table.groupby("vid")["frame_num"].first()
    for vid, n in lengths.items():
        write_frames(root / "videos" / vid, range(1, int(n) + 1), "img_{n}.jpg")
    canon = pd.DataFrame({"video": table["vid"], "subject": table["subject"].astype(str), "onset": table["startFrame"],
                          "apex": "", "offset": table["endFrame"], "type": table["type"]})
    canon.to_csv(root / "annotations.csv", index=False)
    workspace.preset(name, root=f"data/raw/{name}", layout="generic", frames_dir="videos",
                     annotation_file="annotations.csv", source_fps=fps, target_fps=30, color=True)
    return table


def test_reference_casme2_table(workspace, reference_dir):
    table = pd.read_csv(reference_dir / "casme2_annotation_357.csv")
    table = _reference_dataset(workspace, table, "ref_casme2", 30)
    workspace.run("ingest", "ref_casme2")
    out = workspace.out("ref_casme2", "ingest")
    videos = read_videos(out / "videos.csv")
    assert len(videos) == 95 and videos["n_frames"].sum() == 248_348
    assert videos["subject"].nunique() == 22
    ann = read_annotations(out / "annotations.csv")
    assert ann["type"].value_counts().to_dict() == {"macro": 300, "micro": 57}
    merged = ann.merge(table, left_on=["video", "source_onset", "source_offset"],
                       right_on=["vid", "startFrame", "endFrame"])
    assert len(merged) == 357
    assert (merged["onset"] == merged["startFrame"] - 1).all() and (merged["offset"] == merged["endFrame"] - 1).all()
    workspace.run("resample", "ref_casme2")                     # 30 -> 30: identity
    res = read_annotations(workspace.out("ref_casme2", "resample") / "annotations.csv")
    pd.testing.assert_frame_equal(res.sort_values(["video", "onset", "offset", "type"]).reset_index(drop=True),
                                  ann.sort_values(["video", "onset", "offset", "type"]).reset_index(drop=True))


def test_reference_samm_table(workspace, reference_dir, caplog):
    table = pd.read_csv(reference_dir / "samm_annotation.csv", dtype={"subject": str})
    table = _reference_dataset(workspace, table, "ref_samm", 200)
    with caplog.at_level(logging.INFO):
        workspace.run("ingest", "ref_samm")
    out = workspace.out("ref_samm", "ingest")
    videos = read_videos(out / "videos.csv")
    assert len(videos) == 146 and videos["n_frames"].sum() == 491_435 and videos["subject"].nunique() == 30
    ann = read_annotations(out / "annotations.csv")
    assert ann["type"].value_counts().to_dict() == {"macro": 340, "micro": 159}
    assert "10 onset(s) before the video's first frame clipped" in caplog.text   # the table's onsets of 0

    workspace.run("resample", "ref_samm")
    res_dir = workspace.out("ref_samm", "resample")
    res = read_annotations(res_dir / "annotations.csv")
    assert res["type"].value_counts().to_dict() == {"macro": 312, "micro": 159}   # intervals > 4 s dropped
    # the published ceil(frame / (20/3)) (1-based frame numbers -> 1-based 30 fps index), resample.interval_map
    # published (the default): onsets and offsets alike (tests/stages/test_resample.py compares with the published table)
    pub_on = np.array([math.ceil(f * 3 / 20) for f in res["source_onset"]]) - 1
    pub_off = np.array([math.ceil(f * 3 / 20) for f in res["source_offset"]]) - 1
    assert (res["onset"].to_numpy() == pub_on).all()
    assert (res["offset"].to_numpy() == pub_off).all()
    rv = read_videos(res_dir / "videos.csv").set_index("video")
    iv = videos.set_index("video")
    assert (rv["n_frames"] == np.ceil(iv["n_frames"] * 3 / 20).astype(int)).all()
    assert set(rv["fps"]) == {30.0} and set(rv["source_fps"]) == {200.0}
