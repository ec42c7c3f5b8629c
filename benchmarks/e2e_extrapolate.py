"""The end-to-end benchmark's extrapolation of each stage's time to the real datasets' scale
(``benchmarks/e2e.py``)."""

from __future__ import annotations

from typing import Any

from benchmarks.e2e_targets import TARGETS
from benchmarks.e2e_work import STAGE_UNITS

EXTRAPOLATION_RULE = (
    "Per stage: fixed_cost_s + (wall_s - fixed_cost_s) / measured units x target units (linear in the work, same "
    "machine, recipe and settings). fixed_cost_s is measured after the stage: `python -m pipeline.<stage> --help` "
    "(imports) plus a `dvc repro` of the up-to-date stage (DVC start-up and checks). Units: ingest = source "
    "frames; resample, crop, evaluate = kept frames (source frames x "
    "target_fps / source_fps); flow = frame pairs, taken as the kept frames (one pair fewer per video); features = "
    "clips per stream = kept frames / features.stride; train = window passes summed over the trained models "
    "(benchmarks.train_cost.window_passes: training windows x epochs + held-out windows x predicted epochs; training "
    "windows are those holding an annotated interval, so a model's time follows them, not the frames), at the "
    "target from its real annotation table (shared/reference/annotations: video lengths and intervals, mapped as "
    "ingest and resample map them) with the run's training recipe; without the table train is not "
    "extrapolated. evaluate, where the tables are there too, is not extrapolated but run at the target's scale "
    "(its inputs built from the table, with the run's predictions per kept frame and epoch: "
    "evaluate_at_targets) and counted as fixed_cost_s + that run's wall time. "
    "synth is not part of a real run and is left out. Start-up costs beyond "
    "the fixed cost (model builds, loading dlib, worker processes, first-batch compilation) count as work, so a "
    "small run overestimates, unless the stage was calibrated (--calibrate): then its time is the straight line "
    "through two runs of it, the whole run and the same stage with one video's output (train: one fold's) "
    "removed, i.e. fixed_s + s_per_unit x units, where fixed_s holds every start-up cost; for train the line "
    "is fixed_s + warmup_s + s_per_model x models + s_per_unit x window passes, where s_per_unit is the seconds "
    "the stage records (data/<ds>/train_timings.jsonl) inside each model's training per window pass over every model but "
    "the first, warmup_s what "
    "the first model took beyond that (CUDA and cuDNN start-up), s_per_model the per-model overhead outside "
    "training (models at the target: its subjects + the final model); with train.fold_workers = n > 1 the models "
    "run in n processes, process i taking models i, i + n, ... (pipeline.learning.folds.fold_groups), and the "
    "line is fixed_s + the "
    "slowest process's warmup_s + s_per_unit x its window passes, with s_per_unit from every process's models "
    "but its first (they ran side by side, so it holds their contention) and fixed_s the run's wall time beyond "
    "its slowest process's models. crop and "
    "ingest depend on the source resolution, so a target is comparable only when its layout and frame size match "
    "the run's ('comparable' below); flow, features and train depend on the recipe.")


def target_units(target: dict[str, Any], stride: int, passes: dict[str, int] | None) -> dict[str, float | None]:
    """The units of work of a real dataset under the extrapolation rule (train: the sum of ``passes``)."""
    kept = target["source_frames"] * target["target_fps"] / target["source_fps"]
    return {"ingest": target["source_frames"], "resample": kept, "overlap": kept, "crop": kept, "flow": kept,
            "features": kept / stride, "train": None if passes is None else sum(passes.values()), "evaluate": kept}


def extrapolate(stages: dict[str, dict[str, Any]], work: dict[str, Any], stride: int,
                layout: str, size: list[int], dvc_s_per_gb: float | None = None,
                train_passes: dict[str, dict[str, int] | None] | None = None) -> dict[str, Any]:
    """Extrapolated seconds per stage and in total for CAS(ME)^2 and SAMM-LV.

    ``train_passes``: each target's {model: window passes} (:func:`target_window_passes`); a target
    without them gets no train figure. With ``dvc_s_per_gb`` (runs without DVC), also the bytes of
    crops and flow at the target's scale and what DVC's hashing and caching of them would add
    (``total_with_dvc_s``).
    """
    out: dict[str, Any] = {"rule": EXTRAPOLATION_RULE}
    for name, target in TARGETS.items():
        passes = (train_passes or {}).get(name)
        units = target_units(target, stride, passes)
        if "overlap" not in stages:
            units.pop("overlap")
        per_stage, total = {}, 0.0
        for stage, n in units.items():
            rec = stages.get(stage)
            measured = work.get(STAGE_UNITS[stage][0])
            if not rec or rec.get("rc") != 0 or not measured or n is None:
                per_stage[stage] = None
                continue
            fit = rec.get("calibration", {}).get("fit")
            at_target = rec.get("at_target", {}).get(name) or {}
            if at_target.get("rc") == 0:  # evaluate run at the target's scale (evaluate_at_targets)
                secs = min(rec.get("fixed_cost_s", 0.0), rec["wall_s"]) + at_target["wall_s"]
            elif fit and "workers" in fit:  # train, folds in parallel processes (parallel_train_fit)
                from pipeline.learning.folds import fold_groups

                secs = fit["fixed_s"] + max(fit["warmup_s"] + fit["s_per_unit"] * sum(passes[m] for m in group)
                                            for group in fold_groups(list(passes), fit["workers"]))
            elif fit and "s_per_model" in fit:  # train, folds one after another (train_fit)
                secs = (fit["fixed_s"] + fit["warmup_s"] + fit["s_per_model"] * len(passes)
                        + fit["s_per_unit"] * n)
            elif fit:
                secs = fit["fixed_s"] + fit["s_per_unit"] * n
            else:
                fixed = min(rec.get("fixed_cost_s", 0.0), rec["wall_s"])
                secs = fixed + (rec["wall_s"] - fixed) / measured * n
            per_stage[stage] = round(secs, 1)
            total += secs
        done = all(v is not None for v in per_stage.values())
        out[name] = {"units": {k: None if v is None else round(v) for k, v in units.items()}, "stage_s": per_stage,
                     "total_s": round(total, 1) if done else None,
                     "total_h": round(total / 3600, 2) if done else None,
                     "comparable": {"crop_ingest_resolution": layout == target["layout"]
                                    and list(size) == target["source_size"]}}
        per_unit = [work[b] / work[u] for b, u in (("faces_bytes", "crop_frames"), ("flow_bytes", "flow_pairs"))
                    if work.get(u)]
        if per_unit:
            gb = sum(per_unit) * units["crop"] / 1e9
            out[name]["crop_flow_output_gb"] = round(gb, 1)
            if dvc_s_per_gb is not None:
                out[name]["dvc_hash_cache_s"] = round(gb * dvc_s_per_gb, 1)
                out[name]["total_with_dvc_s"] = round(total + gb * dvc_s_per_gb, 1) if done else None
    return out
