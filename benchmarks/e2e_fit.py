"""The end-to-end benchmark's calibration: each stage's time line through two runs of it (the whole run
and one with one output removed): fixed + per-unit cost, and for train the per-model split from its
timing records, also across fold processes (``benchmarks/e2e.py --calibrate``)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from benchmarks.e2e_monitor import Sampler
from benchmarks.e2e_run import run_stage
from benchmarks.e2e_work import STAGE_UNITS, run_model_seconds, train_context


PER_VIDEO_OUTPUTS = {"crop": ("faces", "frames"), "flow": ("flow", "flow"), "features": ("features", "rgb")}
# stage: (its per-video output folder, the dataset whose rows are its units)
CALIBRATED = (*PER_VIDEO_OUTPUTS, "train")
PROCESS_PER_VIDEO = ("crop",)  # stages that run one video per process on the CPU cores


def all_at_once(stage: str, work: dict[str, Any], n_jobs: int, cpus: int) -> bool:
    """Whether a one-video-per-process stage ran every video at once (no more videos than processes).

    Then the calibration run (one video alone) takes most of the whole run's time (the videos ran
    side by side), and the line through the two runs measures DVC's hashing and the contention,
    not the stage's rate. The linear rule is right instead: at the target each process goes
    through videos/processes times the work, and the in-stage start-up (process start, dlib's
    models) is small.
    """
    processes = cpus if n_jobs < 0 else n_jobs
    return stage in PROCESS_PER_VIDEO and 0 < int(work.get("videos") or 0) <= processes


def calibrate_stage(project: Path, stage: str, dataset: str, rec: dict[str, Any], work: dict[str, Any],
                    use_dvc: bool, args: argparse.Namespace, gpu: Any, logs: Path) -> dict[str, Any]:
    """The second point of the stage's time line: the stage again (as in the run) with one output removed.

    Per-video stages: the first video's file is moved aside and the stage recomputes it alone,
    every start-up cost included: wall = fixed_s + s_per_unit x units through this run and the
    whole one. train: the first LOSO fold is moved aside and ``python -m pipeline.train`` retrains
    it alone (DVC would delete the whole non-persistent ``runs/`` first); :func:`train_fit` then
    splits its time into start-up, first-model warm-up, per-model overhead (dvclive, checkpoint;
    here also DVC's own overhead spread over the models, which errs high) and compute per
    window pass.
    """
    base = project / "data" / dataset
    aside = logs.parent / "calibration_aside" / stage
    aside.mkdir(parents=True, exist_ok=True)
    quantity = STAGE_UNITS[stage][0]
    if stage == "train":
        fold = sorted(p for p in (base / "runs").glob("fold_*") if (p / "model.pt").is_file())[0]
        units_one, moved = work["_model_passes"][fold.name], fold
    else:
        import h5py

        folder, key = PER_VIDEO_OUTPUTS[stage]
        moved = sorted((base / folder).glob("*.h5"))[0]
        with h5py.File(moved, "r") as f:
            units_one = int(f[key].shape[0])
    shutil.move(str(moved), str(aside / moved.name))
    # per-video outputs are persist: true, so `dvc repro --force` reruns the stage over them and it computes
    # the one missing video; train's runs/ is not, and DVC would delete every fold first: run it directly
    one = run_stage(project, stage, dataset, use_dvc and stage != "train", Sampler(args.interval, gpu), logs,
                    args.stage_timeout, log_name=f"{stage}_calibration", force=True)
    out: dict[str, Any] = {"removed": moved.name, "units": units_one, "wall_s": one["wall_s"], "rc": one["rc"]}
    units_all, wall_all = work.get(quantity), rec["wall_s"]
    if one["rc"] != 0 or not units_all or units_all <= units_one:
        out["log_tail"] = one.get("log_tail")
        return out
    out.update(line_fit(project, dataset, stage, logs, wall_all, units_all, out, work.get("_model_passes", {})))
    return out


def line_fit(project: Path, dataset: str, stage: str, logs: Path, wall_all: float, units_all: float,
             calibration: dict[str, Any], passes: dict[str, int]) -> dict[str, Any]:
    """The stage's time line through the whole run (``wall_all`` s, ``units_all`` units) and its
    calibration run (``calibration``: wall_s, units): fixed_s + s_per_unit x units; for train with
    folds one after another, :func:`train_fit` instead. Returns {"fit": ...} (and notes), or only
    notes when the two points give no line with positive cost per unit."""
    out: dict[str, Any] = {}
    if stage == "train":
        workers = int(train_context(project, dataset).section("train").get("fold_workers") or 1)
        if workers == 1:
            return train_fit(logs, wall_all, calibration, passes)
        fitted = parallel_train_fit(logs, wall_all, passes, workers)
        if "fit" in fitted:
            return fitted
        out["note"] = f"{fitted['note']}; the line is wall time against passes"
    per_unit = (wall_all - calibration["wall_s"]) / (units_all - calibration["units"])
    fixed = calibration["wall_s"] - per_unit * calibration["units"]
    if per_unit > 0 and fixed >= 0:
        out["fit"] = {"fixed_s": round(fixed, 3), "s_per_unit": per_unit}
    return out


def parallel_train_fit(logs: Path, wall_all: float, passes: dict[str, int], workers: int) -> dict[str, Any]:
    """The train stage's time line when ``workers`` processes train the models side by side, from the
    seconds each model spent training (the run's timing records, :func:`run_model_seconds`; the fold
    processes append theirs to the same file) and its window passes (``passes``, in the stage's order):
    s_per_unit over every process's models but its first, warmup_s the mean of what each first model
    took beyond that, fixed_s the wall time beyond the slowest process's models. Returns models,
    compute_s, critical_path_s and fit (or a note when the records do not allow one)."""
    from pipeline.learning.folds import fold_groups

    compute = run_model_seconds(logs, "train")
    groups = fold_groups(list(passes), workers)
    rest = [m for g in groups for m in g[1:]]
    if set(compute) != set(passes) or not rest:
        return {"note": f"train.fold_workers {workers}: the models' timing records (or a second model per "
                        "process) were not found: no per-process fit"}
    per_unit = sum(compute[m] for m in rest) / sum(passes[m] for m in rest)
    warmup = sum(max(0.0, compute[g[0]] - per_unit * passes[g[0]]) for g in groups) / len(groups)
    critical = max(sum(compute[m] for m in g) for g in groups)
    out: dict[str, Any] = {"models": len(compute), "compute_s": round(sum(compute.values()), 2),
                           "critical_path_s": round(critical, 2)}
    if wall_all >= critical:
        out["fit"] = {"workers": len(groups), "fixed_s": round(wall_all - critical, 3), "warmup_s": round(warmup, 3),
                      "s_per_unit": per_unit}
    return out


def train_fit(logs: Path, wall_all: float, calibration: dict[str, Any], passes: dict[str, int]) -> dict[str, Any]:
    """The train stage's time line from its two runs' timing records (``train_timings.jsonl``,
    ``train_calibration_timings.jsonl`` in ``logs``): the seconds each model spent training
    (:func:`run_model_seconds`, in the order the models ended) and
    its window passes give s_per_unit over every model but the first, and warmup_s, what the first
    model took beyond that; the time outside training in the whole run and in the one-model run
    gives s_per_model and fixed_s (stage start-up). Returns models, compute_s, compute_one_s and fit
    (absent, with a note, when the records or the numbers do not allow one)."""
    compute_all = run_model_seconds(logs, "train")
    compute_one = run_model_seconds(logs, "train_calibration").get(calibration["removed"])
    names = list(compute_all)
    if len(names) < 2 or compute_one is None or any(m not in passes for m in names):
        return {"note": "the train stage's per-model timing records (or their window passes) were not found: no fit"}
    out: dict[str, Any] = {"models": len(names), "compute_s": round(sum(compute_all.values()), 2),
                           "compute_one_s": compute_one}
    rest = names[1:]
    per_unit = sum(compute_all[m] for m in rest) / sum(passes[m] for m in rest)
    warmup = max(0.0, compute_all[names[0]] - per_unit * passes[names[0]])
    per_model = ((wall_all - sum(compute_all.values())) - (calibration["wall_s"] - compute_one)) / (len(names) - 1)
    fixed = calibration["wall_s"] - compute_one - per_model
    if per_model >= 0 and fixed >= 0:
        out["fit"] = {"fixed_s": round(fixed, 3), "warmup_s": round(warmup, 3), "s_per_model": round(per_model, 3),
                      "s_per_unit": per_unit}
    return out
