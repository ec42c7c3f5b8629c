"""``m2es spot``'s small pieces without a model: its params section, exit codes, interval arithmetic,
the user's ground truth, and bad params files refused before anything runs."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.colors import to_hex

from models.errors import ModelConfigError
from pipeline.errors import ConfigError, InputError
from pipeline.spot.cli import main
from pipeline.spot.errors import (EXIT_BUG, EXIT_INPUT, EXIT_MODEL, EXIT_NO_FACE, ModelMismatch, NoFaceError,
                                  SpotError, exit_code_of)
from pipeline.spot.ground_truth import hits, read_user_ground_truth
from pipeline.spot.inputs import SpotInput
from pipeline.spot.intervals import overlaps, passes
from pipeline.spot.messages import UserTerms
from pipeline.spot.outputs import _BGR, HIT_COLOR, MISS_COLOR, TYPE_COLORS, draw_label, timeline_figure
from pipeline.spot.params import SPOT_DEFAULTS, SpotParams

REPO = Path(__file__).resolve().parents[2]


def test_the_repository_spot_section_is_valid_and_matches_the_defaults():
    section = yaml.safe_load((REPO / "params.yaml").read_text())["spot"]
    assert SpotParams.from_params(section).as_params() == SPOT_DEFAULTS
    assert SpotParams.from_params(None) == SpotParams()


def test_thresholds_are_a_nested_mapping_merged_over_the_default():
    p = SpotParams.from_params({"thresholds": {"micro": "0.25"}})
    assert p.thresholds == {"macro": 0.5, "micro": 0.25}
    with pytest.raises(ConfigError, match=r"spot\.thresholds\.macr \(did you mean macro\?\)"):
        SpotParams.from_params({"thresholds": {"macr": 0.3}})
    with pytest.raises(ConfigError, match="expected a mapping"):
        SpotParams.from_params({"thresholds": 0.3})


@pytest.mark.parametrize("section, message", [
    ({"cach_dir": "x"}, r"spot\.cach_dir \(did you mean cache_dir\?\)"),
    ({"face_check_every_s": 0}, "face_check_every_s must be > 0"),
    ({"face_check_size": 31}, "face_check_size must be at least 32"),
    ({"fps_tolerance": 0.5}, r"fps_tolerance must be in \[0, 0.5\)"),
    ({"batch_size": 2.5}, "batch_size = 2.5 is invalid"),
    ({"annotate_codec": "mp4"}, "FourCC"),
])
def test_bad_spot_sections_are_refused_naming_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        SpotParams.from_params(section)


@pytest.mark.parametrize("params, message", [
    ({"spot": {"out_dri": "x"}}, r"spot\.out_dri \(did you mean out_dir\?\)"),
    ({"ingest": {"decod_sample": 1}}, r"ingest\.decod_sample \(did you mean decode_sample\?\)"),
])
def test_a_params_file_with_an_unknown_key_exits_2_before_anything_runs(tmp_path, capsys, params, message):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(params))
    assert main([str(tmp_path / "missing.mp4"), "--model", str(tmp_path / "no_run"), "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and re.search(message, err)


def test_exit_codes():
    assert [exit_code_of(e) for e in (SpotError("x"), NoFaceError("x"), ModelMismatch("x"), InputError("x"),
                                      ModelConfigError("x"), RuntimeError("x"))] == [EXIT_INPUT, EXIT_NO_FACE,
                                                                                     EXIT_MODEL, EXIT_INPUT,
                                                                                     EXIT_INPUT, EXIT_BUG]
    assert main(["--help"]) == 0


def test_overlaps_and_passes():
    on, off = np.array([0, 10, 20]), np.array([5, 15, 25])
    assert overlaps(on, off, [(5, 9), (26, 30)]).tolist() == [True, False, False]
    pred = pd.DataFrame({"type": ["macro", "micro"], "score": [0.5, 0.2]})
    assert passes(pred, {"macro": 0.5, "micro": 0.3}).tolist() == [True, False]


def test_user_ground_truth_keeps_this_inputs_rows(tmp_path):
    csv = tmp_path / "gt.csv"
    csv.write_text("video,type,onset,offset\nclip,Macro-expression,1,9\nother,micro,2,3\nclip,blink,4,5\n")
    inp = SpotInput(tmp_path / "clip.mp4", "file", "clip", 30.0)
    gt = read_user_ground_truth(csv, inp)
    assert gt.to_dict("records") == [{"type": "macro", "onset": 1, "offset": 9}]
    csv.write_text("type,onset\nmacro,1\n")
    with pytest.raises(SpotError, match="missing column"):
        read_user_ground_truth(csv, inp)


def test_failed_inputs_leave_no_folders_and_no_native_decoder_lines(tmp_path, capfd, monkeypatch):
    """Inputs refused before any work (missing, empty folder, garbage "mp4"): the output and cache folders
    this run made are removed again, and FFmpeg's/decord's own lines about the garbage file stay off fd 2
    while spot's message names the file."""
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "run" / "model.pt"
    model.parent.mkdir()
    model.write_bytes(b"never loaded: every input fails before the model is needed")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(bytes(range(256)) * 200)
    (tmp_path / "empty").mkdir()
    out, cache = tmp_path / "results" / "spot", tmp_path / "cache"
    code = main([str(tmp_path / "missing.mp4"), str(tmp_path / "empty"), str(garbage), "--model", str(model),
                 "--out", str(out), "--cache-dir", str(cache), "--fps", "30"])
    assert code == EXIT_INPUT
    err = capfd.readouterr().err
    assert f"{garbage}: cannot be read as a video" in err and "re-encode" in err
    assert "moov atom" not in err and ".cc:" not in err and "[mov," not in err      # native decoder lines
    assert f"{tmp_path / 'empty'}: no numbered frame images" in err
    assert not (tmp_path / "results").exists() and not cache.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "garbage.mp4", "run"]


def test_messages_about_the_cache_are_put_in_the_users_terms(tmp_path):
    folder = tmp_path / "my clip"
    inp = SpotInput(folder, "frames", "my_clip", 30.0, key="abc")
    link = tmp_path / "data" / "spot" / "abc" / "raw" / "video"
    terms = UserTerms(inp, link, numbers=np.array([5, 7, 9, 11]))
    msg = (f"video video, frame 2: {link}/img_9.jpg: truncated JPEG (no end-of-image marker). Restore it from the "
           "dataset.")
    assert terms(msg) == f"frame 9: {folder}/img_9.jpg: truncated JPEG (no end-of-image marker). Restore it from the " \
                        "dataset."
    assert terms("video video, frame 40: x") == "frame at position 40: x"      # beyond the known positions
    decord_text = (f"video video: {link}.mp4 cannot be decoded (DECORDError: [17:47:05] /github/workspace/src/video/"
                   "ffmpeg/threaded_decoder.cc:292: [17:47:05] /src/threaded_decoder.cc:218: Check failed: x)")
    video = SpotInput(tmp_path / "in.mp4", "file", "in", 30.0, key="abc")
    assert UserTerms(video, Path(f"{link}.mp4"))(decord_text) == "cannot be decoded (DECORDError: Check failed: x)"


def _timeline_case():
    """A 300-frame 30-fps input, three kept candidates (a macro hit, a macro miss, a micro hit), one faint one."""
    inp = SpotInput(Path("clip.mp4"), "file", "clip", 30.0)
    cand = pd.DataFrame({"type": ["macro", "macro", "micro", "micro"], "onset": [10, 100, 200, 250],
                         "offset": [40, 130, 215, 260], "score": [0.9, 0.8, 0.7, 0.2]})
    frames = pd.DataFrame({"video": "video", "frame": np.arange(300), "source_frame": np.arange(300), "path": ""})
    spans = pd.DataFrame({c: pd.Series(dtype=float) for c in ("onset", "offset", "onset_s", "offset_s")})
    gt = pd.DataFrame({"type": ["macro", "micro"], "onset": [12, 198], "offset": [42, 214]})
    return inp, cand, frames, spans, gt


def _r(*values):
    return tuple(round(float(v), 3) for v in values)


def _segments(fig, label):
    """{axes index: [(x0, x1, y)]} and colours of the line collections labelled ``label``."""
    found = {}
    for i, ax in enumerate(fig.axes):
        for coll in ax.collections:
            if coll.get_label() == label and len(coll.get_segments()):
                segs = [_r(s[0][0], s[1][0], s[0][1]) for s in coll.get_segments()]
                found[i] = (segs, {to_hex(c) for c in coll.get_colors()})
    return found


def test_timeline_with_ground_truth_colours_hits_and_misses():
    inp, cand, frames, spans, gt = _timeline_case()
    thresholds = {"macro": 0.5, "micro": 0.5}
    lost = np.zeros(len(cand), dtype=bool)
    kept = cand[passes(cand, thresholds)].reset_index(drop=True)   # frame numbers = positions here
    flags = hits(kept, gt)
    assert flags.tolist() == [True, False, True]
    fig = timeline_figure(inp, cand, lost, thresholds, spans, frames, 299, 0, gt, "t", flags)
    green, red = to_hex(HIT_COLOR), to_hex(MISS_COLOR)
    assert _segments(fig, "spotted, matches ground truth") == {0: ([_r(10 / 30, 41 / 30, 0.9)], {green}),
                                                               1: ([_r(200 / 30, 216 / 30, 0.7)], {green})}
    assert _segments(fig, "spotted, no ground truth matched") == {0: ([_r(100 / 30, 131 / 30, 0.8)], {red})}
    assert _segments(fig, "spotted") == {}
    gt_spans = [p for ax in fig.axes for p in ax.patches if p.get_label() == "ground truth"]
    assert len(gt_spans) == 2 and all(to_hex(p.get_facecolor()) not in (green, red) for p in gt_spans)
    # without ground truth: the type colours
    plain = timeline_figure(inp, cand, lost, thresholds, spans, frames, 299, 0, None, "t")
    spotted = _segments(plain, "spotted")
    assert spotted[0][1] == {to_hex(TYPE_COLORS["macro"])} and spotted[1][1] == {to_hex(TYPE_COLORS["micro"])}


def test_annotation_labels_are_white_on_a_dark_box_whatever_the_picture():
    for background in (_BGR["macro"], _BGR["micro"], (255, 255, 255)):
        img = np.full((120, 320, 3), background, np.uint8)
        draw_label(img, "macro 0.91", (10, 30), 0.6, 2, _BGR["macro"])
        (tw, th), base = cv2.getTextSize("macro 0.91", cv2.FONT_HERSHEY_SIMPLEX, 0.6, 2)
        box = img[30 - th:30 + base, 10 + th + 6:10 + th + 6 + tw].reshape(-1, 3).astype(int)
        white = (box.min(1) > 200).mean()
        dark = (box.max(1) < 60).mean()
        assert white > 0.1 and dark > 0.4 and white + dark > 0.8, (background, white, dark)
