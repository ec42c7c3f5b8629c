"""``m2es spot``'s small pieces without a model: its params section, exit codes, interval arithmetic,
the user's ground truth, and bad params files refused before anything runs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from models.errors import ModelConfigError
from pipeline.errors import ConfigError, InputError
from pipeline.spot.cli import main
from pipeline.spot.errors import (EXIT_BUG, EXIT_INPUT, EXIT_MODEL, EXIT_NO_FACE, ModelMismatch, NoFaceError,
                                  SpotError, exit_code_of)
from pipeline.spot.ground_truth import read_user_ground_truth
from pipeline.spot.inputs import SpotInput
from pipeline.spot.intervals import overlaps, passes
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
