"""``train.fold_workers`` (LOSO folds in parallel processes, loky or the dask cluster) gives the
sequential run's predictions and checkpoints exactly. Fixtures: tests/scaling/conftest.py
(``cluster``) and tests/conftest.py (``workspace``).
"""

from __future__ import annotations

import copy
import logging
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml


FOLD_VIDEOS = {"a1": ("s1", 150), "a2": ("s1", 90), "b1": ("s2", 160), "c1": ("s3", 140)}
FOLD_ROWS = [("a1", "s1", 40, 60, "macro"), ("a1", "s1", 150, 162, "micro"), ("a2", "s1", 20, 50, "macro"),
             ("b1", "s2", 100, 140, "macro"), ("c1", "s3", 30, 42, "micro"), ("c1", "s3", 150, 200, "macro")]


def _tiny_training_set(root: Path) -> None:
    """Random features with the annotated intervals marked, tables, and a small IAENet preset (as test_train)."""
    from pipeline.learning.presets import load_model_preset

    rng = np.random.default_rng(0)
    feats = root / "data" / "tiny" / "features"
    feats.mkdir(parents=True)
    for video, (_, n) in FOLD_VIDEOS.items():
        rgb = rng.normal(0, 0.3, size=(n, 8)).astype(np.float32)
        for v, _, on, off, kind in FOLD_ROWS:
            if v == video:
                rgb[on // 2:off // 2 + 1, 0 if kind == "macro" else 1] += 2.0
        with h5py.File(feats / f"{video}.h5", "w") as f:
            f["rgb"], f["flow"] = rgb, rng.normal(size=(n, 8)).astype(np.float32)
            f.attrs.update({"backbone": "i3d", "weights_rgb": "random-init", "weights_flow": "random-init",
                            "stride": 2, "clip": 8, "m2es_digest": f"dig-{video}", "m2es_complete": True})
    res = root / "data" / "tiny" / "resample"
    res.mkdir(parents=True)
    ann = pd.DataFrame(FOLD_ROWS, columns=["video", "subject", "onset", "offset", "type"])
    ann["apex"] = (ann.onset + ann.offset) // 2
    for col in ("onset", "apex", "offset"):
        ann[f"source_{col}"] = ann[col]
    ann.to_csv(res / "annotations.csv", index=False)
    # a listed video without features (too short for a clip): the stage warns of it and trains without it
    videos = [(v, subject) for v, (subject, _) in FOLD_VIDEOS.items()] + [("a3_short", "s1")]
    pd.DataFrame(videos, columns=["video", "subject"]).to_csv(res / "videos.csv", index=False)
    preset = copy.deepcopy(load_model_preset("iaenet_casme2"))
    preset.update(name="iaenet_tiny")
    preset["model"]["base"]["dim"] = 16
    preset["model"]["encoder"]["dims"] = [16, 16, 32]
    preset["model"]["heads"]["dim"] = 16
    (root / "configs").mkdir(exist_ok=True)
    (root / "configs" / "iaenet_tiny.yaml").write_text(yaml.safe_dump(preset))


def _train_outputs(runs: Path) -> tuple[bytes, dict[str, dict[str, torch.Tensor]]]:
    blobs = {d.name: torch.load(d / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
             for d in sorted(runs.iterdir()) if (d / "model.pt").is_file()}
    return (runs / "predictions.csv").read_bytes(), blobs


def test_folds_in_parallel_processes_equal_the_sequential_run(cluster, workspace, caplog) -> None:
    c, _ = cluster
    caplog.set_level(logging.INFO)
    _tiny_training_set(workspace.root)
    workspace.preset("tiny", layout="generic", root="data/raw/tiny", model_preset="iaenet_tiny")
    workspace.set_params("train", epochs=3, warmup_epochs=1, batch_size=4, lr=3e-3, device="cpu", seed=3)
    runs = workspace.out("tiny", "runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # the fold processes run one torch thread each (1 core per worker here)
    try:
        workspace.run("train", "tiny")
    finally:
        torch.set_num_threads(threads)
    seq_preds, seq_models = _train_outputs(runs)
    assert set(seq_models) == {"fold_s1", "fold_s2", "fold_s3", "final"}
    assert len(pd.read_csv(runs / "predictions.csv")) > 0

    for name, parallel in (("loky", {"backend": "loky", "n_jobs": 2, "address": None}),
                           ("dask", {"backend": "dask", "n_jobs": 2, "address": c.scheduler_address})):
        shutil.move(runs, runs.with_name(f"runs_before_{name}"))
        workspace.set_params("parallel", **parallel)
        workspace.set_params("train", fold_workers=2)
        caplog.clear()
        workspace.run("train", "tiny")
        model_lines = (re.match(r"(\w+): \d+ training windows, ", r.getMessage()) for r in caplog.records)
        trained = {m.group(1) for m in model_lines if m}
        assert trained == set(seq_models), f"{name}: the fold processes' lines are not in the stage's log"
        left_out = [r for r in caplog.records if r.getMessage().startswith("a3_short: no features file")]
        assert len(left_out) == 1, f"{name}: the left-out video is reported {len(left_out)} times, not once"
        preds, models = _train_outputs(runs)
        assert preds == seq_preds, f"{name}: predictions.csv differs from the sequential run"
        assert set(models) == set(seq_models)
        for fold, state in models.items():
            for key, tensor in state.items():
                assert torch.equal(tensor, seq_models[fold][key]), f"{name}: {fold} {key} differs"
    assert (runs / "live" / "fold_s2" / "plots" / "metrics" / "train" / "loss.tsv").is_file()


def test_fold_workers_must_be_positive(workspace) -> None:
    from pipeline.errors import ConfigError

    _tiny_training_set(workspace.root)
    workspace.preset("tiny", layout="generic", root="data/raw/tiny", model_preset="iaenet_tiny")
    workspace.set_params("train", fold_workers=0, device="cpu", epochs=1, warmup_epochs=0)
    with pytest.raises(ConfigError, match="train.fold_workers must be >= 1"):
        workspace.run("train", "tiny")


def test_fold_devices_round_robin_only_for_local_processes_on_cuda() -> None:
    from pipeline.learning.folds import fold_devices

    assert fold_devices(torch.device("cpu"), 3, "loky") == ["cpu"] * 3
    assert fold_devices(torch.device("cpu"), 2, "dask", "auto") == ["auto"] * 2   # each worker resolves its own
    n = torch.cuda.device_count()
    if n:
        assert fold_devices(torch.device("cuda:0"), 3, "loky") == ["cuda:0"] * 3  # an explicit card is kept
        expected = [f"cuda:{i % n}" for i in range(3)] if n > 1 else ["cuda"] * 3
        assert fold_devices(torch.device("cuda"), 3, "loky") == expected


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_folds_on_two_gpus_equal_one_gpu(workspace) -> None:
    """One fold per GPU (cuda:0, cuda:1) against all folds on one GPU, sequentially: same predictions
    (to fp32 rounding: two cards may pick different kernels) and the same folds trained."""
    _tiny_training_set(workspace.root)
    workspace.preset("tiny", layout="generic", root="data/raw/tiny", model_preset="iaenet_tiny")
    workspace.set_params("train", epochs=3, warmup_epochs=1, batch_size=4, lr=3e-3, device="cuda", seed=3)
    runs = workspace.out("tiny", "runs")
    workspace.run("train", "tiny")
    one = pd.read_csv(runs / "predictions.csv")
    shutil.move(runs, runs.with_name("runs_one_gpu"))
    workspace.set_params("parallel", backend="loky", n_jobs=2)
    workspace.set_params("train", fold_workers=2)
    workspace.run("train", "tiny")
    two = pd.read_csv(runs / "predictions.csv")
    pd.testing.assert_frame_equal(two, one, check_exact=False, rtol=1e-4, atol=1e-5)
