"""``benchmarks/e2e.py --refit``: an earlier run's train calibration and extrapolation recomputed."""

from __future__ import annotations

import argparse
import json

from benchmarks.e2e_extrapolate import extrapolate
from benchmarks.e2e_fit import PROCESS_PER_VIDEO, all_at_once, line_fit
from benchmarks.e2e_targets import reference_dir, target_window_passes
from benchmarks.e2e_work import run_model_seconds, run_window_passes, work_done


def refit(args: argparse.Namespace) -> int:
    """Recompute an earlier run's train calibration and extrapolation under the current rule.

    The earlier JSON (``--refit``) keeps its measured wall times; the train stage's per-model
    seconds come from its timing records, kept in its logs folder (``--logs``: ``train_timings.jsonl``,
    ``train_calibration_timings.jsonl``) and the
    window passes of each model from the same synthetic dataset regenerated in ``--workdir``
    (same layout, scale and recipe; checked by its frame count), so a run measured before the
    train unit was window passes can be extrapolated without a second lease.
    """
    result = json.loads(args.refit.read_text())
    cfg = result["config"]
    dataset = f"e2e_{cfg['layout']}"
    project = args.workdir / "project"
    stride = int(result["work"].get("features_stride") or 2)
    local = work_done(project, dataset, stride)
    passes = run_window_passes(project, dataset)
    if not passes or local.get("kept_frames") != result["work"].get("kept_frames"):
        raise SystemExit(f"{project}: no regenerated dataset matching {args.refit} (kept frames "
                         f"{local.get('kept_frames')} here, {result['work'].get('kept_frames')} there). Run this "
                         "script with the earlier run's layout, scale, recipe and params and --stages synth ingest "
                         f"resample --keep --workdir {args.workdir} first.")
    trained = list(run_model_seconds(args.logs, "train"))
    work = {**result["work"], "train_window_passes": sum(passes[m] for m in trained)}
    train = result["stages"].get("train")
    if train is not None:
        for key in ("work", "fold_frames_per_s", "window_passes_per_s"):
            train.pop(key, None)
        train["work"] = {"train_window_passes": work["train_window_passes"]}
        train["window_passes_per_s"] = round(work["train_window_passes"] / train["wall_s"], 2)
        cal = train.get("calibration")
        if cal:
            for key in ("fit", "note", "models", "compute_s", "compute_one_s", "critical_path_s"):
                cal.pop(key, None)
            cal["units"] = passes[cal["removed"]]
            cal.update(line_fit(project, dataset, "train", args.logs, train["wall_s"], work["train_window_passes"],
                                cal, passes))
    result["work"] = {k: v for k, v in work.items() if not k.startswith("_") and k != "train_fold_frames"}
    for stage in PROCESS_PER_VIDEO:
        cal = result["stages"].get(stage, {}).get("calibration")
        if cal and "fit" in cal and all_at_once(stage, work, int(cfg.get("n_jobs", -1)),
                                                int(result["machine"].get("cpu_count") or 1)):
            cal["fit_unused"] = cal.pop("fit")
            cal["note"] = "every video ran at once: the linear rule applies (all_at_once())"
    train_passes = target_window_passes(project, dataset, reference_dir(args.reference_dir),
                                        final=bool(work.get("final_model", True)))
    no_dvc = cfg.get("runner", "").startswith("python")
    result["extrapolated"] = extrapolate(result["stages"], work, stride, cfg["layout"], cfg["source_size"],
                                         args.dvc_s_per_gb if no_dvc else None, train_passes)
    result["refit"] = {"from": str(args.refit), "logs": str(args.logs),
                       "how": "train calibration and extrapolation recomputed by e2e.py --refit (refit())"}
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0
