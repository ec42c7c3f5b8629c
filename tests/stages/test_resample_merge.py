"""resample.merge: short videos of a subject -> <subject>_99, small subjects -> 099_99 (the published SAMM-LV
protocol, on in samm_lv only), exact merged tables on hand-made SAMM-like tables, deterministic order, mapping of
predictions back to the source videos, and the real SAMM-LV table against the published processed one."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.datasets import ingested_samm

from pipeline.core.params import load_dataset, stage_params
from pipeline.errors import ConfigError, InputError
from pipeline.io.tables import (
    FRAME_COLUMNS,
    SOURCE_VIDEO,
    read_annotations,
    read_frames,
    read_videos,
    to_source_intervals,
)
from pipeline.merge import MergeParams, merge_plan, merge_tables, published_selection
from pipeline.resample import ResampleParams, resample_tables
from pipeline.scoring.report import export_megc

REPO = Path(__file__).resolve().parents[2]


def preset_resample(name: str) -> ResampleParams:
    """The resolved resample params of a dataset preset (params.yaml + per_dataset)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    return ResampleParams.from_params(stage_params(params, "resample", load_dataset(name, REPO / "configs/datasets")))


def samm_lv_merge(**change) -> MergeParams:
    """samm_lv's merge params (published), with ``min_source_frames`` etc. changed for the small hand-made tables."""
    p = preset_resample("samm_lv").merge_params()
    return MergeParams.from_params({**p.as_params(), **change})


# ---- hand-made SAMM-like tables --------------------------------------------------------------------------------

LENGTHS = {   # listed out of order on purpose: the result must not depend on the table order
    "001_4": 400, "001_3": 30, "001_1": 50, "001_2": 30,
    "002_2": 500, "002_1": 60,
    "003_1": 40,
    "004_2": 70, "004_1": 70,
    "005_1": 300,
}
LIMIT = 100
# limit 100: subject totals 003 40, 004 140, 005 300, 001 510, 002 560 -> 003 taken, 004 taken (140 > 100 but 40 <=
# 100 so far), 005 stops the walk. 001: 30, 30 (tie: by name), 50 taken (110 > 100), 400 stops. 002: 60, then the
# longer 500 too (60 <= 100 so far). 005: its only video is longer: nothing merged.
EXPECTED_PARTS = {"001_99": ["001_2", "001_3", "001_1"], "002_99": ["002_1", "002_2"],
                  "099_99": ["003_1", "004_1", "004_2"]}


def samm_like(order: slice = slice(None)) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Ingest-like tables (30 fps, so resampling to 30 keeps every frame and the arithmetic stays visible)."""
    names = list(LENGTHS)[order]
    videos = pd.DataFrame({"video": names, "subject": [v[:3] for v in names], "fps": 30.0,
                           "n_frames": [LENGTHS[v] for v in names], "source": [f"x/{v}" for v in names],
                           "kind": "frames", "color": 0})
    frames = pd.concat([pd.DataFrame({"video": v, "frame": np.arange(LENGTHS[v]),
                                      "source_frame": np.arange(1, LENGTHS[v] + 1),
                                      "path": [f"x/{v}/{v}_{i:04d}.jpg" for i in range(1, LENGTHS[v] + 1)]})
                        for v in names], ignore_index=True)
    frames = frames.iloc[::-1] if order.step == -1 else frames
    ann = pd.DataFrame({"video": ["001_1", "001_4", "002_2", "004_2"], "subject": ["001", "001", "002", "004"],
                        "onset": [5, 10, 100, 10], "apex": [7, 12, 110, 15], "offset": [9, 20, 120, 20],
                        "type": ["macro", "macro", "micro", "macro"],
                        "source_onset": [6, 11, 101, 11], "source_apex": [8, 13, 111, 16],
                        "source_offset": [10, 21, 121, 21]})
    return videos, ann, frames


def merged(order: slice = slice(None), **change):
    videos, ann, frames = samm_like(order)
    v, a, f, _ = merge_tables(videos, ann, frames, samm_lv_merge(min_source_frames=LIMIT, **change))
    return resample_tables(v, a, f, 30, None)


def test_published_selection_walk():
    assert published_selection([("a", 30), ("b", 30), ("c", 50), ("d", 400)], 100) == ["a", "b", "c"]
    assert published_selection([("b", 30), ("a", 30)], 100) == ["a", "b"]               # ties: by name
    assert published_selection([("a", 60), ("b", 500), ("c", 600)], 100) == ["a", "b"]   # + the shortest longer one
    assert published_selection([("a", 101), ("b", 5)], 100) == ["b", "a"]
    assert published_selection([("a", 101), ("b", 200)], 100) == []                      # nothing short: no merge
    assert published_selection([("a", 100)], 100) == ["a"]                              # <= limit is short


def test_merged_tables_exact():
    videos, ann, frames = merged()
    assert videos[["video", "subject", "n_frames"]].values.tolist() == [
        ["001_4", "001", 400], ["001_99", "001", 110], ["002_99", "002", 560], ["099_99", "099", 180],
        ["005_1", "005", 300]]
    assert videos.set_index("video").loc["001_99", "source"] == "x/001_2;x/001_3;x/001_1"
    for name, parts in EXPECTED_PARTS.items():
        f = frames[frames["video"] == name]
        assert f["frame"].tolist() == list(range(sum(LENGTHS[p] for p in parts)))
        assert f[SOURCE_VIDEO].tolist() == [p for p in parts for _ in range(LENGTHS[p])]
        assert f["source_frame"].tolist() == [i for p in parts for i in range(1, LENGTHS[p] + 1)]
        assert f["path"].tolist() == [f"x/{p}/{p}_{i:04d}.jpg" for p in parts for i in range(1, LENGTHS[p] + 1)]
    unmerged = frames[frames["video"] == "001_4"]
    assert unmerged[SOURCE_VIDEO].tolist() == ["001_4"] * 400 and unmerged["source_frame"].tolist()[:2] == [1, 2]
    # annotations: positions shifted by the part's start (001_1 at 60, 002_2 at 60, 004_2 at 40 + 70), source_* kept
    assert ann[["video", "subject", "onset", "apex", "offset", "source_onset", "source_offset", SOURCE_VIDEO]
               ].values.tolist() == [
        ["001_4", "001", 10, 12, 20, 11, 21, "001_4"], ["001_99", "001", 65, 67, 69, 6, 10, "001_1"],
        ["002_99", "002", 160, 170, 180, 101, 121, "002_2"], ["099_99", "099", 120, 125, 130, 11, 21, "004_2"]]


def test_merge_is_deterministic_whatever_the_table_order():
    """Equal lengths (001_2/001_3, 004_1/004_2) are ordered by name, not by table or set order."""
    v1, a1, f1 = merged()
    v2, a2, f2 = merged(slice(None, None, -1))
    key = ["video"]
    pd.testing.assert_frame_equal(v1.sort_values(key).reset_index(drop=True), v2.sort_values(key).reset_index(drop=True))
    pd.testing.assert_frame_equal(f1.sort_values(["video", "frame"]).reset_index(drop=True),
                                  f2.sort_values(["video", "frame"]).reset_index(drop=True))
    pd.testing.assert_frame_equal(a1.sort_values(["video", "onset"]).reset_index(drop=True),
                                  a2.sort_values(["video", "onset"]).reset_index(drop=True))
    assert merge_plan(samm_like()[0], samm_lv_merge(min_source_frames=LIMIT)) == {
        k: (k[:3], k, v) for k, v in EXPECTED_PARTS.items()}


def test_merge_off_changes_nothing():
    """Every preset but samm_lv: the tables are the unmerged ones, with no source_video column."""
    videos, ann, frames = samm_like()
    for name in ("casme2", "synth_samm", "synth_casme2", "generic"):
        assert not preset_resample(name).merge_params().enabled
    assert not ResampleParams.from_params({}).merge_params().enabled
    v, a, f, e = merge_tables(videos, ann, frames, preset_resample("synth_samm").merge_params())
    assert v is videos and a is ann and f is frames and e is None
    _, _, kept = resample_tables(v, a, f, 30, None)
    assert kept.columns.tolist() == FRAME_COLUMNS


def test_kept_frames_run_on_across_parts_at_200_fps():
    """Published: the 200 -> 30 fps pattern (0, 6, 13, 20, ...) is applied to the merged sequence, so the second
    part's kept frames continue the first part's phase."""
    videos = pd.DataFrame({"video": ["001_1", "001_2", "001_3"], "subject": "001", "fps": 200.0,
                           "n_frames": [30, 50, 5000], "source": "", "kind": "frames", "color": 0})
    frames = pd.concat([pd.DataFrame({"video": v, "frame": np.arange(n), "source_frame": np.arange(1, n + 1),
                                      "path": f"p{v}"}) for v, n in (("001_1", 30), ("001_2", 50), ("001_3", 5000))],
                       ignore_index=True)
    ann = pd.DataFrame({"video": ["001_2"], "subject": "001", "onset": [3], "apex": [5], "offset": [20],
                        "type": "macro", "source_onset": [4], "source_apex": [6], "source_offset": [21]})
    # limit 60: 001_1 (30) and 001_2 (50) taken; 80 > 60 so far stops 001_3 (5000)
    v, a, f, _ = merge_tables(videos, ann, frames, samm_lv_merge(min_source_frames=60))
    vv, aa, ff = resample_tables(v, a, f, 30, 4.0)
    m = ff[ff["video"] == "001_99"]
    # merged positions 0, 6, 13, 20, 26 in 001_1, then 33, 40, 46, ... = 001_2 frames 4, 11, 17, ...
    assert list(zip(m[SOURCE_VIDEO], m["source_frame"]))[:8] == [
        ("001_1", 1), ("001_1", 7), ("001_1", 14), ("001_1", 21), ("001_1", 27),
        ("001_2", 4), ("001_2", 11), ("001_2", 17)]
    assert vv.set_index("video").loc["001_99", "n_frames"] == math.ceil(80 * 3 / 20)
    # the annotation's merged positions 33..50 -> published map: last kept frame at or before: 33 (5), 46 (7)
    assert aa[["video", "onset", "offset"]].values.tolist() == [["001_99", 5, 7]]


def test_predictions_map_back_to_their_source_video():
    """A prediction in a merged video is exported in the part holding most of its frames, clipped to it, in that
    part's own numbering; a tie goes to the earlier part; an unmerged video is untouched."""
    _, _, frames = merged()
    pred = pd.DataFrame({"video": ["001_99", "001_99", "001_99", "001_4", "099_99"],
                         "onset": [65, 55, 58, 10, 100], "offset": [69, 70, 61, 20, 115],
                         "type": ["macro", "macro", "micro", "macro", "micro"], "score": [0.9, 0.8, 0.7, 0.6, 0.5]})
    megc = export_megc(pred, frames)
    assert megc[["video", "onset", "offset", "type"]].values.tolist() == [
        ["001_1", 1, 11, "macro"],     # 55..70: 5 frames in 001_3 (55-59), 11 in 001_1 (60-70) -> 001_1 1..11
        ["001_1", 6, 10, "macro"],     # 65..69 inside 001_1 (starts at 60): its frames 6..10
        ["001_3", 29, 30, "micro"],    # 58..61: 2 frames each side -> the earlier part, 001_3 frames 29..30
        ["001_4", 11, 21, "macro"],    # unmerged: as before
        ["004_1", 61, 70, "micro"],    # 099_99: 003_1 0-39, 004_1 40-109, 004_2 110-179; 100..115 -> 004_1 61..70
    ]
    names, on, off = to_source_intervals(frames, "099_99", [100], [115])
    assert (names, on.tolist(), off.tolist()) == (["004_1"], [100], [109])


def test_real_samm_lv_merge_reproduces_the_published_table(reference_dir):
    """samm_lv's merge on the real (unmerged) SAMM-LV annotation table gives the published processed table's videos,
    subjects and frame numbers, but for the documented deviations: the equal-length 009_2 / 009_4 are ordered by name
    (published: set order put 009_4 first) and the tooling's ceil(f / 6.667) rounding."""
    raw = pd.read_csv(reference_dir / "samm_annotation.csv", dtype={"subject": str})
    pub = pd.read_csv(reference_dir / "samm_annotation_processed_30fps.csv", dtype={"subject": str})
    raw["src"] = raw["video"].map(lambda p: Path(p).name)
    pub["video"] = pub["video"].map(lambda p: Path(p).name)
    length = raw.groupby("src")["frame_num"].first()
    videos = pd.DataFrame({"video": length.index, "subject": [v[:3] for v in length.index], "fps": 200.0,
                           "n_frames": length.to_numpy(), "source": "", "kind": "frames", "color": 0})
    frames = pd.concat([pd.DataFrame({"video": v, "frame": np.arange(n), "source_frame": np.arange(1, n + 1),
                                      "path": "p"}) for v, n in length.items()], ignore_index=True)
    onset = np.maximum(raw["startFrame"].to_numpy(), 1) - 1
    offset = raw["endFrame"].to_numpy() - 1
    ann = pd.DataFrame({"video": raw["src"], "subject": raw["subject"], "onset": onset, "apex": (onset + offset) // 2,
                        "offset": offset, "type": raw["type"].str.lower(), "source_onset": raw["startFrame"],
                        "source_apex": 0, "source_offset": raw["endFrame"]})
    v, a, f, _ = merge_tables(videos, ann, frames, preset_resample("samm_lv").merge_params())
    vids, res, _ = resample_tables(v, a, f, 30, 4.0)
    assert len(res) == len(pub) == 471 and len(vids) == pub["video"].nunique() == 105
    assert sorted(set(vids["subject"])) == sorted({s.zfill(3) for s in pub["subject"]})      # 29 subjects (LOSO)
    assert vids["subject"].nunique() == 29
    # the published tie order: 009_4 (1000 frames) before 009_2 (1000): 150 frames at 30 fps either way
    shift = res[SOURCE_VIDEO].map({"009_2": 150, "009_4": -150}).fillna(0).astype(int)
    assert shift.abs().sum() > 0                                  # the tie does occur in the real data
    ours = sorted(zip(res["video"], res["type"], res["onset"] + 1 + shift, res["offset"] + 1 + shift))
    theirs = sorted(zip(pub["video"], pub["type"].str.lower(), pub["startFrame"], pub["endFrame"]))
    rounding = [(o, t) for o, t in zip(ours, theirs) if o != t]
    assert rounding == [(("006_1", "macro", 1292, 1310), ("006_1", "macro", 1291, 1310))]   # ceil(8607 / 6.667)
    # video lengths: ceil(3n / 20) against the tooling's ceil(n / 6.667)
    n_pub = pub.groupby("video")["frame_num"].first()
    n_ours = vids.set_index("video")["n_frames"]
    assert sorted(n_ours.index) == sorted(n_pub.index)
    total = v.set_index("video")["n_frames"]
    for name in n_pub.index:
        if n_ours[name] != n_pub[name]:
            assert (n_ours[name], n_pub[name]) == (math.ceil(3 * total[name] / 20), math.ceil(total[name] / 6.667))


def test_merge_params_and_refusals():
    with pytest.raises(ConfigError, match=r"resample\.merge\.enabeld \(did you mean enabled\?\)"):
        ResampleParams.from_params({"merge": {"enabeld": True}})
    with pytest.raises(ConfigError, match=r"resample\.merge\.min_source_frames must be at least 1"):
        ResampleParams.from_params({"merge": {"min_source_frames": 0}})
    videos, ann, frames = samm_like()
    with pytest.raises(ConfigError, match="resample.merge.subject = '005' is a subject of the dataset"):
        merge_tables(videos, ann, frames, samm_lv_merge(min_source_frames=LIMIT, subject="005"))
    with pytest.raises(ConfigError, match="merged video name.* 001_4 already name"):
        merge_tables(videos, ann, frames, samm_lv_merge(min_source_frames=LIMIT, video_id="4"))
    files = videos.assign(kind=np.where(videos["video"] == "002_1", "file", "frames"))
    with pytest.raises(InputError, match="video 002_1 .*is a video file"):
        merge_tables(files, ann, frames, samm_lv_merge(min_source_frames=LIMIT))


def test_resample_stage_merges_under_per_dataset_params(workspace):
    """The stage: merge on (as samm_lv) writes merged tables with source_video; off (default) writes none."""
    ingested_samm(workspace)
    workspace.run("resample", "samm")
    out = workspace.out("samm", "resample")
    assert read_frames(out / "frames.csv").columns.tolist() == FRAME_COLUMNS
    # limit 45: 007 (50 frames, its only video) is not small; 006: 006_2 (45) and then 006_1 (60) -> 006_99
    workspace.set_params("resample", merge={"enabled": True, "min_source_frames": 45})
    workspace.run("resample", "samm")
    videos = read_videos(out / "videos.csv").set_index("video")
    assert videos["n_frames"].to_dict() == {"006_99": math.ceil(105 * 3 / 20), "007_3": 8}
    frames = read_frames(out / "frames.csv")
    m = frames[frames["video"] == "006_99"]
    # kept positions 0, 6, ..., 40 in 006_2 (45 frames); 46 = 006_1 position 1 (frame 2), 53 = its frame 9
    assert list(zip(m[SOURCE_VIDEO], m["source_frame"]))[6:9] == [("006_2", 41), ("006_1", 2), ("006_1", 9)]
    ann = read_annotations(out / "annotations.csv")
    assert sorted(ann[SOURCE_VIDEO]) == ["006_1", "006_1", "006_2", "007_3"]
    row = ann[(ann[SOURCE_VIDEO] == "006_1") & (ann["type"] == "macro")].iloc[0]
    # 006_1 macro 5..20 (positions 4..19) -> merged 49..64 -> last kept at or before: 46 (7), 60 (9)
    assert (row["video"], row["onset"], row["offset"], row["source_onset"]) == ("006_99", 7, 9, 5)
