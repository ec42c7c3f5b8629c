"""Stage `train` end to end on tiny random features (CPU), LR schedule, fold seeds, resume,
timing records, the ``train`` params section."""

from __future__ import annotations

import copy
import logging
import math
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from models.iaenet import load_checkpoint
from helpers.params import assert_section_refuses
from pipeline.errors import ConfigError, InputError
from pipeline.io.artifacts import PREDICTION_COLUMNS
from pipeline.learning.data import load_inputs, prepare
from pipeline.learning.params import TrainParams
from pipeline.learning.presets import load_model_preset
from pipeline.learning.recipe import fold_seed, lr_factor, model_recipe
from pipeline.io.jsonl import append_jsonl, read_jsonl
from pipeline.learning.timings import TIMING_KEYS

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:   # benchmarks/ (the train stage's cost model) is imported from the repository root
    sys.path.insert(0, str(REPO))

from benchmarks.train_cost import loso_window_passes, model_seconds, window_passes  # noqa: E402

VIDEOS = {  # video: (subject, feature steps)
    "a1": ("s1", 150), "a2": ("s1", 90), "b1": ("s2", 160), "c1": ("s3", 140), "c2": ("s3", 30),
}


def test_lr_schedule_is_the_published_one() -> None:
    assert lr_factor(0, 5, 30) == 0 and lr_factor(2, 5, 30) == pytest.approx(0.4)
    assert lr_factor(5, 5, 30) == pytest.approx(1.0)
    assert lr_factor(17.5, 5, 30) == pytest.approx(0.5)
    assert lr_factor(29, 5, 30) == pytest.approx(0.5 * (1 + math.cos(math.pi * 24 / 25)))
    assert lr_factor(0, 0, 10) == 1.0


def test_fold_seed_depends_on_subject_not_order() -> None:
    assert fold_seed(0, "s1") == fold_seed(0, "s1") != fold_seed(0, "s2")
    assert fold_seed(1, "s1") != fold_seed(0, "s1")


ROWS = [("a1", "s1", 40, 60, "macro"), ("a1", "s1", 150, 162, "micro"), ("a2", "s1", 20, 50, "macro"),
        ("b1", "s2", 100, 140, "macro"), ("c1", "s3", 30, 42, "micro"), ("c2", "s3", 10, 40, "macro"),
        ("gone", "s2", 10, 40, "macro")]


def _write_features(root, d: int = 8, seed: int = 0) -> None:
    """Random features with the annotated intervals marked (so that a few epochs learn something)."""
    rng = np.random.default_rng(seed)
    out = root / "data" / "tiny" / "features"
    out.mkdir(parents=True, exist_ok=True)
    for video, (_, n) in VIDEOS.items():
        rgb = rng.normal(0, 0.3, size=(n, d)).astype(np.float32)
        for v, _, on, off, kind in ROWS:
            if v == video:
                rgb[on // 2:off // 2 + 1, 0 if kind == "macro" else 1] += 2.0
        with h5py.File(out / f"{video}.h5", "w") as f:
            f["rgb"] = rgb
            f["flow"] = rng.normal(size=(n, d)).astype(np.float32)
            f.attrs.update({"backbone": "i3d", "weights_rgb": "random-init", "weights_flow": "random-init",
                            "stride": 2, "clip": 8, "m2es_digest": f"dig-{video}", "m2es_complete": True})


def _write_tables(root) -> None:
    res = root / "data" / "tiny" / "resample"
    res.mkdir(parents=True, exist_ok=True)
    ann = pd.DataFrame(ROWS, columns=["video", "subject", "onset", "offset", "type"])
    ann["apex"] = (ann.onset + ann.offset) // 2
    for c in ("onset", "apex", "offset"):
        ann[f"source_{c}"] = ann[c]
    ann.to_csv(res / "annotations.csv", index=False)
    vids = pd.DataFrame({"video": list(VIDEOS) + ["gone"], "subject": [s for s, _ in VIDEOS.values()] + ["s2"]})
    for c, v in (("fps", 30), ("n_frames", 400), ("source", "x"), ("kind", "frames"), ("color", 1)):
        vids[c] = v
    vids.to_csv(res / "videos.csv", index=False)


def _setup(workspace) -> None:
    preset = copy.deepcopy(load_model_preset("iaenet_casme2"))
    preset.update(name="iaenet_tiny")
    preset["model"]["base"]["dim"] = 16
    preset["model"]["encoder"]["dims"] = [16, 16, 32]
    preset["model"]["heads"]["dim"] = 16
    (workspace.root / "configs").mkdir(exist_ok=True)
    (workspace.root / "configs" / "iaenet_tiny.yaml").write_text(yaml.safe_dump(preset))
    workspace.preset("tiny", layout="generic", root="data/raw/tiny", model_preset="iaenet_tiny")
    workspace.set_params("train", epochs=12, warmup_epochs=2, batch_size=4, lr=3e-3, device="cpu", seed=3)
    _write_features(workspace.root)
    _write_tables(workspace.root)


def test_window_passes_count_the_windows_each_model_trains_and_predicts(workspace, one_thread) -> None:
    """benchmarks/ extrapolates the train stage by these counts: they must be the stage's own."""
    _setup(workspace)
    workspace.set_params("train", epochs=3, warmup_epochs=1)
    workspace.run("train", "tiny")
    ctx = workspace.context("train", "tiny")
    preset, cfg = model_recipe(ctx)
    assert (cfg.epochs, cfg.first_predicted_epoch) == (3, 2)
    features, annotations, subjects, _ = load_inputs(ctx, int(preset["window"]["feature_stride"]))
    passes = loso_window_passes({v: len(f) for v, f in features.items()}, annotations, subjects, preset, cfg)
    assert set(passes) == {"fold_s1", "fold_s2", "fold_s3", "final"}
    prep = prepare(features, annotations, subjects, preset)
    recorded = {r["model"]: r["windows"]
                for r in read_jsonl(workspace.root / "data" / "tiny" / "train_timings.jsonl")}
    for fold in ("s1", "s2", "s3"):
        n_train = int((prep.train_subject != fold).sum())
        n_test = int((prep.test_subject == fold).sum())
        assert n_train == recorded[f"fold_{fold}"] and n_test > 0
        assert passes[f"fold_{fold}"] == n_train * 3 + n_test * 2      # 3 epochs trained, epochs 2 and 3 predicted
    assert passes["final"] == len(prep.train) * 3 == recorded["final"] * 3
    assert window_passes(10, 7, cfg) == 44


def test_stage_end_to_end(workspace, one_thread, caplog) -> None:
    _setup(workspace)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        workspace.run("train", "tiny")
    runs = workspace.out("tiny", "runs")
    timings = workspace.root / "data" / "tiny" / "train_timings.jsonl"
    # one timing record per model (benchmarks/ reads the seconds back), outside the runs output, and the log line
    assert not (runs / "timings.jsonl").exists()
    records = read_jsonl(timings)
    assert [r["model"] for r in records] == ["fold_s1", "fold_s2", "fold_s3", "final"]
    assert all(set(r) == set(TIMING_KEYS) and r["device"] == "cpu" and r["windows"] > 0 for r in records)
    compute = model_seconds(timings)
    assert set(compute) == {"fold_s1", "fold_s2", "fold_s3", "final"} and all(v >= 0 for v in compute.values())
    for r in records:
        assert f"{r['model']}: {r['windows']} training windows, " in caplog.text
    preds = pd.read_csv(runs / "predictions.csv", dtype={"subject": str, "fold": str, "video": str})
    assert list(preds.columns) == PREDICTION_COLUMNS
    assert set(preds.fold) == {"s1", "s2", "s3"}
    assert set(preds.epoch) == set(range(3, 13))                      # from the end of warm-up
    for fold, rows in preds.groupby("fold"):
        assert set(rows.subject) == {fold}                            # out-of-fold: only the test subject
        assert set(rows.video) <= {v for v, (s, _) in VIDEOS.items() if s == fold}
    assert (preds.offset - preds.onset >= 4).all() and preds.type.isin(["macro", "micro"]).all()
    assert (preds.groupby(["video", "epoch", "type"]).size() <= 30).all()
    c2 = preds[preds.video == "c2"]                                   # 30-step video: padded window
    assert len(c2) == 0 or c2.offset.max() <= 59
    for name in ("fold_s1", "fold_s2", "fold_s3", "final"):
        model, blob = load_checkpoint(runs / name / "model.pt")
        assert blob["in_dim"] == 16 and blob["provenance"]["backbone"] == "i3d"
        assert blob["provenance"]["weights_rgb"] == "random-init"
        assert blob["preset"]["train"]["epochs"] == 12 and blob["params"]["train"]["seed"] == 3
        fold = name.removeprefix("fold_")
        assert fold not in blob["extra"]["train_subjects"]
        assert len(blob["extra"]["history"]) == 12
    assert load_checkpoint(runs / "final" / "model.pt")[1]["extra"]["train_subjects"] == ["s1", "s2", "s3"]
    tsv = runs / "live" / "fold_s2" / "plots" / "metrics" / "train" / "loss.tsv"
    assert tsv.is_file() and len(tsv.read_text().strip().splitlines()) == 13   # header + 12 epochs
    assert (runs / "live" / "final" / "plots" / "metrics" / "lr.tsv").is_file()

    # a rerun with the same inputs skips every fold; a fold alone gives the same result (order-free)
    mtime = (runs / "fold_s2" / "model.pt").stat().st_mtime_ns
    workspace.run("train", "tiny")
    assert (runs / "fold_s2" / "model.pt").stat().st_mtime_ns == mtime
    assert read_jsonl(timings) == []                 # begun afresh: this run trained nothing
    full = preds[preds.fold == "s3"].reset_index(drop=True)
    workspace.set_params("train", folds=["s3"], final_model=False)
    workspace.params["train"]["eval_batch_size"] = 7                  # changes the digest: fold s3 retrains
    workspace.save_params()
    workspace.run("train", "tiny")
    alone = pd.read_csv(runs / "predictions.csv", dtype={"subject": str, "fold": str, "video": str})
    assert [r["model"] for r in read_jsonl(timings)] == ["fold_s3"]
    assert set(alone.fold) == {"s3"}
    pd.testing.assert_frame_equal(alone.reset_index(drop=True), full, check_exact=False, rtol=1e-5)


def test_stage_errors_name_the_file(workspace, one_thread) -> None:
    _setup(workspace)
    bad = workspace.out("tiny", "features") / "b1.h5"
    with h5py.File(bad, "a") as f:
        del f["flow"]
    with pytest.raises(InputError, match=r"b1\.h5: no 'flow'"):
        workspace.run("train", "tiny")
    _write_features(workspace.root)
    with h5py.File(bad, "a") as f:
        f.attrs["stride"] = 4
    with pytest.raises(InputError, match=r"b1\.h5: features have stride 4"):
        workspace.run("train", "tiny")
    _write_features(workspace.root)
    workspace.set_params("train", warmup_epochs=12)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        workspace.run("train", "tiny")


def test_a_checkpoint_that_cannot_be_written_fails_the_stage_and_keeps_the_others(workspace, one_thread) -> None:
    """Checkpoints are written in a background thread while the next model trains: a failed write
    must still fail the stage, leave no partial file, and keep the checkpoints written before it."""
    _setup(workspace)
    workspace.set_params("train", epochs=2, warmup_epochs=1)
    runs = workspace.out("tiny", "runs")
    (runs / "fold_s2" / "model.pt").mkdir(parents=True)       # a directory where the checkpoint goes
    (runs / "fold_s2" / "model.pt" / "x").write_text("in the way")
    with pytest.raises(OSError, match=r"fold_s2/model\.pt"):
        workspace.run("train", "tiny")
    assert load_checkpoint(runs / "fold_s1" / "model.pt")[0] is not None
    assert (runs / "fold_s2" / "predictions.csv").is_file()    # written before the checkpoint ...
    assert not list((runs / "fold_s2").glob(".*partial"))      # ... which left nothing half-written
    assert not (runs / "predictions.csv").exists()


def test_a_fold_log_closes_when_another_fold_removed_the_shared_dvclive_signal(tmp_path, monkeypatch) -> None:
    """Under `dvc repro` every fold's dvclive writes one shared signal file and its end() removes it
    after checking that it exists; a fold process that lost that race to another must still close,
    with its own logs complete. The race is forced: the file is gone while the check says it is there."""
    import os.path

    from pipeline.learning.loop import STEP_SIGNAL, DvcLive

    monkeypatch.setenv("DVC_ROOT", str(tmp_path))            # what `dvc repro` sets for a stage's command
    live = DvcLive(tmp_path / "live" / "fold_a")
    live(1, {"loss": 1.0, "cls": 0.6, "reg": 0.4, "lr": 1e-3})
    signal = tmp_path / ".dvc" / "tmp" / "exps" / "run" / STEP_SIGNAL
    assert signal.is_file()
    signal.unlink()                                           # another fold's end() removed it ...
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: str(p).endswith(STEP_SIGNAL) or real_exists(p))  # ... late
    live.close()
    monkeypatch.undo()
    loss = tmp_path / "live" / "fold_a" / "plots" / "metrics" / "train" / "loss.tsv"
    assert loss.read_text().splitlines()[1].split("\t")[-1] == "1.0"


def test_train_params_refuse_unknown_keys_and_bad_values(workspace) -> None:
    """The `train` section is one Section: a typo names the closest key, values are typed and checked."""
    assert TrainParams.from_params(workspace.params["train"]).workers == 1   # the repository's params.yaml
    assert_section_refuses(TrainParams, [
        ({"lrr": 1e-3}, r"params\.yaml: train\.lrr \(did you mean lr\?\)"),
        ({"precision": "fp16"}, r"train\.precision = 'fp16' is not one of fp32, bf16"),
        ({"epochs": 2.5}, r"train\.epochs = 2\.5 is invalid"),
        ({"fold_workers": 0}, r"train\.fold_workers must be >= 1"),
    ])
    _setup(workspace)
    workspace.set_params("train", lrr=1e-3)
    with pytest.raises(ConfigError, match=r"did you mean lr\?"):
        workspace.run("train", "tiny")
    assert not workspace.out("tiny", "runs").exists()                 # refused before anything is written


def test_fold_processes_append_a_record_per_model(workspace, one_thread) -> None:
    """With train.fold_workers 2 (loky), each fold process appends its own models' records to one file."""
    _setup(workspace)
    workspace.set_params("train", epochs=2, warmup_epochs=1, fold_workers=2)
    workspace.set_params("parallel", backend="loky", n_jobs=2)
    workspace.run("train", "tiny")
    records = read_jsonl(workspace.root / "data" / "tiny" / "train_timings.jsonl")
    assert sorted(r["model"] for r in records) == ["final", "fold_s1", "fold_s2", "fold_s3"]
    by_pid: dict[int, list[str]] = {}
    for r in records:
        by_pid.setdefault(r["pid"], []).append(r["model"])
    assert sorted(by_pid.values()) == [["fold_s1", "fold_s3"], ["fold_s2", "final"]]   # fold_groups' split, in order


def test_timing_records_are_whole_lines_from_several_processes(tmp_path) -> None:
    """Fold processes append to one file at once: every record stays one whole JSON line."""
    import multiprocessing as mp

    from pipeline.learning.timings import start_timings

    path = tmp_path / "runs" / "timings.jsonl"
    start_timings(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, f"fold_{i}", 200)) for i in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    records = read_jsonl(path)
    assert len(records) == 600 and {r["model"] for r in records} == {"fold_0", "fold_1", "fold_2"}
    assert len({r["pid"] for r in records}) == 3
    start_timings(path)
    assert read_jsonl(path) == []


def _append_many(path, model: str, n: int) -> None:
    """Append ``n`` records of ``model`` (run in a child process)."""
    from pipeline.learning.timings import timing_record

    for i in range(n):
        append_jsonl(path, timing_record(model, i, 0.5 * i, "cpu", 1.0 / (i + 1)))
