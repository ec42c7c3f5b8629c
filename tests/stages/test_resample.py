"""Resample: kept frames (the published 200 -> 30 fps rule), annotation remap, duration filter, stage tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers.params import assert_stage_refuses
from helpers.datasets import samm_dataset

from pipeline.errors import ConfigError
from pipeline.io.tables import read_annotations, read_frames, read_videos
from pipeline.resample import kept_positions, remap_intervals, resample_tables


def published_200_to_30(n: int) -> list[int]:
    """The published rule, written independently: groups of 20, sub-segments 6, 7, 7, keep each first frame."""
    kept = []
    for start in range(0, n, 20):
        for offset in (0, 6, 13):
            if start + offset < n:
                kept.append(start + offset)
    return kept


@pytest.mark.parametrize("n", list(range(1, 61)) + [199, 200, 201, 3000, 13057])
def test_kept_positions_equal_published_rule(n):
    assert kept_positions(n, 200, 30).tolist() == published_200_to_30(n)


def test_kept_positions_first_values_and_other_rates():
    assert kept_positions(40, 200, 30).tolist() == [0, 6, 13, 20, 26, 33]
    assert kept_positions(7, 30, 30).tolist() == list(range(7))            # identity at equal fps
    assert kept_positions(9, 60, 30).tolist() == [0, 2, 4, 6, 8]
    assert kept_positions(10, 29.97, 29.97).tolist() == list(range(10))
    k = kept_positions(1000, 29.97, 25)
    assert len(k) == 835 and np.all(np.diff(k) >= 1) and k[-1] < 1000
    with pytest.raises(ConfigError, match="above the source rate"):
        kept_positions(10, 25, 30)


def test_remap_rule():
    kept = kept_positions(100, 200, 30)                      # 0, 6, 13, 20, 26, 33, 40, ...
    on, ap, off = remap_intervals([6, 7, 0, 14, 1], [10, 9, 3, 16, 23], [26, 25, 5, 19, 40], kept)
    # onset -> first kept at/after (6 -> 1, 7 -> 13 = 2); offset -> last kept at/before (26 -> 4, 25 -> 20 = 3)
    assert on.tolist()[:2] == [1, 2] and off.tolist()[:2] == [4, 3]
    # apex -> nearest kept: 10 -> 13 (3 away, not 6 at 4); 9 -> 6 (3 away), then clipped into [2, 3] -> 2
    assert ap.tolist()[:2] == [2, 2]
    # tie -> the earlier kept frame: 23 is 3 from 20 and 3 from 26 -> 20 (index 3)
    assert (on[4], ap[4], off[4]) == (1, 3, 6)
    # an interval holding no kept frame (14..19) becomes the kept frame nearest its apex (16 -> 13)
    assert (on[3], ap[3], off[3]) == (2, 2, 2)
    assert (on[2], ap[2], off[2]) == (0, 0, 0)                # 0..5 holds only kept frame 0


def _tables():
    videos = pd.DataFrame({"video": ["a", "b"], "subject": ["s1", "s2"], "fps": [200.0, 200.0], "n_frames": [100, 3],
                           "source": ["x/a", "x/b"], "kind": ["frames", "frames"], "color": [0, 0]})
    frames = pd.concat([pd.DataFrame({"video": v, "frame": range(n), "source_frame": range(1, n + 1),
                                      "path": [f"x/{v}/{v}_{i:04d}.jpg" for i in range(1, n + 1)]})
                        for v, n in (("a", 100), ("b", 3))], ignore_index=True)
    ann = pd.DataFrame({"video": ["a", "a", "a"], "subject": "s1", "onset": [6, 0, 10], "apex": [10, 50, 12],
                        "offset": [26, 99, 20], "type": ["macro", "macro", "micro"],
                        "source_onset": [7, 1, 11], "source_apex": [11, 51, 13], "source_offset": [27, 100, 21]})
    return videos, ann, frames


def test_resample_tables_and_duration_filter():
    videos, ann, frames = _tables()
    v, a, f = resample_tables(videos, ann, frames, 30, max_duration_s=0.4)     # 80 frames at 200 fps
    assert v[["video", "fps", "n_frames", "source_fps"]].values.tolist() == [["a", 30.0, 15, 200.0],
                                                                            ["b", 30.0, 1, 200.0]]
    assert len(a) == 2 and 100 not in set(a["source_offset"])                # 100-frame interval dropped
    assert a[["onset", "apex", "offset"]].values.tolist() == [[1, 2, 4], [2, 2, 3]]
    assert a[["source_onset", "source_apex", "source_offset"]].values.tolist() == [[7, 11, 27], [11, 13, 21]]
    fa = f[f["video"] == "a"]
    assert fa["frame"].tolist() == list(range(15))
    assert fa["source_frame"].tolist() == [p + 1 for p in published_200_to_30(100)]
    assert fa["path"].iloc[2] == "x/a/a_0014.jpg"
    assert f[f["video"] == "b"]["source_frame"].tolist() == [1]              # short videos kept, not merged
    _, a_all, _ = resample_tables(videos, ann, frames, 30, max_duration_s=None)
    assert len(a_all) == 3


def test_inconsistent_tables_are_reported():
    from pipeline.errors import InputError

    videos, ann, frames = _tables()
    with pytest.raises(InputError, match="video a has n_frames 100 in videos.csv but 99 rows in frames.csv"):
        resample_tables(videos, ann, frames.iloc[1:], 30, None)


def test_resample_stage(workspace):
    samm_dataset(workspace.root / "data/raw/samm")
    workspace.preset("samm", root="data/raw/samm", layout="samm", frames_dir="SAMM_longvideos",
                     annotation_file="SAMM_LongVideos_V?_Release.xlsx", source_fps=200, target_fps=30, color=False)
    workspace.run("ingest", "samm")
    workspace.run("resample", "samm")
    out = workspace.out("samm", "resample")
    videos = read_videos(out / "videos.csv").set_index("video")
    assert videos["n_frames"].to_dict() == {"006_1": 9, "006_2": 7, "007_3": 8}
    assert set(videos["fps"]) == {30.0} and set(videos["source_fps"]) == {200.0}
    frames = read_frames(out / "frames.csv")
    assert frames[frames["video"] == "006_1"]["source_frame"].tolist() == [1, 7, 14, 21, 27, 34, 41, 47, 54]
    ann = read_annotations(out / "annotations.csv")
    row = ann[(ann["video"] == "006_1") & (ann["type"] == "macro")].iloc[0]   # positions 4, 8, 19
    assert (row["onset"], row["apex"], row["offset"]) == (1, 1, 2)
    # preset target_fps wins over params; without either the stage refuses
    workspace.set_params("resample", target_fps=20)
    workspace.run("resample", "samm")
    assert read_videos(out / "videos.csv")["fps"].tolist() == [30.0] * 3


def test_target_fps_from_params_when_preset_has_none(workspace):
    samm_dataset(workspace.root / "data/raw/samm")
    workspace.preset("samm", root="data/raw/samm", layout="samm", frames_dir="SAMM_longvideos",
                     annotation_file="SAMM_LongVideos_V?_Release.xlsx", source_fps=200, color=False)
    workspace.run("ingest", "samm")
    workspace.set_params("resample", target_fps=20)
    workspace.run("resample", "samm")
    videos = read_videos(workspace.out("samm", "resample") / "videos.csv").set_index("video")
    assert videos["n_frames"].to_dict() == {"006_1": 6, "006_2": 5, "007_3": 5}
    workspace.set_params("resample", target_fps=None)
    with pytest.raises(ConfigError, match="no target fps"):
        workspace.run("resample", "samm")


def test_params_are_checked_before_any_input_is_read(workspace):
    workspace.preset("samm", root="data/raw/samm", layout="samm", source_fps=200, target_fps=30)
    assert_stage_refuses(workspace, "resample", "samm", [   # no ingest tables: the bad value is what is reported
        ("target_fsp", 25, r"resample\.target_fsp \(did you mean target_fps\?\)"),
        ("max_duration_s", "long", r"resample\.max_duration_s = 'long' is invalid"),
    ])


def test_distractors_reach_resample_with_the_annotations_mapping(workspace):
    """A dataset root's distractors.csv (200 fps, 1-based numbers) -> ingest positions -> the 30-fps frames
    the same rule keeps for annotations; a dataset without one writes none (and a stale one goes)."""
    from pipeline.io.tables import DISTRACTOR_COLUMNS, read_distractors

    root = workspace.root / "data/raw/samm"
    samm_dataset(root)
    pd.DataFrame({"video": ["006_1", "006_1", "006_2", "006_2", "999_1"], "subject": ["006", "006", "006", "006", "999"],
                  "kind": ["blink", "jerk", "blink", "turn", "blink"], "start": [8, 30, 15, 40, 1],
                  "end": [20, 45, 19, 50, 5], "strength": [0.9, "", 0.8, "", 0.7]}
                 ).to_csv(root / "distractors.csv", index=False)
    workspace.preset("samm", root="data/raw/samm", layout="samm", frames_dir="SAMM_longvideos",
                     annotation_file="SAMM_LongVideos_V?_Release.xlsx", source_fps=200, target_fps=30, color=False)
    workspace.run("ingest", "samm")
    workspace.run("resample", "samm")
    ing = read_distractors(workspace.out("samm", "ingest") / "distractors.csv")
    assert ing.columns.tolist() == DISTRACTOR_COLUMNS + ["strength"]
    assert "999_1" not in set(ing["video"])                            # video not ingested: left out
    # positions = number - 1; 006_2 has 45 frames, so the turn 40..50 is clipped to 40..45
    assert ing[["video", "kind", "start", "end", "source_start", "source_end"]].values.tolist() == [
        ["006_1", "blink", 7, 19, 8, 20], ["006_1", "jerk", 29, 44, 30, 45],
        ["006_2", "blink", 14, 18, 15, 19], ["006_2", "turn", 39, 44, 40, 45]]
    res = read_distractors(workspace.out("samm", "resample") / "distractors.csv")
    # kept source positions 0, 6, 13, 20, 26, 33, 40, ...: 7..19 holds only 13 -> (2, 2); 29..44 -> 33, 40 = (5, 6);
    # 14..18 holds no kept frame -> the one nearest its middle 16 (13, index 2); 39..44 -> 40 (index 6)
    assert res[["start", "end"]].values.tolist() == [[2, 2], [5, 6], [2, 2], [6, 6]]
    assert res[["source_start", "source_end"]].values.tolist() == ing[["source_start", "source_end"]].values.tolist()
    assert res["strength"].tolist() == ing["strength"].tolist()
    # the very mapping of annotation intervals: an annotation over the same source span lands on the same frames
    on, _, off = remap_intervals(ing["start"], (ing["start"] + ing["end"]) // 2, ing["end"],
                                 np.array(published_200_to_30(60)))
    assert [on[0], off[0], on[1], off[1]] == [2, 2, 5, 6]
    # no distractor table (every real dataset): nothing written, the earlier ones removed
    (root / "distractors.csv").unlink()
    workspace.run("ingest", "samm")
    workspace.run("resample", "samm")
    assert not (workspace.out("samm", "ingest") / "distractors.csv").exists()
    assert not (workspace.out("samm", "resample") / "distractors.csv").exists()
    assert read_annotations(workspace.out("samm", "resample") / "annotations.csv")["onset"].tolist()
