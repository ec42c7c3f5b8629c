"""Resample: kept frames (the published 200 -> 30 fps rule), annotation remap (resample.interval_map), duration
filter (resample.duration_rule), stage tables, and the real SAMM-LV table against the published processed one."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.params import assert_stage_refuses
from helpers.datasets import ingested_samm, samm_dataset

from pipeline.core.params import load_dataset, stage_params
from pipeline.errors import ConfigError
from pipeline.io.tables import read_annotations, read_frames, read_videos
from pipeline.resample import ResampleParams, kept_positions, remap_intervals, resample_tables, too_long

REPO = Path(__file__).resolve().parents[2]


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
    on, ap, off = remap_intervals([6, 7, 0, 14, 1], [10, 9, 3, 16, 23], [26, 25, 5, 19, 40], kept, "kept_frames")
    # onset -> first kept at/after (6 -> 1, 7 -> 13 = 2); offset -> last kept at/before (26 -> 4, 25 -> 20 = 3)
    assert on.tolist()[:2] == [1, 2] and off.tolist()[:2] == [4, 3]
    # apex -> nearest kept: 10 -> 13 (3 away, not 6 at 4); 9 -> 6 (3 away), then clipped into [2, 3] -> 2
    assert ap.tolist()[:2] == [2, 2]
    # tie -> the earlier kept frame: 23 is 3 from 20 and 3 from 26 -> 20 (index 3)
    assert (on[4], ap[4], off[4]) == (1, 3, 6)
    # an interval holding no kept frame (14..19) becomes the kept frame nearest its apex (16 -> 13)
    assert (on[3], ap[3], off[3]) == (2, 2, 2)
    assert (on[2], ap[2], off[2]) == (0, 0, 0)                # 0..5 holds only kept frame 0
    # kept_frames is the function's own default
    assert [a.tolist() for a in remap_intervals([7], [9], [25], kept)] == [[2], [2], [3]]


def test_published_remap_rule_maps_every_frame_to_the_last_kept_frame_at_or_before_it():
    """interval_map published: onset, apex and offset alike; for 1-based SAMM-LV numbers f that is ceil(3f/20) - 1."""
    kept = kept_positions(100, 200, 30)                      # 0, 6, 13, 20, 26, 33, 40, ...
    on, ap, off = remap_intervals([6, 7, 0, 14, 1], [10, 9, 3, 16, 23], [26, 25, 5, 19, 40], kept, "published")
    # onset 7 (not kept) -> 6 (index 1), where kept_frames gives 13 (index 2); a kept onset (6) maps alike in both
    assert on.tolist() == [1, 1, 0, 2, 0]
    assert ap.tolist() == [1, 1, 0, 2, 3]                    # apex 10 -> 6 (index 1), not the nearest 13
    assert off.tolist() == [4, 3, 0, 2, 6]                   # offsets as kept_frames: last kept at or before
    # the empty interval 14..19 needs no special case: both ends -> 13 (index 2)
    positions = np.arange(100)
    f = positions + 1                                        # 1-based frame numbers
    expected = np.array([math.ceil(3 * int(x) / 20) for x in f]) - 1
    for got in remap_intervals(positions, positions, positions, kept, "published"):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ConfigError, match="resample.interval_map = 'nearest'"):
        remap_intervals([1], [1], [1], kept, "nearest")


@pytest.mark.parametrize("rule, kept_lengths", [("published", [799, 800]), ("inclusive", [799])])
def test_duration_rule_edge_at_4_s(rule, kept_lengths):
    """offset - onset = 799 / 800 / 801 at 200 fps, max 4 s: published keeps offset - onset <= 800, inclusive
    keeps offset - onset + 1 <= 800."""
    onset = np.array([100, 100, 100])
    offset = onset + np.array([799, 800, 801])
    long = too_long(onset, offset, 200, 4.0, rule)
    assert (offset - onset)[~long].tolist() == kept_lengths
    videos, ann, frames = _edge_tables()
    _, a, _ = resample_tables(videos, ann, frames, 30, 4.0, duration_rule=rule)
    assert (a["source_offset"] - a["source_onset"]).tolist() == kept_lengths
    with pytest.raises(ConfigError, match="resample.duration_rule = 'open'"):
        too_long(onset, offset, 200, 4.0, "open")


def test_duration_rule_is_exact_at_other_rates():
    # 29.97 fps x 4 s = 119.88 frames: 119 kept, 120 dropped under either rule's count
    assert too_long([0, 0], [119, 120], 29.97, 4.0, "published").tolist() == [False, True]
    assert too_long([0, 0], [118, 119], 29.97, 4.0, "inclusive").tolist() == [False, True]
    assert too_long([0, 0], [120, 121], 30, 4.0, "published").tolist() == [False, True]   # 120 frames = 4 s kept


def _edge_tables():
    """One 2000-frame 200-fps video with intervals of offset - onset = 799, 800, 801."""
    n = 2000
    videos = pd.DataFrame({"video": ["e"], "subject": ["s"], "fps": [200.0], "n_frames": [n], "source": ["x/e"],
                           "kind": ["frames"], "color": [0]})
    frames = pd.DataFrame({"video": "e", "frame": range(n), "source_frame": range(1, n + 1), "path": ""})
    lengths = np.array([799, 800, 801])
    onset = np.array([100, 300, 500])
    ann = pd.DataFrame({"video": "e", "subject": "s", "onset": onset, "apex": onset + 10, "offset": onset + lengths,
                        "type": "macro", "source_onset": onset + 1, "source_apex": onset + 11,
                        "source_offset": onset + lengths + 1})
    return videos, ann, frames


@pytest.mark.parametrize("preset, interval_map, duration_rule", [
    ("samm_lv", "published", "published"), ("casme2", "published", "published"),
    ("synth_samm", "kept_frames", "published")])
def test_presets_resolve_to_the_published_protocol(preset, interval_map, duration_rule):
    """The real presets default to the published protocol; synth_samm keeps its ground truth on kept frames."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    p = ResampleParams.from_params(stage_params(params, "resample", load_dataset(preset, REPO / "configs/datasets")))
    assert (p.interval_map, p.duration_rule, p.max_duration_s) == (interval_map, duration_rule, 4.0)
    assert ResampleParams.from_params({}).interval_map == "published"    # the code's default is params.yaml's
    assert ResampleParams.from_params({}).duration_rule == "published"


def test_samm_lv_defaults_keep_the_800_frame_interval_and_map_onsets_back():
    """Hand-made: under samm_lv's resolved params the 800-frame interval stays and a non-kept onset maps back."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    p = ResampleParams.from_params(stage_params(params, "resample", load_dataset("samm_lv", REPO / "configs/datasets")))
    videos, ann, frames = _edge_tables()
    _, a, _ = resample_tables(videos, ann, frames, 30, p.max_duration_s, p.interval_map, p.duration_rule)
    assert (a["source_offset"] - a["source_onset"]).tolist() == [799, 800]
    # onset positions 100, 300 (1-based 101, 301) -> ceil(3f/20) - 1 = 15, 45 (kept 100, 300); kept_frames: 15, 45 too,
    # as 100 and 300 are kept; offsets 899 / 1100 -> 134 (kept 893), 165 (kept 1100)
    assert a[["onset", "offset"]].values.tolist() == [[15, 134], [45, 165]]
    ann["onset"] += 1                                          # 101, 301, 501: not kept (lengths 798..800: all kept)
    _, a, _ = resample_tables(videos, ann, frames, 30, p.max_duration_s, p.interval_map, p.duration_rule)
    assert a["onset"].tolist() == [15, 45, 75]                # published: the kept frame before (100, 300, 500)
    _, k, _ = resample_tables(videos, ann, frames, 30, p.max_duration_s, "kept_frames", p.duration_rule)
    assert k["onset"].tolist() == [16, 46, 76]                # kept_frames: the kept frame after (106, 306, 506)


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
    v, a, f = resample_tables(videos, ann, frames, 30, max_duration_s=0.4,     # 80 frames at 200 fps
                              interval_map="kept_frames")
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
    _, a_pub, _ = resample_tables(videos, ann, frames, 30, max_duration_s=0.4)  # default: published map
    assert a_pub[["onset", "apex", "offset"]].values.tolist() == [[1, 1, 4], [1, 1, 3]]


def test_inconsistent_tables_are_reported():
    from pipeline.errors import InputError

    videos, ann, frames = _tables()
    with pytest.raises(InputError, match="video a has n_frames 100 in videos.csv but 99 rows in frames.csv"):
        resample_tables(videos, ann, frames.iloc[1:], 30, None)


def test_resample_stage(workspace):
    ingested_samm(workspace)
    workspace.run("resample", "samm")
    out = workspace.out("samm", "resample")
    videos = read_videos(out / "videos.csv").set_index("video")
    assert videos["n_frames"].to_dict() == {"006_1": 9, "006_2": 7, "007_3": 8}
    assert set(videos["fps"]) == {30.0} and set(videos["source_fps"]) == {200.0}
    frames = read_frames(out / "frames.csv")
    assert frames[frames["video"] == "006_1"]["source_frame"].tolist() == [1, 7, 14, 21, 27, 34, 41, 47, 54]
    ann = read_annotations(out / "annotations.csv")
    row = ann[(ann["video"] == "006_1") & (ann["type"] == "macro")].iloc[0]   # positions 4, 8, 19
    assert (row["onset"], row["apex"], row["offset"]) == (0, 1, 2)            # published: kept 0, 6, 13
    workspace.set_params("resample", interval_map="kept_frames")
    workspace.run("resample", "samm")
    ann = read_annotations(out / "annotations.csv")
    row = ann[(ann["video"] == "006_1") & (ann["type"] == "macro")].iloc[0]
    assert (row["onset"], row["apex"], row["offset"]) == (1, 1, 2)            # kept_frames: kept 6, 6, 13
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
        ("interval_map", "nearest", r"resample\.interval_map"),
        ("duration_rule", "open", r"resample\.duration_rule"),
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
    workspace.set_params("resample", interval_map="kept_frames")
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
    # interval_map published moves the distractors as it moves the annotations: start and end -> last kept at/before
    workspace.set_params("resample", interval_map="published")
    workspace.run("resample", "samm")
    res = read_distractors(workspace.out("samm", "resample") / "distractors.csv")
    assert res[["start", "end"]].values.tolist() == [[1, 2], [4, 6], [2, 2], [5, 6]]
    # no distractor table (every real dataset): nothing written, the earlier ones removed
    (root / "distractors.csv").unlink()
    workspace.run("ingest", "samm")
    workspace.run("resample", "samm")
    assert not (workspace.out("samm", "ingest") / "distractors.csv").exists()
    assert not (workspace.out("samm", "resample") / "distractors.csv").exists()
    assert read_annotations(workspace.out("samm", "resample") / "annotations.csv")["onset"].tolist()


# ---- the real SAMM-LV table against the published processed 30-fps table ---------------------------------------

# The published tooling merged a subject's short videos into <subject>_99 (and small subjects into 099_99) before
# mapping frames, in an order that follows Python set iteration. The order below is the one permutation per merged
# video that reproduces the published table's frame numbers (found by trying every order): test data. m2es's own
# merge (resample.merge, tests/stages/test_resample_merge.py) orders the one equal-length pair (009_2, 009_4) by name.
PUBLISHED_MERGES = {
    "006_99": ("006_7", "006_2"), "007_99": ("007_3", "007_4", "007_6"), "008_99": ("008_1", "008_6", "008_5"),
    "009_99": ("009_6", "009_7", "009_4", "009_2"), "010_99": ("010_6", "010_7", "010_1"),
    "011_99": ("011_3", "011_2"), "012_99": ("012_5", "012_7"), "013_99": ("013_3", "013_6", "013_2"),
    "015_99": ("015_3", "015_7", "015_5"), "016_99": ("016_5", "016_4", "016_2"),
    "017_99": ("017_2", "017_4", "017_1", "017_5"), "018_99": ("018_1", "018_7", "018_2"),
    "019_99": ("019_4", "019_2", "019_7"), "020_99": ("020_5", "020_2"), "022_99": ("022_6", "022_4", "022_5"),
    "024_99": ("024_5", "024_2"), "025_99": ("025_6", "025_5"), "026_99": ("026_5", "026_6", "026_1"),
    "032_99": ("032_6", "032_5"), "033_99": ("033_5", "033_3", "033_4", "033_6"), "034_99": ("034_3", "034_6"),
    "035_99": ("035_1", "035_3"), "037_99": ("037_7", "037_2"), "099_99": ("031_3", "023_1", "023_4"),
}

# Rows where the published tooling's own arithmetic, ceil(f / 6.667), differs from exact ceil(3f / 20) (listed in
# docs/reproduce.md): (video, which end, 200-fps frame number, published 30-fps number, exact 30-fps number).
TOOLING_ROUNDING = [("006_1", "onset", 8607, 1291, 1292)]


def _published_layout(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Ingest-like tables of the real SAMM-LV annotation table in the published video layout (merges included).

    Positions are 200-fps frame numbers - 1 (+ the constituent's start inside a merged video); an onset of 0 is
    clipped to the first frame as ingest does; ``position`` keeps the 200-fps onset position (for ordering rows).
    """
    raw = raw.assign(raw_video=raw["video"].map(lambda p: Path(p).name))
    length = raw.groupby("raw_video")["frame_num"].first()
    where = {v: (v, 0) for v in length.index}
    for merged, parts in PUBLISHED_MERGES.items():
        start = 0
        for v in parts:
            where[v] = (merged, start)
            start += int(length[v])
    raw["video_out"] = raw["raw_video"].map(lambda v: where[v][0])
    raw["start"] = raw["raw_video"].map(lambda v: where[v][1])
    raw["part"] = raw["raw_video"].map(lambda v: PUBLISHED_MERGES.get(where[v][0], (v,)).index(v))
    raw = raw.sort_values(["video_out", "part"], kind="stable")
    n = length.groupby(raw.drop_duplicates("raw_video").set_index("raw_video")["video_out"]).sum()
    videos = pd.DataFrame({"video": n.index, "subject": "s", "fps": 200.0, "n_frames": n.to_numpy(), "source": "",
                           "kind": "frames", "color": 0})
    frames = pd.concat([pd.DataFrame({"video": v, "frame": np.arange(k), "source_frame": np.arange(1, k + 1),
                                      "path": ""}) for v, k in n.items()], ignore_index=True)
    onset = np.maximum(raw["startFrame"].to_numpy(), 1) - 1 + raw["start"].to_numpy()
    offset = raw["endFrame"].to_numpy() - 1 + raw["start"].to_numpy()
    ann = pd.DataFrame({"video": raw["video_out"].to_numpy(), "subject": "s", "onset": onset,
                        "apex": (onset + offset) // 2, "offset": offset, "type": raw["type"].str.lower().to_numpy(),
                        "source_onset": raw["startFrame"].to_numpy(), "source_apex": 0,
                        "source_offset": raw["endFrame"].to_numpy(), "raw_video": raw["raw_video"].to_numpy(),
                        "position": onset})
    return videos, ann, frames


def _compare_with_published(reference_dir: Path, interval_map: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    raw = pd.read_csv(reference_dir / "samm_annotation.csv", dtype={"subject": str})
    pub = pd.read_csv(reference_dir / "samm_annotation_processed_30fps.csv", dtype={"subject": str})
    pub["video"] = pub["video"].map(lambda p: Path(p).name)
    videos, ann, frames = _published_layout(raw)
    _, res, _ = resample_tables(videos, ann, frames, 30, 4.0, interval_map=interval_map)
    assert len(res) == len(pub) == 471                           # 312 macro + 159 micro after the 4-s filter
    # the published table lists videos in its own order, and per video macro then micro rows by onset
    order = {v: i for i, v in enumerate(pub["video"].unique())}
    assert pub.equals(pub.sort_values(["video", "type", "startFrame"], key=lambda c: c.map(order) if c.name == "video"
                                      else c, kind="stable"))
    res = res.assign(rank=res["video"].map(order)).sort_values(["rank", "type", "position"], kind="stable")
    res = res.reset_index(drop=True)
    assert res["video"].tolist() == pub["video"].tolist()
    assert res["type"].tolist() == pub["type"].str.lower().tolist()
    return res, pub


def test_real_samm_table_equals_the_published_processed_table(reference_dir):
    """interval_map published (default): every onset and offset equals the published processed table (1-based
    30-fps numbers = m2es's 0-based positions + 1), except the tooling's own 6.667 rounding (TOOLING_ROUNDING)."""
    res, pub = _compare_with_published(reference_dir, "published")
    diffs = []
    for end, col in (("onset", "startFrame"), ("offset", "endFrame")):
        for i in np.flatnonzero((res[end] + 1).to_numpy() != pub[col].to_numpy()):
            f = int(res[f"source_{end}"].iloc[i])
            diffs.append((res["raw_video"].iloc[i], end, f, int(pub[col].iloc[i]), int(res[end].iloc[i]) + 1))
    assert diffs == TOOLING_ROUNDING
    for _, _, f, published, exact in diffs:                      # the published arithmetic explains each of them
        assert (math.ceil(f / 6.667), math.ceil(3 * f / 20)) == (published, exact)


def test_real_samm_table_kept_frames_moves_onsets_one_frame_later(reference_dir):
    """interval_map kept_frames: 388 of 471 onsets one 30-fps frame after the published table; offsets as published."""
    res, pub = _compare_with_published(reference_dir, "kept_frames")
    d_on = (res["onset"] + 1).to_numpy() - pub["startFrame"].to_numpy()
    d_off = (res["offset"] + 1).to_numpy() - pub["endFrame"].to_numpy()
    assert (d_on != 0).sum() == 388 and set(d_on) == {0, 1}
    assert d_off.tolist() == [0] * 471
    # the one rounding row of the published tooling is among them (its onset 8607 is itself a kept frame)
    assert d_on[(res["raw_video"] == "006_1").to_numpy() & (res["source_onset"] == 8607).to_numpy()].tolist() == [1]
