"""Ingest of the CAS(ME)^2 layout: spreadsheet by position, naming rules, offsets, bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from helpers.params import assert_stage_refuses
from helpers.datasets import casme2_dataset

from pipeline.errors import InputError
from pipeline.io.tables import read_annotations, read_frames, read_videos

PRESET = dict(layout="casme2", frames_dir="rawpic", annotation_file="CAS(ME)^2code_final.xlsx",
              source_fps=30, target_fps=30, color=True)


def _setup(workspace, root: str = "data/raw/c2", **kwargs) -> Path:
    path = workspace.root / root
    casme2_dataset(path, **kwargs)
    workspace.preset("c2", root=root, **PRESET)
    return path


@pytest.mark.parametrize("first_sheet", ["CASFEcode_final", "CASMEcode_final"])
def test_ingest_casme2_tables(workspace, first_sheet, caplog):
    root = _setup(workspace, first_sheet=first_sheet)
    with caplog.at_level(logging.INFO):
        workspace.run("ingest", "c2")
    out = workspace.out("c2", "ingest")
    videos = read_videos(out / "videos.csv").set_index("video")
    assert sorted(videos.index) == ["15_0101disgustingteeth", "15_0102eatingworms", "16_0101disgustingteeth"]
    assert videos.loc["15_0101disgustingteeth", "subject"] == "s15"
    assert videos.loc["16_0101disgustingteeth", "subject"] == "s16"
    assert videos["n_frames"].to_dict() == {"15_0101disgustingteeth": 40, "15_0102eatingworms": 30,
                                            "16_0101disgustingteeth": 20}
    assert set(videos["fps"]) == {30.0} and set(videos["kind"]) == {"frames"} and set(videos["color"]) == {1}
    # paths are kept as configured (relative to the repository root when the preset's root is)
    assert Path(videos.loc["15_0102eatingworms", "source"]) == Path("data/raw/c2/rawpic/s15/15_0102eatingworms")
    assert (root / "rawpic" / "s15" / "15_0102eatingworms").is_dir()

    ann = read_annotations(out / "annotations.csv")
    got = {(r.video, r.type): (r.onset, r.apex, r.offset, r.source_onset, r.source_apex, r.source_offset)
           for r in ann.itertuples()}
    assert got == {
        ("15_0101disgustingteeth", "macro"): (2, 4, 8, 3, 5, 9),
        ("15_0101disgustingteeth", "micro"): (11, 13, 33, 12, 14, 34),   # offset 0 -> apex + 20
        ("15_0102eatingworms", "macro"): (1, 5, 25, 2, 6, 26),           # offset 4 <= apex 6 -> apex + 20
        ("16_0101disgustingteeth", "micro"): (9, 10, 14, 10, 11, 15),
    }
    assert "2 missing or non-increasing offset(s) replaced by apex + 20" in caplog.text

    frames = read_frames(out / "frames.csv")
    v = frames[frames["video"] == "15_0101disgustingteeth"]
    assert v["frame"].tolist() == list(range(40))
    assert v["source_frame"].tolist() == list(range(1, 41))          # numeric, not lexicographic, order
    assert [Path(p).name for p in v["path"].iloc[8:11]] == ["img_9.jpg", "img_10.jpg", "img_11.jpg"]
    assert all(Path(p).is_file() for p in frames["path"])


def test_offset_fallback_is_a_param(workspace):
    _setup(workspace)
    workspace.set_params("ingest", offset_fallback=5)
    workspace.run("ingest", "c2")
    ann = read_annotations(workspace.out("c2", "ingest") / "annotations.csv")
    row = ann[(ann["video"] == "15_0101disgustingteeth") & (ann["type"] == "micro")].iloc[0]
    assert row["source_offset"] == 19


def test_include_unannotated(workspace):
    _setup(workspace)
    workspace.set_params("ingest", include_unannotated=True)
    workspace.run("ingest", "c2")
    videos = read_videos(workspace.out("c2", "ingest") / "videos.csv")
    assert "16_0508funnydunkey" in set(videos["video"])
    assert videos.set_index("video").loc["16_0508funnydunkey", "n_frames"] == 12


def test_duplicate_rows_dropped_with_log(workspace, caplog):
    _setup(workspace, extra_codes=[[1, "disgust1_1", 3, 5, 9, "4", "disgust", "macro-expression", "disgust"]])
    with caplog.at_level(logging.WARNING):
        workspace.run("ingest", "c2")
    ann = read_annotations(workspace.out("c2", "ingest") / "annotations.csv")
    assert len(ann) == 4
    assert "1 duplicate row(s) dropped" in caplog.text


def test_special_characters_in_dataset_path(workspace):
    root = _setup(workspace, root="data/raw/CAS(ME)^2 copy (v2)")
    workspace.run("ingest", "c2")
    frames = read_frames(workspace.out("c2", "ingest") / "frames.csv")
    assert len(frames) == 90
    assert frames["path"].iloc[0].startswith(str(Path("data/raw/CAS(ME)^2 copy (v2)")))
    assert (root / "rawpic").is_dir()


def _assert_nothing_written(workspace):
    out = workspace.out("c2", "ingest")
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("case, match", [
    ("no_root", r"dataset root .*c2.* does not exist.*ln -s"),
    ("no_annotation_file", r"CAS\(ME\)\^2code_final\.xlsx: annotation file not found"),
    ("two_sheets", r"2 sheet\(s\) found, CAS\(ME\)\^2 needs 3"),
    ("few_columns", r"first sheet has 5 column\(s\); expected at least 8"),
    ("no_folder", r"no video folder for 1 video\(s\).*s16/16_0102\*.*row 5"),
    ("unknown_type", r"row 5: unknown expression type 'mystery'"),
    ("not_xlsx", r"cannot be read as an \.xlsx spreadsheet"),
])
def test_bad_input(workspace, case, match):
    root = workspace.root / "data/raw/c2"
    if case == "no_root":
        workspace.preset("c2", root="data/raw/c2", **PRESET)
    else:
        kwargs = {}
        if case == "two_sheets":
            kwargs["sheets"] = 2
        if case == "few_columns":
            kwargs["columns"] = 5
        if case == "no_folder":
            kwargs["extra_codes"] = [[2, "disgust2_1", 3, 4, 8, "", "", "micro-expression", ""]]
        if case == "unknown_type":
            kwargs["extra_codes"] = [[2, "disgust1_1", 3, 4, 8, "", "", "mystery", ""]]
        _setup(workspace, **kwargs)
        if case == "no_annotation_file":
            (root / "CAS(ME)^2code_final.xlsx").unlink()
        if case == "not_xlsx":
            (root / "CAS(ME)^2code_final.xlsx").write_text("participant,clip\n1,disgust1_1\n")
    with pytest.raises(InputError, match=match):
        workspace.run("ingest", "c2")
    _assert_nothing_written(workspace)


def test_cli_exit_code_and_one_line_error(workspace, capsys):
    from pipeline.ingest import main

    workspace.preset("c2", root="data/raw/missing", **PRESET)
    assert main(["--dataset", "c2"]) == 2
    err = capsys.readouterr().err
    assert "ingest@c2: dataset root data/raw/missing" in err and "does not exist" in err
    assert "Traceback" not in err


def test_params_are_checked_before_any_input_is_read(workspace):
    workspace.preset("c2", root="data/raw/nothing_here", **PRESET)  # no dataset: the typo is what is reported
    assert_stage_refuses(workspace, "ingest", "c2", [
        ("decode_sampel", 5, r"ingest\.decode_sampel \(did you mean decode_sample\?\)"),
        ("invalid_intervals", "ignore", r"ingest\.invalid_intervals = 'ignore' is not one of skip, error"),
        ("include_unannotated", "yes", r"ingest\.include_unannotated = 'yes' is invalid"),
    ])
