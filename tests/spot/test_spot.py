"""``m2es spot`` end to end: a tiny IAENet trained here spots a synthetic mp4's known intervals.

The module fixture builds a small synthetic benchmark in the mp4 format (two subjects, one
8-s video each, four macro- and one micro-expression per video, no distractors), runs the
real stages on it (synth, ingest, resample, crop, flow, features with random-init I3D,
train) and trains the final IAENet of a tiny preset. Every test then runs
``pipeline.spot.cli.main`` (``m2es spot``) in process, on CPU with one torch thread.

Why the model is good enough to test the pipeline (and deterministic): random-init I3D
features carry the synthetic expressions mostly in the flow stream, whose magnitude is
set by ``features.flow_bound`` (0.05 px here, so a moving face region saturates the flow
input and the flow features swing by about 5x their background level inside an
expression). With the tiny preset (64-frame windows, 32/64 channels) and the IoU loss
weighted up (``reg_weight: 1``), 200 epochs of batch 4 at lr 1e-3 (~25 s) take the
classifier past its focal-loss plateau (0.4 for every expression-like point; 150 epochs
were not always enough in a sweep of seeds, 200 were) and the spotted macro intervals land
on the ground truth at IoU 0.63-0.88, scores ~0.9 against <= 0.31 for the background.
Spot is run on a video the model was trained on (same subject and style; spotting held-out
videos with random-init features is beyond a 25-s CPU model): a pipeline that computes
different features, resamples differently or maps frames back wrongly misses them, and
the test also checks that spot's features equal the training features bit for bit.
Training on CPU with one thread and fixed seeds repeats exactly on a given machine.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import decord
import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.core.stage import make_context
from pipeline.learning.presets import load_model_preset
from pipeline.scoring.metrics import interval_iou
from pipeline.scoring.protocols import Choice, save_thresholds
from pipeline.spot.cli import main

REPO = Path(__file__).resolve().parents[2]
DS = "spotsyn"
VIDEO = "006_1"           # subject 006's video (synth names mp4 videos like SAMM-LV)
THRESHOLD = 0.35          # score threshold passed on the command line: between the spotted macro intervals'
                          # scores (~0.9; ~0.4 if training stopped on its plateau) and the background's (<= 0.31)
SPOT_CSV_COLUMNS = ["video", "type", "onset", "apex", "offset", "onset_s", "apex_s", "offset_s", "score"]


def _params() -> dict:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["parallel"] = {"backend": "sequential", "n_jobs": 1, "address": None, "fail_fast": False}
    s = p["synth"]
    s.update(format="mp4", size=[224, 168], n_subjects=2, videos_per_subject=1, duration_s=8.0,
             count_model="rounded")
    s["face"]["width_frac"] = [0.6, 0.65]
    s["expressions"].update(margin_s=0.4, min_gap_s=0.5)
    s["expressions"]["macro"].update(rate_per_min=30.0, amplitude_px224=[25.0, 35.0],
                                     length_quantiles_s=[0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.0, 1.0])
    s["expressions"]["micro"].update(rate_per_min=7.5, amplitude_px224=[6.0, 8.0])
    for kind in ("blink", "turn", "jerk", "lighting"):
        s["distractors"][kind]["rate_per_min"] = 0
    s["distractors"]["drift"]["amplitude_px224"] = 1.0
    # reduced_decode off: PNG frames (the 200-fps folder) are then decoded exactly like the mp4's
    p["crop"].update(size=48, reduced_decode=False)
    p["flow"].update(impl="opencv", nscales=2, warps=1, outer_iterations=1, inner_iterations=10)
    p["features"].update(allow_random_init=True, input_size=32, flow_bound=0.05, batch_size=64,
                         flow_quantize="none")  # the float flow this module's model was tuned on
    # folds lists no subject: only the final model (trained on every subject) is trained
    p["train"].update(model_preset="iaenet_spot", epochs=200, warmup_epochs=2, batch_size=4, lr=1e-3,
                      reg_weight=1.0, device="cpu", seed=0, folds=["none"])
    return p


def _model_preset() -> dict:
    pr = copy.deepcopy(load_model_preset("iaenet_casme2", REPO / "configs"))
    pr["name"] = "iaenet_spot"
    pr["window"].update(frames=64, train_step=16, test_step=16)
    pr["levels"]["ranges"] = [[0, 10], [10, 20], [20, 64]]
    pr["model"]["base"]["dim"] = 32
    pr["model"]["encoder"]["dims"] = [32, 32, 64]
    pr["model"]["heads"]["dim"] = 32
    return pr


@dataclass
class Trained:
    """The workspace of the module: trained run, raw videos, ground truth."""

    root: Path
    runs: Path
    raw: Path
    gt: pd.DataFrame

    @property
    def mp4(self) -> Path:
        return self.raw / f"{VIDEO}.mp4"

    def macro_gt(self) -> pd.DataFrame:
        return self.gt[(self.gt.video == VIDEO) & (self.gt.type == "macro")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("spot")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        torch.set_num_threads(1)
        try:
            (root / "params.yaml").write_text(yaml.safe_dump(_params(), sort_keys=False))
            (root / "configs" / "datasets").mkdir(parents=True)
            (root / "configs" / "iaenet_spot.yaml").write_text(yaml.safe_dump(_model_preset()))
            (root / "configs" / "datasets" / f"{DS}.yaml").write_text(yaml.safe_dump(dict(
                layout="generic", root=f"data/raw/{DS}", annotation_file="annotations.csv", source_fps=30,
                target_fps=30, model_preset="iaenet_spot", synthetic=True)))
            for stage in ("synth", "ingest", "resample", "crop", "flow", "features", "train"):
                importlib.import_module(f"pipeline.{stage}").run(make_context(stage, DS))
            raw = root / "data" / "raw" / DS
            gt = pd.read_csv(raw / "ground_truth.csv", dtype={"video": str, "subject": str})
            yield Trained(root, root / "data" / DS / "runs", raw, gt)
        finally:
            torch.set_num_threads(threads)


def spot(*args: str) -> int:
    return main([str(a) for a in args])


def read_out(out: Path) -> tuple[pd.DataFrame, dict]:
    csv = pd.read_csv(out / "intervals.csv", dtype={"video": str})
    return csv, json.loads((out / "intervals.json").read_text())


def decode_all(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def write_mp4(path: Path, frames: np.ndarray, fps: float = 30.0) -> Path:
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def matched(pred: pd.DataFrame, gt: pd.DataFrame) -> np.ndarray:
    """Best IoU of each ground-truth interval with any prediction (inclusive frames)."""
    if pred.empty:
        return np.zeros(len(gt))
    return interval_iou(pred.onset.values, pred.offset.values, gt.onset.values, gt.offset.values).max(0)


def cache_files(doc: dict) -> dict[str, Path]:
    base = Path(doc["cache"])
    return {s: base / s / "video.h5" for s in ("faces", "flow", "features")}


@pytest.fixture(scope="module")
def spot30(trained):
    """The first spot run on the 30-fps mp4 (thresholds on the command line, ground truth given)."""
    out = trained.root / "out30"
    code = spot(trained.mp4, "--model", trained.runs, "--out", out, "--threshold-macro", THRESHOLD,
                "--threshold-micro", THRESHOLD, "--ground-truth", trained.raw / "ground_truth.csv")
    assert code == 0
    csv, doc = read_out(out / VIDEO)
    stats = {s: (p.stat().st_ino, p.stat().st_mtime_ns) for s, p in cache_files(doc).items()}
    return csv, doc, stats


def test_spots_the_known_macro_intervals_in_input_frames_and_seconds(trained, spot30):
    csv, doc, _ = spot30
    assert list(csv.columns) == SPOT_CSV_COLUMNS
    macro = csv[csv.type == "macro"]
    gt = trained.macro_gt()
    assert len(gt) == 4
    ious = matched(macro, gt)
    assert (ious >= 0.5).all(), f"macro IoUs {ious} (spotted {macro[['onset', 'offset', 'score']].values})"
    assert len(macro) <= len(gt) + 1                     # and not by spotting everything
    # 30 fps file: frame numbers are decode indices, seconds = frame / 30, offsets to the end of their frame
    assert np.allclose(csv.onset_s, csv.onset / 30, atol=1e-4)
    assert np.allclose(csv.offset_s, (csv.offset + 1) / 30, atol=1e-4)
    assert ((csv.onset <= csv.apex) & (csv.apex <= csv.offset)).all() and (csv.score >= THRESHOLD).all()
    assert doc["steps"] == {"ingest": "ran", "resample": "ran", "crop": "computed", "flow": "computed",
                            "features": "computed", "face_check": "computed"}
    assert doc["thresholds"]["source"] == "command line" and doc["lost_face_spans"] == []
    assert doc["ground_truth"]["macro"]["recall"] == 1.0
    assert doc["model"]["recipe"] == "checkpoint params"   # crop/flow/features params recorded by train
    # the same stage functions with the model's params: spot's features are the training features
    with h5py.File(cache_files(doc)["features"]) as a, \
            h5py.File(trained.root / "data" / DS / "features" / f"{VIDEO}.h5") as b:
        for stream in ("rgb", "flow"):
            assert np.array_equal(a[stream][()], b[stream][()])
    assert (trained.root / "out30" / VIDEO / "timeline.png").stat().st_size > 10_000


def test_second_run_skips_crop_flow_features_and_finds_the_evaluate_thresholds(trained, spot30, capsys):
    csv1, doc1, stats1 = spot30
    # thresholds.json as the evaluate stage writes it next to the run (data/<ds>/evaluate/)
    thr = trained.root / "data" / DS / "evaluate" / "thresholds.json"
    save_thresholds(thr, Choice(epoch=200, thresholds={"macro": THRESHOLD, "micro": THRESHOLD}),
                    {"dataset": DS, "counting": "one-to-one", "iou_threshold": 0.5})
    try:
        out = trained.root / "out30b"
        assert spot(trained.mp4, "--model", trained.runs / "final" / "model.pt", "--out", out) == 0
    finally:
        thr.unlink()
    csv2, doc2 = read_out(out / VIDEO)
    assert doc2["steps"] == {"ingest": "ran", "resample": "ran", "crop": "cached", "flow": "cached",
                             "features": "cached", "face_check": "cached"}
    assert {s: (p.stat().st_ino, p.stat().st_mtime_ns) for s, p in cache_files(doc2).items()} == stats1
    assert doc2["thresholds"]["source"] == str(thr) and doc2["thresholds"]["epoch"] == 200
    pd.testing.assert_frame_equal(csv1, csv2)
    assert "crop/flow/features cached/cached/cached" in capsys.readouterr().out.strip().splitlines()[-1]


def test_a_copied_checkpoint_carries_its_recipe_and_falls_back_to_default_thresholds(trained, spot30, tmp_path):
    _, doc1, stats1 = spot30
    bare = tmp_path / "elsewhere" / "model.pt"
    bare.parent.mkdir()
    shutil.copy(trained.runs / "final" / "model.pt", bare)
    out = tmp_path / "out"
    assert spot(trained.mp4, "--model", bare, "--out", out) == 0
    _, doc = read_out(out / VIDEO)
    assert doc["model"]["recipe"] == "checkpoint params"
    # the recorded recipe gives the very same stage digests: nothing recomputed
    assert doc["steps"]["features"] == "cached" and doc["steps"]["crop"] == "cached"
    assert {s: (p.stat().st_ino, p.stat().st_mtime_ns) for s, p in cache_files(doc).items()} == stats1
    assert doc["thresholds"]["source"].startswith("params.yaml spot.thresholds")

    # a checkpoint without the recipe (older runs) needs --dataset
    blob = torch.load(bare, map_location="cpu", weights_only=True)
    del blob["params"]["pipeline"]
    torch.save(blob, bare)
    assert spot(trained.mp4, "--model", bare, "--out", out) == 4          # no recipe recoverable
    assert spot(trained.mp4, "--model", bare, "--out", out, "--dataset", DS) == 0
    _, doc = read_out(out / VIDEO)
    assert doc["model"]["recipe"] == f"params.yaml + preset {DS}"
    assert doc["steps"]["features"] == "cached"


def test_200fps_frame_folder_maps_to_its_own_frame_numbers_and_the_same_seconds(trained, spot30, tmp_path):
    csv30, doc30, _ = spot30
    frames = decode_all(trained.mp4)                       # 240 frames at 30 fps
    n200 = 1600                                            # kept: floor(j * 20 / 3) for j = 0..239
    folder = tmp_path / "clip200"
    folder.mkdir()
    written: dict[int, Path] = {}
    for i in range(n200):                                  # frame i shows the 30-fps frame ceil(3i / 20)
        k = min(math.ceil(i * 3 / 20), len(frames) - 1)
        dst = folder / f"img_{i + 1:05d}.png"              # 1-based numbers, like CAS(ME)^2 / SAMM-LV folders
        if k in written:
            os.link(written[k], dst)
        else:
            cv2.imwrite(str(dst), cv2.cvtColor(frames[k], cv2.COLOR_RGB2BGR))
            written[k] = dst
    out = tmp_path / "out"
    assert spot(folder, "--model", trained.runs, "--out", out, "--fps", 200, "--threshold-macro", THRESHOLD,
                "--threshold-micro", THRESHOLD) == 0
    csv, doc = read_out(out / "clip200")
    assert doc["fps"] == 200 and doc["first_frame"] == 1 and doc["last_frame"] == n200 and doc["model_frames"] == 240
    with h5py.File(cache_files(doc)["features"]) as a, h5py.File(cache_files(doc30)["features"]) as b:
        assert np.array_equal(a["rgb"][()], b["rgb"][()]) and np.array_equal(a["flow"][()], b["flow"][()])
    assert len(csv) == len(csv30) > 0
    p, q = csv30.onset.to_numpy(), csv30.offset.to_numpy()  # 30-fps positions (the 30-fps file's own numbers)
    assert list(csv.onset) == [int(j * 20 // 3) + 1 for j in p]            # first 200-fps frame of the kept frame
    assert list(csv.offset) == [min(int((j + 1) * 20 // 3), n200) for j in q]  # last frame before the next kept
    assert np.allclose(csv.onset_s, (csv.onset - 1) / 200) and np.allclose(csv.offset_s, csv.offset / 200)
    assert np.abs(csv.onset_s.to_numpy() - csv30.onset_s.to_numpy()).max() < 1 / 200 + 1e-6
    assert np.abs(csv.offset_s.to_numpy() - csv30.offset_s.to_numpy()).max() < 1 / 200 + 1e-6
    assert np.allclose(csv.score, csv30.score) and list(csv.type) == list(csv30.type)


def test_a_face_lost_mid_video_is_reported_and_the_rest_is_spotted(trained, tmp_path):
    frames = decode_all(trained.mp4)
    lost = slice(90, 150)                                  # 2 s without a face (the person left the picture)
    frames[lost] = 128
    video = write_mp4(tmp_path / "lost.mp4", frames)
    out = tmp_path / "out"
    assert spot(video, "--model", trained.runs, "--out", out, "--threshold-macro", THRESHOLD,
                "--threshold-micro", THRESHOLD, "--annotate") == 0
    csv, doc = read_out(out / "lost")
    spans = doc["lost_face_spans"]
    assert len(spans) == 1
    every = doc["face_check"]["every_frames"]              # the span is known to one check step
    assert lost.start - every < spans[0]["onset"] <= lost.start
    assert lost.stop - 1 <= spans[0]["offset"] < lost.stop + every
    assert not ((csv.onset <= spans[0]["offset"]) & (csv.offset >= spans[0]["onset"])).any()
    gt = trained.macro_gt()
    outside = gt[(gt.offset < spans[0]["onset"]) | (gt.onset > spans[0]["offset"])]
    assert len(outside) >= 1 and (matched(csv[csv.type == "macro"], outside) >= 0.5).any()
    assert any("face lost" in n for n in doc["notes"])
    annotated = out / "lost" / "annotated.mp4"
    drawn = decode_all(annotated)
    assert annotated.stat().st_size > 0 and len(drawn) == len(frames)
    # the label of an interval (top left) is white text on a dark box, readable whatever the picture there
    first = csv.iloc[0]
    (tw, th), base = cv2.getTextSize(f"{first.type} {first.score:.2f}", cv2.FONT_HERSHEY_SIMPLEX, 0.6, 2)
    label = drawn[int(first.apex), 24 - th:24 + base, 10 + th + 6:10 + th + 6 + tw].reshape(-1, 3).astype(int)
    white, dark = (label.min(1) > 180).mean(), (label.max(1) < 70).mean()
    assert white > 0.1 and dark > 0.4 and white + dark > 0.8, (white, dark)


def test_short_videos_and_frame_rates_near_and_below_the_models(trained, tmp_path, capsys):
    frames = decode_all(trained.mp4)
    out = tmp_path / "out"
    # 40 frames (< one 64-frame window) at 29.97 fps: one padded window, used frame for frame for the 30-fps model
    short = write_mp4(tmp_path / "short.mp4", frames[:40], fps=30000 / 1001)
    assert spot(short, "--model", trained.runs, "--out", out) == 0
    _, doc = read_out(out / "short")
    assert doc["model_frames"] == 40 and abs(doc["fps"] - 29.97) < 0.01
    assert any("shorter than one model window" in n for n in doc["notes"])
    assert any("frame for frame" in n for n in doc["notes"])
    assert spot(write_mp4(tmp_path / "tiny.mp4", frames[:6]), "--model", trained.runs, "--out", out) == 2
    assert "too short" in capsys.readouterr().err and not (out / "tiny" / "intervals.csv").exists()
    slow = write_mp4(tmp_path / "slow.mp4", frames[:40], fps=25)
    assert spot(slow, "--model", trained.runs, "--out", out) == 2
    assert "below the model's 30 fps" in capsys.readouterr().err
    # several inputs: each is tried, the exit code is the first failure's, the good one is written
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    again = tmp_path / "again"
    assert spot(short, bad, "--model", trained.runs, "--out", again) == 2
    assert (again / "short" / "intervals.csv").is_file()
    assert capsys.readouterr().out.startswith("m2es spot: 1 of 2 input(s) spotted")


def test_no_face_exits_3(trained, tmp_path, capsys):
    rng = np.random.default_rng(0)
    noise = np.stack([cv2.GaussianBlur(f, (0, 0), 3) for f in rng.integers(0, 255, (30, 168, 224, 3), np.uint8)])
    code = spot(write_mp4(tmp_path / "wall.mp4", noise), "--model", trained.runs, "--out", tmp_path / "out")
    assert code == 3
    assert "no face found" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_unreadable_or_truncated_video_exits_2_naming_the_file(trained, tmp_path, capsys, content):
    data = trained.mp4.read_bytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 500 if content == "garbage" else data[: len(data) * 6 // 10])
    assert spot(bad, "--model", trained.runs, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "re-encode" in err


def test_usage_errors_exit_2(trained, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "img_1.png"), np.zeros((8, 8, 3), np.uint8))
    assert spot(folder, "--model", trained.runs) == 2                       # a frame folder needs --fps
    assert "--fps" in capsys.readouterr().err
    assert spot(tmp_path / "missing.mp4", "--model", trained.runs) == 2
    assert spot(trained.mp4, "--model", tmp_path / "no_run") == 2
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert spot(trained.mp4, "--model", trained.runs, "--out", blocker / "sub") == 2   # output not writable
    assert "--out" in capsys.readouterr().err
    if hasattr(os, "geteuid") and os.geteuid() != 0:                          # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert spot(trained.mp4, "--model", trained.runs, "--out", locked) == 2


def test_a_model_of_another_backbone_or_weights_is_refused_with_what_to_pass(trained, tmp_path, capsys):
    blob = torch.load(trained.runs / "final" / "model.pt", weights_only=True)
    other = copy.deepcopy(blob)
    r50 = "/models/I3D_8x8_R50.pyth"
    other["provenance"].update(backbone="i3d_r50", weights_rgb="ab" * 32, weights_flow="cd" * 32,
                               weights_rgb_path=r50, weights_flow_path=r50)
    path = tmp_path / "r50" / "final" / "model.pt"
    path.parent.mkdir(parents=True)
    torch.save(other, path)
    assert spot(trained.mp4, "--model", path, "--dataset", DS, "--out", tmp_path / "out") == 4
    err = capsys.readouterr().err
    assert "i3d_r50" in err and "--weights-rgb" in err and "ab" * 32 in err
    # the right model with a weights file it was not trained on
    wrong = tmp_path / "rgb.pt"
    wrong.write_bytes(b"not the weights")
    assert spot(trained.mp4, "--model", trained.runs, "--weights-rgb", wrong, "--out", tmp_path / "out") == 4
    assert "random-init" in capsys.readouterr().err
    not_a_model = tmp_path / "junk" / "model.pt"
    not_a_model.parent.mkdir()
    not_a_model.write_text("hello")
    assert spot(trained.mp4, "--model", not_a_model, "--out", tmp_path / "out") == 4


def test_a_truncated_frame_is_repeated_when_the_params_file_says_so(trained, tmp_path, capsys):
    """The error for a truncated JPEG suggests ``crop.on_bad_frame: repeat``; given through ``--params``
    it is used (the model's recipe decides the pixels, the user how unreadable frames are treated)."""
    frames = decode_all(trained.mp4)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"img_{i + 1:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    bad = folder / "img_00100.jpg"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 3])
    out = tmp_path / "out"
    assert spot(folder, "--model", trained.runs, "--out", out, "--fps", 30) == 2
    err = capsys.readouterr().err
    assert "img_00100.jpg" in err and "on_bad_frame: repeat" in err
    # named as the user knows it: the folder's file and frame number, not the cache's link ("video video")
    assert f"frame 100: {bad}: truncated JPEG" in err
    assert "video video" not in err and "/raw/video" not in err
    assert not out.exists()                       # the failed input's output folder is not left behind
    params = tmp_path / "repeat.yaml"
    params.write_text(yaml.safe_dump({"crop": {"on_bad_frame": "repeat"}}))
    assert spot(folder, "--model", trained.runs, "--out", out, "--fps", 30, "--params", params) == 0
    _, doc = read_out(out / "frames")
    with h5py.File(cache_files(doc)["faces"]) as f:
        assert list(f.attrs["repeated_frames"]) == [99]          # 0-based position of img_00100.jpg


def test_ground_truth_f1_is_printed_per_input_and_over_all(trained, spot30, tmp_path, capsys):
    _, doc30, _ = spot30
    copy_ = tmp_path / "copy.mp4"             # same content (cached), another name: no ground truth rows
    shutil.copy(trained.mp4, copy_)
    out = tmp_path / "out"
    assert spot(trained.mp4, copy_, "--model", trained.runs, "--out", out, "--threshold-macro", THRESHOLD,
                "--threshold-micro", THRESHOLD, "--ground-truth", trained.raw / "ground_truth.csv") == 0
    printed = capsys.readouterr().out
    mine = doc30["ground_truth"]
    f1 = ", ".join(f"{t} {mine[t]['f1']:.2f}" for t in ("macro", "micro", "overall"))
    assert f"{VIDEO}: " in printed and f"vs ground truth F1 {f1} [" in printed
    _, other = read_out(out / "copy")
    total = {t: (mine[t]["tp"] + other["ground_truth"][t]["tp"], mine[t]["n_pred"] + other["ground_truth"][t]["n_pred"],
                 mine[t]["n_gt"] + other["ground_truth"][t]["n_gt"]) for t in ("macro", "micro", "overall")}
    both = ", ".join(f"{t} {2 * tp / (p + g) if p + g else 0:.2f}" for t, (tp, p, g) in total.items())
    assert f"all 2 inputs vs ground truth: F1 {both}" in printed


def test_ctrl_c_prints_one_line_exits_130_and_leaves_no_half_written_output(trained, tmp_path):
    """A real ``m2es spot`` process gets SIGINT (to its process group, as Ctrl-C in a terminal) once it is
    cropping a new input."""
    # new content (no cache), six times as long, so that flow and features still have seconds of work
    # left when the signal comes, even when a busy machine lets this reader fall behind the process
    video = write_mp4(tmp_path / "fresh.mp4", np.concatenate([decode_all(trained.mp4)[::-1]] * 6))
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "spot", str(video), "--model", str(trained.runs),
                             "--out", str(out), "--cache-dir", str(cache)], cwd=trained.root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            # as in a terminal: a shell's background job (CI started with `&`) inherits SIGINT
                            # ignored, and Python then installs no KeyboardInterrupt handler
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = b""
    try:
        while b"crop]" not in seen:             # tqdm's postfix: the crop stage has started
            chunk = proc.stderr.read1(4096)
            assert chunk, f"spot ended before cropping: {seen.decode(errors='replace')}"
            seen += chunk
        os.killpg(proc.pid, signal.SIGINT)
        _, rest = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = (seen + rest).decode(errors="replace")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith("m2es spot: interrupted;") and sum("interrupted" in x for x in lines) == 1
    assert len(lines[-1]) < 200
    assert not out.exists()                      # nothing written for the input, no empty folder
