"""Params loading, per-dataset params, stage context and the stage entry's error handling."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.core.params import deep_merge, digest, load_dataset, stage_params
from pipeline.core.stage import EXIT_USER_ERROR, make_context, stage_main
from pipeline.errors import ConfigError, InputError


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_deep_merge_overrides_nested_without_mutating() -> None:
    base = {"a": 1, "b": {"c": 2, "d": 3}}
    out = deep_merge(base, {"b": {"c": 5}, "e": 6})
    assert out == {"a": 1, "b": {"c": 5, "d": 3}, "e": 6}
    assert base == {"a": 1, "b": {"c": 2, "d": 3}}


def test_stage_params_applies_per_dataset_params() -> None:
    params = {"flow": {"impl": "auto", "tvl1": {"warps": 5, "nscales": 5}},
              "per_dataset": {"x": {"flow": {"tvl1": {"warps": 2}}}}}
    preset = {"name": "x"}
    assert stage_params(params, "flow", preset) == {"impl": "auto", "tvl1": {"warps": 2, "nscales": 5}}
    assert stage_params(params, "flow") == params["flow"]
    with pytest.raises(ConfigError, match="missing section 'crop'"):
        stage_params(params, "crop", preset)


def test_digest_is_order_independent_and_sensitive() -> None:
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})


def test_load_dataset_names_known_presets(tmp_path: Path) -> None:
    _write(tmp_path / "casme2.yaml", {"layout": "casme2", "root": "data/raw/casme2"})
    assert load_dataset("casme2", tmp_path)["name"] == "casme2"
    with pytest.raises(ConfigError, match=r"no preset for dataset 'nope'.*casme2"):
        load_dataset("nope", tmp_path)
    _write(tmp_path / "bad.yaml", {"layout": "casme2"})
    with pytest.raises(ConfigError, match="missing key 'root'"):
        load_dataset("bad", tmp_path)


def test_repository_presets_load() -> None:
    root = Path(__file__).resolve().parents[2]
    for preset in sorted((root / "configs" / "datasets").glob("*.yaml")):
        data = load_dataset(preset.stem, preset.parent)
        assert data["layout"] in {"casme2", "samm", "generic"}, preset


def test_stage_main_turns_user_errors_into_exit_code(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "params.yaml", {"parallel": {"backend": "sequential"}, "demo": {"k": 1},
                                      "per_dataset": {"d": {"demo": {"k": 2}}}})
    _write(tmp_path / "configs" / "datasets" / "d.yaml", {"layout": "generic", "root": "data/raw/d"})
    seen = {}

    def run(ctx) -> None:
        seen["k"] = ctx.section()["k"]
        seen["backend"] = ctx.parallel.backend
        raise InputError("data/raw/d/x.csv: broken. Fix it.")

    main = stage_main("demo", run)
    assert main(["--dataset", "d"]) == EXIT_USER_ERROR
    assert seen == {"k": 2, "backend": "sequential"}
    assert "demo@d: data/raw/d/x.csv: broken" in capsys.readouterr().err


def test_make_context_rejects_unknown_backend(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "params.yaml", {"parallel": {"backend": "mpi"}})
    _write(tmp_path / "configs" / "datasets" / "d.yaml", {"layout": "generic", "root": "r"})
    with pytest.raises(ConfigError, match=r"parallel\.backend (= )?'mpi' is not one of"):
        make_context("x", "d")


def test_cli_dispatches_and_rejects_unknown(capsys) -> None:
    from pipeline.cli import main

    assert main(["bogus"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    # every command listed with one line on what it does, read from its module's docstring
    assert "  overlap   Crop and flow at once" in out and "  synth     generate a synthetic dataset" in out
    assert "  baseline  a non-learned spotter" in out and "``" not in out
    with pytest.raises(SystemExit) as exc:  # argparse of pipeline.overlap
        main(["overlap", "--help"])
    assert exc.value.code == 0 and "--dataset" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # a stage: its own name and what it does, not "m2es stage 'train'"
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and out.startswith("usage: m2es train")
    assert "IAENet, leave-one-subject-out" in out and "m2es stage" not in out


def test_a_synthetic_preset_without_its_data_says_run_synth_first(tmp_path, monkeypatch) -> None:
    from pipeline.errors import InputError
    from pipeline.layouts.common import dataset_root

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"run `dvc repro synth@toy` .*first") as exc:
        dataset_root({"name": "toy", "root": "data/raw/toy", "synthetic": True})
    assert "ln -s" not in str(exc.value)
    with pytest.raises(InputError, match="ln -s"):       # a real dataset: link or copy it
        dataset_root({"name": "casme2", "root": "data/raw/casme2"})


def test_to_source_frames_maps_onsets_and_offsets() -> None:
    import pandas as pd

    from pipeline.io.tables import to_source_frames

    kept = [1, 7, 14, 21, 27, 34]  # 1-based numbers kept by the 200 -> 30 fps rule
    frames = pd.DataFrame({"video": "v", "frame": range(6), "source_frame": kept, "path": ""})
    assert to_source_frames(frames, "v", [0, 2, 5, 9]) == [1, 14, 34, 34]
    assert to_source_frames(frames, "v", [0, 2, 5], end=True) == [6, 20, 34 + 7 - 1]
    with pytest.raises(InputError, match="no frames for video 'w'"):
        to_source_frames(frames, "w", [0])


def test_repository_params_and_presets_pass_every_declaration() -> None:
    """params.yaml with every preset's per_dataset entry is valid for the sections declared with Section."""
    from pipeline.layouts.params import IngestParams
    from pipeline.resample import ResampleParams
    from pipeline.scoring.params import EvaluateParams
    from pipeline.synthetic.params import SynthParams

    root = Path(__file__).resolve().parents[2]
    params = yaml.safe_load((root / "params.yaml").read_text())
    presets = [None] + [load_dataset(p.stem, p.parent) for p in sorted((root / "configs" / "datasets").glob("*.yaml"))]
    for preset in presets:
        for cls in (SynthParams, IngestParams, ResampleParams, EvaluateParams):
            cls.from_params(stage_params(params, cls.SECTION, preset))
    # the code's defaults are params.yaml's where both exist
    assert IngestParams.from_params({}) == IngestParams.from_params(params["ingest"])
    synth = {k: v for k, v in params["synth"].items() if k not in ("face", "expressions", "distractors")}
    assert SynthParams.from_params({}) == SynthParams.from_params(synth)


def test_a_stage_logs_how_long_it_took(tmp_path, monkeypatch, capsys) -> None:
    import re

    from pipeline.core.stage import stage_main

    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "params.yaml", {"x": {}})
    _write(tmp_path / "configs" / "datasets" / "d.yaml", {"layout": "generic", "root": "r"})
    assert stage_main("x", lambda ctx: None)(["--dataset", "d"]) == 0
    assert re.search(r"x@d: done in \d+\.\d s", capsys.readouterr().err)
