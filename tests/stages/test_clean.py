"""``m2es clean``: removes what a stage wrote so that the stage really recomputes, and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.cli import main as m2es


def _outputs(root: Path) -> None:
    for stage in ("ingest", "resample", "runs", "evaluate"):
        (root / "data" / "ds" / stage).mkdir(parents=True)
        (root / "data" / "ds" / stage / "x.csv").write_text("x")
    for stage in ("faces", "flow", "features"):
        (root / "data" / "ds" / stage).mkdir(parents=True)
        for v in ("a", "b"):
            (root / "data" / "ds" / stage / f"{v}.h5").write_bytes(b"h5")
    (root / "data" / "ds" / "faces" / ".a.h5.1234abcd.partial").write_bytes(b"")
    (root / "metrics").mkdir()
    (root / "metrics" / "ds.json").write_text("{}")


def test_one_video_of_a_per_video_stage(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _outputs(tmp_path)
    assert m2es(["clean", "crop", "--dataset", "ds", "--video", "a"]) == 0
    assert sorted(os.listdir(tmp_path / "data" / "ds" / "faces")) == ["b.h5"]        # a and its partial gone
    assert (tmp_path / "data" / "ds" / "flow" / "a.h5").exists()                       # later stages untouched


def test_a_whole_stage_and_evaluate_with_its_metrics(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _outputs(tmp_path)
    assert m2es(["clean", "flow", "--dataset", "ds"]) == 0
    assert not (tmp_path / "data" / "ds" / "flow").exists() and (tmp_path / "data" / "ds" / "faces").exists()
    assert m2es(["clean", "evaluate", "--dataset", "ds"]) == 0
    assert not (tmp_path / "data" / "ds" / "evaluate").exists() and not (tmp_path / "metrics" / "ds.json").exists()
    assert (tmp_path / "data" / "ds" / "runs").exists()
    assert m2es(["clean", "train", "--dataset", "ds"]) == 0 and not (tmp_path / "data" / "ds" / "runs").exists()
    assert m2es(["clean", "train", "--dataset", "ds"]) == 0                          # nothing left: fine


def test_refusals_name_the_problem(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    _outputs(tmp_path)
    assert m2es(["clean", "train", "--dataset", "ds", "--video", "a"]) == 2
    assert "--video applies to crop, flow, features" in capsys.readouterr().err
    real = tmp_path / "elsewhere"
    real.mkdir()
    (real / "keep.h5").write_bytes(b"x")
    os.rename(tmp_path / "data" / "ds" / "features", tmp_path / "features_old")
    os.symlink(real, tmp_path / "data" / "ds" / "features")
    assert m2es(["clean", "features", "--dataset", "ds"]) == 2
    assert "is a link" in capsys.readouterr().err and (real / "keep.h5").exists()
    with pytest.raises(SystemExit):
        m2es(["clean", "synth", "--dataset", "ds"])                                   # not a stage clean handles
