"""The synth stage end to end: layouts on disk, determinism, resume, and a round trip through ingest."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import pandas as pd
import pytest

from pipeline.core.runner import ParallelParams
from pipeline.errors import ConfigError
from pipeline.io.tables import read_annotations, read_videos

TINY = {"size": [224, 168], "n_subjects": 2, "videos_per_subject": 1, "count_model": "rounded",
        "face": {"width_frac": [0.6, 0.65]},
        "expressions": {"margin_s": 0.3, "min_gap_s": 0.3, "macro": {"rate_per_min": 20.0},
                        "micro": {"rate_per_min": 20.0}}}
CASME2 = dict(layout="casme2", root="data/raw/sc", frames_dir="rawpic", annotation_file="CAS(ME)^2code_final.xlsx",
              source_fps=30, target_fps=30, color=True, synthetic=True,
              per_dataset={"synth": dict(TINY, duration_s=8.0)})
SAMM = dict(layout="samm", root="data/raw/ss", frames_dir="SAMM_longvideos",
            annotation_file="SAMM_LongVideos_V?_Release.xlsx", source_fps=200, target_fps=30, color=False,
            synthetic=True, per_dataset={"synth": dict(TINY, duration_s=2.5)})


def _gt(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "ground_truth.csv", dtype={"video": str, "subject": str})


def _roundtrip(workspace, name: str, preset: dict) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    workspace.preset(name, **preset)
    workspace.run("synth", name)
    workspace.run("ingest", name)
    root = workspace.root / preset["root"]
    ann = read_annotations(workspace.out(name, "ingest") / "annotations.csv")
    return _gt(root), ann, root


def _compare(gt: pd.DataFrame, ann: pd.DataFrame) -> None:
    cols = ["video", "subject", "type", "onset", "apex", "offset"]
    got = ann.rename(columns={"onset": "o", "apex": "a", "offset": "f"}).rename(
        columns={"source_onset": "onset", "source_apex": "apex", "source_offset": "offset"})[cols]
    want = gt[cols]
    key = ["video", "onset"]
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True).astype(str),
                                  want.sort_values(key).reset_index(drop=True).astype(str))


def test_casme2_layout_round_trips_through_ingest(workspace):
    gt, ann, root = _roundtrip(workspace, "sc", CASME2)
    assert len(gt) >= 4 and set(gt["type"]) == {"macro", "micro"}
    _compare(gt, ann)
    videos = read_videos(workspace.out("sc", "ingest") / "videos.csv").set_index("video")
    assert list(videos.index) == ["15_0101disgustingteeth", "16_0101disgustingteeth"]
    assert set(videos["n_frames"]) == {240} and set(videos["color"]) == {1}
    frame = cv2.imread(str(root / "rawpic/s16/16_0101disgustingteeth/img_240.jpg"), cv2.IMREAD_UNCHANGED)
    assert frame.shape == (168, 224, 3)
    # the spreadsheet as the real one: headerless, 9 columns, clip names stimulus_index, 1-based frames
    sheets = pd.read_excel(root / "CAS(ME)^2code_final.xlsx", sheet_name=None, header=None)
    codes, rule1, rule2 = list(sheets.values())
    assert list(sheets)[1:] == ["naming rule1", "naming rule2"]
    assert codes.shape[1] == 9 and codes.iloc[0, 1] == "disgust1_1"
    assert set(codes.iloc[:, 7]) == {"macro-expression", "micro-expression"}
    assert rule1.values.tolist() == [["s15", 15, 1], ["s16", 16, 2]]
    assert rule2.values.tolist() == [[101, "disgust1"]]


def test_samm_layout_round_trips_through_ingest(workspace):
    gt, ann, root = _roundtrip(workspace, "ss", SAMM)
    assert len(gt) >= 2
    _compare(gt, ann)
    assert sorted(os.listdir(root / "SAMM_longvideos")) == ["006_1", "007_1"]
    frame = cv2.imread(str(root / "SAMM_longvideos/007_1/007_1_0500.jpg"), cv2.IMREAD_UNCHANGED)
    assert frame.shape == (168, 224)  # grayscale
    raw = pd.read_excel(root / "SAMM_LongVideos_V3_Release.xlsx", sheet_name="FACS_Movement_Only", header=9)
    assert list(raw.columns) == ["Subject", "Filename", "Inducement Code", "Onset", "Apex", "Offset", "Duration",
                                 "Type", "Action Units", "Notes"]
    assert set(raw["Type"]) <= {"Macro", "Micro - 1/2"}
    assert raw["Filename"].iloc[0] == "006_1_1"
    # the generator's distractor table reaches ingest: positions = 1-based numbers - 1, the numbers kept
    from pipeline.io.tables import read_distractors

    events = pd.read_csv(root / "distractors.csv", dtype={"video": str, "subject": str})
    ingested = read_distractors(workspace.out("ss", "ingest") / "distractors.csv")
    assert len(events) > 0 and len(ingested) == len(events)
    events = events.sort_values(["video", "start", "kind"]).reset_index(drop=True)
    ingested = ingested.sort_values(["video", "source_start", "kind"]).reset_index(drop=True)
    assert ingested["kind"].tolist() == events["kind"].tolist()
    assert ingested["source_start"].tolist() == events["start"].tolist() == (ingested["start"] + 1).tolist()
    assert ingested["source_end"].tolist() == events["end"].tolist() == (ingested["end"] + 1).tolist()


def test_mp4_format_round_trips_through_generic_ingest(workspace):
    preset = dict(layout="generic", root="data/raw/sm", annotation_file="annotations.csv", source_fps=30,
                  target_fps=30, synthetic=True, per_dataset={"synth": dict(TINY, duration_s=6.0, format="mp4")})
    gt, ann, root = _roundtrip(workspace, "sm", preset)
    assert sorted(p.name for p in root.glob("*.mp4")) == ["006_1.mp4", "007_1.mp4"]
    cap = cv2.VideoCapture(str(root / "006_1.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 180
    cap.release()
    assert gt["onset"].min() >= 0  # 0-based decode indices for video files
    _compare(gt, ann)


def test_generation_is_deterministic_and_resumes(tmp_path):
    from pipeline.core.params import load_params, stage_params
    from pipeline.synth import generate

    repo = Path(__file__).resolve().parents[2]
    ds = {k: v for k, v in CASME2.items() if k != "per_dataset"} | {"name": "sc"}
    params = load_params(repo / "params.yaml")
    params["per_dataset"]["sc"] = {"synth": dict(TINY, duration_s=3.0)}
    p = stage_params(params, "synth", ds)
    seq = ParallelParams(backend="sequential", n_jobs=1)
    generate(p, ds, tmp_path / "a", seq)
    generate(p, ds, tmp_path / "b", seq)
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "ground_truth.csv").read_bytes() == (b / "ground_truth.csv").read_bytes()
    assert (a / "distractors.csv").read_bytes() == (b / "distractors.csv").read_bytes()
    files = sorted(q.relative_to(a) for q in (a / "rawpic").rglob("*.jpg"))
    assert len(files) == 180
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    xa = pd.read_excel(a / "CAS(ME)^2code_final.xlsx", sheet_name=None, header=None)
    xb = pd.read_excel(b / "CAS(ME)^2code_final.xlsx", sheet_name=None, header=None)
    assert all(xa[k].equals(xb[k]) for k in xa)
    # frames move: not every frame of a video is the same image
    v = a / "rawpic/s15/15_0101disgustingteeth"
    assert (v / "img_1.jpg").read_bytes() != (v / "img_45.jpg").read_bytes()
    # a rerun with the same params skips the videos; another seed changes the data
    stamp = (v / "img_1.jpg").stat().st_mtime_ns
    generate(p, ds, a, seq)
    assert (v / "img_1.jpg").stat().st_mtime_ns == stamp
    generate(dict(p, seed=1), ds, tmp_path / "c", seq)
    assert (tmp_path / "c" / "ground_truth.csv").read_bytes() != (a / "ground_truth.csv").read_bytes()
    assert (v / "img_1.jpg").read_bytes() != (tmp_path / "c" / "rawpic/s15/15_0101disgustingteeth/img_1.jpg").read_bytes()


def test_stage_refuses_a_real_dataset_preset(workspace):
    workspace.preset("real", **dict(CASME2, synthetic=False))
    with pytest.raises(ConfigError, match="not a synthetic preset"):
        workspace.run("synth", "real")


def test_stage_cli_reports_bad_params(workspace, capsys):
    from pipeline.synth import main

    workspace.preset("bad", **dict(CASME2, per_dataset={"synth": {"format": "avi"}}))
    assert main(["--dataset", "bad"]) == 2


@pytest.mark.parametrize("override, match", [
    ({"n_subject": 2}, r"synth\.n_subject \(did you mean n_subjects\?\)"),
    ({"seed": 1.5}, r"synth\.seed = 1\.5 is invalid"),
    ({"format": "avi"}, r"synth\.format = 'avi' is not one of frames, mp4"),
    ({"size": [224]}, r"synth\.size = \[224\]; use \[width, height\]"),
    ({"expressions": {"macro": {"rate_per_minute": 3}}},
     r"synth\.expressions\.macro\.rate_per_minute \(did you mean rate_per_min\?\)"),
    ({"distractors": {"blinks": {}}}, r"synth\.distractors\.blinks \(did you mean blink\?\)"),
    ({"face": {"tones": [0.5, 1]}}, r"synth\.face\.tones \(did you mean tone\?\)"),
])
def test_params_are_checked_before_anything_is_written(workspace, override, match):
    workspace.preset("bad", **dict(CASME2, synthetic=False, per_dataset={"synth": override}))
    with pytest.raises(ConfigError, match=match):  # before the preset check, before any file
        workspace.run("synth", "bad")
    assert not (workspace.root / "data").exists()
