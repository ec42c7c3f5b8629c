"""Per-dataset params (params.yaml ``per_dataset``): precedence, what each stage logs, refusals (#25)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml

from pipeline.core.params import SHIPPED_PARAMS, load_dataset, stage_sources
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
GENERIC = dict(layout="generic", root="data/raw/d", annotation_file="annotations.csv", source_fps=30,
               target_fps=30, model_preset="iaenet_casme2")


def test_a_preset_with_overrides_is_refused_naming_the_file_and_the_new_place(tmp_path: Path) -> None:
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({**GENERIC, "overrides": {"crop": {"size": 96}}}))
    with pytest.raises(ConfigError, match=r"old\.yaml: 'overrides:' \(crop\).*per_dataset: old: <stage>"):
        load_dataset("old", tmp_path)


def test_a_shadowed_params_value_is_a_warning_naming_both_keys_and_values(workspace, capsys) -> None:
    from pipeline.crop import main

    workspace.preset("d", per_dataset={"crop": {"size": 112}}, **GENERIC)
    workspace.set_params("crop", size=256)
    assert main(["--dataset", "d"]) == 2   # no resample tables: fails after the params are logged
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if line.startswith("WARNING")] == [
        "WARNING m2es: crop.size=256 in params.yaml `crop` is shadowed for d by per_dataset.d.crop.size=112 "
        "(set it there instead, or delete it there to use `crop`'s)"]
    info = [line for line in lines if line.startswith("INFO m2es: crop@d params:")]
    assert len(info) == 1 and info[0].endswith("from per_dataset.d.crop: size=112")


def test_an_equal_per_dataset_value_and_an_empty_entry_are_not_warned() -> None:
    params = {"crop": {"size": 112, "pad": "constant"}, "per_dataset": {"d": {"crop": {"size": 112}}, "e": {}}}
    info, warning = stage_sources(params, "crop", {"name": "d"})
    assert warning is None and info == "crop@d params: 1 from params.yaml `crop`; from per_dataset.d.crop: size=112"
    info, warning = stage_sources(params, "crop", {"name": "e"})
    assert warning is None and info == "crop@e params: 2 from params.yaml `crop` (nothing in per_dataset.e.crop)"


def test_several_shadowed_values_are_one_warning_line_naming_each() -> None:
    params = {"flow": {"nscales": 5, "warps": 5, "tau": 0.25},
              "per_dataset": {"d": {"flow": {"nscales": 3, "warps": 2, "tau": 0.25}}}}
    info, warning = stage_sources(params, "flow", {"name": "d"})
    assert warning == ("params.yaml `flow` is shadowed for d by per_dataset.d.flow: flow.nscales=5 -> 3, "
                       "flow.warps=5 -> 2 (set them there instead, or delete them there to use `flow`'s)")


def test_train_epochs_precedence_and_where_each_recipe_value_came_from(workspace, caplog) -> None:
    from pipeline.learning.recipe import model_recipe

    workspace.preset("d", per_dataset={"train": {"epochs": 8}}, **GENERIC)
    workspace.set_params("train", epochs=30, lr=0.001)
    info, warning = stage_sources(workspace.params, "train", {"name": "d"})
    assert warning.startswith("train.epochs=30 in params.yaml `train` is shadowed for d by "
                              "per_dataset.d.train.epochs=8")
    with caplog.at_level(logging.INFO):
        preset, cfg = model_recipe(workspace.context("train", "d"))
    assert cfg.epochs == 8 and cfg.lr == 0.001 and preset["train"]["epochs"] == 8
    line = next(r.getMessage() for r in caplog.records if "recipe:" in r.getMessage())
    assert line.startswith("train@d recipe: from model preset iaenet_casme2: weight_decay=")
    assert "epochs=8 (per_dataset.d.train)" in line and "lr=0.001 (params.yaml train)" in line
    assert "warmup_epochs=" in line.split(";")[0]


@pytest.mark.parametrize("key, value, match", [
    ("epochs", 0, r"train\.epochs must be at least 1, got 0"),
    ("batch_size", 0, r"train\.batch_size must be at least 1"),
    ("lr", -0.1, r"train\.lr must be at least 0"),
    ("warmup_epochs", -1, r"train\.warmup_epochs must be at least 0"),
    ("predict_from_epoch", 0, r"train\.predict_from_epoch must be at least 1"),
])
def test_invalid_train_numbers_fail_before_any_input_is_read(workspace, capsys, key, value, match) -> None:
    from pipeline.train import main

    workspace.preset("d", **GENERIC)
    workspace.set_params("train", **{key: value})
    assert main(["--dataset", "d"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and re.search(match, errors[0]), errors
    assert not (workspace.root / "data").exists()


@pytest.mark.parametrize("section, layer, match", [
    (0, 8, r"params\.yaml: train\.epochs must be at least 1, got 0"),          # shadowed, still refused
    (30, 0, r"params\.yaml: per_dataset\.d\.train\.epochs must be at least 1, got 0"),
])
def test_train_epochs_zero_is_refused_where_it_is_written(workspace, capsys, section, layer, match) -> None:
    from pipeline.train import main

    workspace.preset("d", per_dataset={"train": {"epochs": layer}}, **GENERIC)
    workspace.set_params("train", epochs=section)
    assert main(["--dataset", "d"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and re.search(match, errors[0]), errors
    assert not (workspace.root / "data").exists()


def test_a_listed_dataset_without_its_per_dataset_key_is_refused_naming_it(workspace) -> None:
    workspace.preset("d", **GENERIC)
    workspace.params["datasets"] = ["d"]
    workspace.params["per_dataset"]["d"] = {"ingest": {}}
    workspace.save_params()
    with pytest.raises(ConfigError, match=r"per_dataset\.d\.crop is missing \('d' is listed in datasets"):
        workspace.context("crop", "d")
    workspace.context("ingest", "d")


def test_a_misspelt_stage_under_per_dataset_is_refused(workspace) -> None:
    workspace.preset("d", per_dataset={"crops": {"size": 96}}, **GENERIC)
    with pytest.raises(ConfigError, match=r"per_dataset\.d\.crops \(did you mean crop\?\)"):
        workspace.context("crop", "d").section()


def test_repository_per_dataset_covers_every_preset_and_every_tracked_stage() -> None:
    """Every preset has an entry; every stage dvc.yaml runs per dataset tracks its per_dataset key, and
    every listed dataset has that key (DVC refuses a tracked key that is missing)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    presets = {p.stem for p in (REPO / "configs" / "datasets").glob("*.yaml")}
    assert set(params["per_dataset"]) == presets
    per_dataset_stages = {stage: body for stage, body in stages.items() if "foreach" in body}
    assert set(stages) - set(per_dataset_stages) == {"report"}   # the one stage over all datasets at once
    for stage, body in per_dataset_stages.items():
        assert f"per_dataset.${{item}}.{stage}" in body["do"]["params"], stage
        listed = params["synth_datasets" if stage == "synth" else "datasets"]
        assert all(stage in params["per_dataset"][name] for name in listed), stage
    for name in presets:
        assert "overrides" not in yaml.safe_load((REPO / "configs" / "datasets" / f"{name}.yaml").read_text())


def test_a_shadowed_value_left_as_shipped_is_stated_not_warned() -> None:
    """The shipped params (configs/params.reference.yaml) tell a preset's intended per-dataset value
    (crop.size 224 in `crop`, 112 for the synthetic data: stated in the INFO line) from a user's edit
    of the section (crop.size 256: warned)."""
    shipped = {"crop": {"size": 224, "pad": "constant"}}
    per = {"per_dataset": {"d": {"crop": {"size": 112}}}}
    info, warning = stage_sources({"crop": {"size": 224, "pad": "constant"}, **per}, "crop", {"name": "d"}, shipped)
    assert warning is None and info.endswith("from per_dataset.d.crop: size=112")
    _, warning = stage_sources({"crop": {"size": 256, "pad": "constant"}, **per}, "crop", {"name": "d"}, shipped)
    assert warning and warning.startswith("crop.size=256 in params.yaml `crop` is shadowed for d")


def test_the_default_run_warns_of_nothing_it_ships() -> None:
    """With the repository's own params.yaml, no stage of any listed dataset warns of a shadowed value."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    shipped = yaml.safe_load((REPO / SHIPPED_PARAMS).read_text())
    for name in params["datasets"]:
        for stage in params["per_dataset"][name]:
            assert stage_sources(params, stage, {"name": name}, shipped)[1] is None, (name, stage)
