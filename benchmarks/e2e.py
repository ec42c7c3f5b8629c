"""Benchmark: the whole pipeline through ``dvc repro``, stage by stage, on a synthetic dataset of a chosen size.

A copy of the repository is made in a temporary folder (as ``tests/stages/test_pipeline_dvc.py``
does) with one synthetic dataset preset of the requested layout and scale; then every
stage runs as ``dvc repro --single-item <stage>@<dataset>`` in order, on whatever the
machine has (``device: auto``: the GPU for flow, features and train when there is one;
``parallel.n_jobs: -1``: every CPU core for the per-video stages). Printed JSON (also
written to ``--out`` after every stage, so a run cut short keeps what it measured):

* per stage: wall time (the ``dvc repro`` call: the stage plus DVC's hashing and caching of
  its outputs), the work it did (frames, pairs, clips, folds) and the throughput;
* host memory: the peak of the summed RSS of the ``dvc`` process tree (psutil, polled every
  ``--interval`` s; shared pages count once per process) and the largest single process's
  peak RSS (``wait4`` rusage of the stage, which covers every descendant it waited for);
  CPU seconds of the tree from the same rusage;
* GPU, when NVML can be read (``pynvml`` from nvidia-ml-py, else ``nvidia-smi``), sampled in a
  thread every ``--interval`` s: mean and max utilisation, the peak device memory in use
  above the level before the stage (all processes on the card), and the peak memory of
  the stage's own processes where NVML lists them;
* the extrapolated time for CAS(ME)^2 and SAMM-LV scale, with the rule used, and the GB of
  crops and flow at that scale; with ``--no-dvc`` also what DVC's hashing and caching of
  them would add (``--dvc-s-per-gb``, from ``bench_dvc_cache.py``) as ``total_with_dvc_s``.

``--overlap`` runs ``python -m pipeline.overlap`` before the crop stage: the crop stage's
processes crop on the CPU while this process solves TV-L1 on the GPU for every faces file
already written (:mod:`pipeline.overlap`); the crop and flow stages then run through DVC as
usual, find every output complete and only record them (their wall time is then DVC's
hashing and the stages' checks). Its record is ``stages.overlap`` (pairs/s of the two
together), extrapolated like a stage by the flow pairs. ``--rerun flow`` then recomputes the flow
stage alone on the same crops (record ``reruns.flow``), which gives its own rate too.

``--calibrate`` times crop, flow, features and train a second time with one video's output
(one fold) removed, so the extrapolation follows the line through two runs instead of scaling
start-up costs with the work (:func:`benchmarks.e2e_fit.calibrate_stage`). Train is extrapolated by
window passes (:func:`benchmarks.train_cost.window_passes`), at the target from the real annotation tables
(``--reference-dir``), where the evaluate stage also runs once at each target's scale (its time
grows with predictions x subjects and is mostly start-up in a small run:
:func:`benchmarks.e2e_targets.evaluate_at_targets`); the seconds each model trained come from the
train stage's timing records (``data/<ds>/train_timings.jsonl``, kept per train run beside its log as
``<log>_timings.jsonl``). ``--refit`` redoes the calibration and extrapolation of an earlier run's
JSON from its logs folder and its regenerated dataset (:func:`benchmarks.e2e_refit.refit`).

This file is the command line; the work is done by its modules, one job each:
``e2e_dataset`` (the synthetic sample: layouts, recipes, preset, params), ``e2e_monitor`` (machine,
memory and GPU sampling), ``e2e_run`` (one stage run measured), ``e2e_work`` (work accounting:
frames, pairs, clips, window passes; train's timing records), ``e2e_targets`` (the real datasets and
their work at full scale), ``e2e_fit`` (calibration: fixed and per-unit cost, per-process fold fit),
``e2e_extrapolate`` (the extrapolation rule) and ``e2e_refit`` (``--refit``).

Run on a lent GPU machine (one command; 16 videos x 40 s at 640x480, 19.2k frames, the
published recipe; measured in ``benchmarks/RESULTS.md``):

    python benchmarks/e2e.py --layout casme2 --subjects 8 --videos-per-subject 2 --duration-s 40 \\
        --recipe full --calibrate --stage-timeout 300 --out "$OUT/e2e_gpu.json"

CPU proof of function (a minute or two on 2 cores; the second with crop and flow overlapped,
which needs the torch TV-L1 solver):

    python benchmarks/e2e.py --recipe tiny --subjects 2 --videos-per-subject 1 --duration-s 5
    python benchmarks/e2e.py --recipe tiny --overlap --param flow.impl=torch --param flow.device=cpu
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/e2e.py` without the package installed
    sys.path.insert(0, str(REPO))

from benchmarks.e2e_dataset import LAYOUTS, RECIPES, build_preset, project_params  # noqa: E402
from benchmarks.e2e_extrapolate import extrapolate  # noqa: E402
from benchmarks.e2e_fit import CALIBRATED, PER_VIDEO_OUTPUTS, all_at_once, calibrate_stage  # noqa: E402
from benchmarks.e2e_monitor import gpu_readers, machine  # noqa: E402
from benchmarks.e2e_refit import refit  # noqa: E402
from benchmarks.e2e_run import measured_stage  # noqa: E402
from benchmarks.e2e_targets import (REFERENCE_DIR_ENV, TARGETS, evaluate_at_targets, reference_dir,  # noqa: E402
                                    target_window_passes)
from benchmarks.e2e_work import work_done  # noqa: E402
from pipeline.core.sandbox import make_project  # noqa: E402

STAGES = ["synth", "ingest", "resample", "crop", "flow", "features", "train", "evaluate"]

log = logging.getLogger("e2e")


def rerun_stage(project: Path, stage: str, dataset: str, stride: int, args: argparse.Namespace,
                gpu: Any, logs: Path) -> dict[str, Any]:
    """Recompute one stage alone after the run: its outputs moved aside, ``python -m pipeline.<stage>``.

    The record is a stage's (wall time, work, rate, memory, GPU) plus its extrapolated seconds at
    CAS(ME)^2 and SAMM-LV scale under the same rule as the run's stages.
    """
    out = project / "data" / dataset / PER_VIDEO_OUTPUTS[stage][0]
    out.rename(out.with_name(out.name + ".before_rerun"))
    rec, work = measured_stage(project, stage, dataset, False, args, gpu, logs, stride)
    scaled = extrapolate({stage: rec}, work, stride, args.layout, list(args.size or LAYOUTS[args.layout]["size"]))
    rec["extrapolated_s"] = {name: scaled[name]["stage_s"][stage] for name in TARGETS}
    log.info("%s alone: rc %s, %.1f s", stage, rec["rc"], rec["wall_s"])
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="casme2")
    ap.add_argument("--subjects", type=int, default=2)
    ap.add_argument("--videos-per-subject", type=int, default=1)
    ap.add_argument("--duration-s", type=float, default=5.0, help="seconds per video")
    ap.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), default=None,
                    help="source frame size (default: the real dataset's, 640x480 or 2040x1088)")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="tiny",
                    help="full: params.yaml defaults (the published recipe, random I3D weights); reduced: the "
                         "synthetic presets' CPU recipe; tiny: the DVC test's recipe")
    ap.add_argument("--n-jobs", type=int, default=-1, help="parallel.n_jobs (-1: every core)")
    ap.add_argument("--param", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="extra params.yaml settings, e.g. train.fold_workers=2 or features.precision=bf16")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=STAGES)
    ap.add_argument("--no-dvc", action="store_true", help="run python -m pipeline.<stage> instead of dvc repro")
    ap.add_argument("--dvc-s-per-gb", type=float, default=2.0,
                    help="with --no-dvc: DVC's hashing and caching seconds per GB of output, added to the "
                         "extrapolation as total_with_dvc_s (default 2.0: benchmarks/bench_dvc_cache.py measured "
                         "1.6-2.3 on the 2-core machine)")
    ap.add_argument("--overlap", action="store_true",
                    help="before the crop stage, run python -m pipeline.overlap (crop on the CPU while the GPU "
                         "solves TV-L1 on the crops already written); the crop and flow stages then find their "
                         "outputs complete and only record them (needs flow.impl torch: auto on a GPU)")
    ap.add_argument("--rerun", nargs="+", choices=sorted(PER_VIDEO_OUTPUTS), default=[],
                    help="after the run, recompute these stages alone (their outputs moved aside, python -m "
                         "pipeline.<stage>), e.g. flow after --overlap measured crop and flow together")
    ap.add_argument("--calibrate", action="store_true",
                    help="after the run, time crop, flow, features and train again with one video's (one fold's) "
                         "output removed; the extrapolation then uses the line through the two runs, so start-up "
                         "costs are not scaled with the work (see calibrate_stage)")
    ap.add_argument("--interval", type=float, default=0.2, help="sampling period of memory and GPU (s)")
    ap.add_argument("--stage-timeout", type=float, default=3600.0)
    ap.add_argument("--workdir", type=Path, default=None, help="where the project copy goes (default: a tmp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the project copy")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here (after every stage)")
    ap.add_argument("--reference-dir", type=Path, default=None,
                    help="the real datasets' annotation tables, for the train stage's work at their scale "
                         f"(default ${REFERENCE_DIR_ENV}, else shared/reference/annotations beside the repository)")
    ap.add_argument("--refit", type=Path, default=None, metavar="RESULT_JSON",
                    help="instead of a run: recompute the train calibration and the extrapolation of an earlier "
                         "run's JSON (from a GPU machine, say) with its stage logs (--logs) and its dataset, "
                         "regenerated in --workdir by this script with the same options and --stages synth ingest "
                         "resample --keep (the synthetic data are seeded); see refit()")
    ap.add_argument("--logs", type=Path, default=None, help="with --refit: the earlier run's stage logs folder "
                    "(with train_timings.jsonl and train_calibration_timings.jsonl)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.refit is not None:
        if args.workdir is None or args.logs is None:
            ap.error("--refit needs --workdir (the regenerated project) and --logs (the earlier run's stage logs)")
        return refit(args)
    if not args.no_dvc:
        try:
            import dvc  # noqa: F401
        except ImportError:
            ap.error("dvc is not importable in this environment: pip install -e '.[dev]' (or pass --no-dvc)")

    dataset = f"e2e_{args.layout}"
    preset, per_dataset = build_preset(args, dataset)
    workdir = Path(tempfile.mkdtemp(prefix="m2es_e2e_")) if args.workdir is None else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    project = make_project(workdir / "project", dataset, preset, project_params(args.param, args.n_jobs), per_dataset)
    params = yaml.safe_load((project / "params.yaml").read_text())
    stride = int((per_dataset.get("features") or {}).get("stride") or params["features"]["stride"])
    size = list(args.size or LAYOUTS[args.layout]["size"])
    gpu = gpu_readers()
    gpu_readout = None
    if gpu is not None:
        gpu_readout = "nvidia-smi" if getattr(gpu[0], "__name__", "") == "smi_devices" else "nvml (pynvml)"
    result: dict[str, Any] = {
        "benchmark": "e2e", "machine": machine(), "gpu_readout": gpu_readout,
        "config": {"layout": args.layout, "subjects": args.subjects, "videos_per_subject": args.videos_per_subject,
                   "duration_s": args.duration_s, "source_size": size, "recipe": args.recipe,
                   "recipe_overrides": RECIPES[args.recipe], "n_jobs": args.n_jobs, "params": args.param,
                   "runner": "python -m pipeline" if args.no_dvc else "dvc repro --single-item",
                   "overlap": bool(args.overlap),
                   "project": str(project)},
        "stages": {},
    }
    log.info("project copy in %s; %s", project, "GPU sampled" if gpu else "no GPU readout")

    def dump() -> None:
        text = json.dumps(result, indent=2, default=str)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")

    t_all = time.perf_counter()
    order = [s for s in STAGES if s in args.stages]
    if args.overlap and "crop" in order:
        order.insert(order.index("crop"), "overlap")
    for stage in order:
        log.info("%s ...", stage)
        use_dvc = not args.no_dvc and stage != "overlap"   # overlap fills DVC's outputs; the stages record them
        rec, work = measured_stage(project, stage, dataset, use_dvc, args, gpu, logs, stride)
        if stage == "overlap" and work.get("crop_frames"):
            rec["work"]["crop_frames"] = work["crop_frames"]
        if stage == "train" and work.get("trained_models"):
            rec["work"].update(loso_folds=work["loso_folds"], final_model=work["final_model"])
            rec["folds_per_min"] = round(work["trained_models"] / (rec["wall_s"] / 60), 2)
        result["stages"][stage] = rec
        log.info("%s: rc %s, %.1f s", stage, rec["rc"], rec["wall_s"])
        dump()
        if rec["rc"] != 0:
            log.error("%s failed; see %s", stage, logs / f"{stage}.log")
            break
    ok = all(r["rc"] == 0 for r in result["stages"].values())
    work = work_done(project, dataset, stride)
    # after --overlap the crop and flow stages only recorded what the overlap computed: nothing to calibrate
    calibrated = [s for s in CALIBRATED if s in result["stages"] and not (args.overlap and s in ("crop", "flow"))
                  and not all_at_once(s, work, args.n_jobs, os.cpu_count() or 1)]
    for stage in calibrated if ok and args.calibrate else []:
        log.info("%s again with one output removed (calibration) ...", stage)
        rec = result["stages"][stage]
        rec["calibration"] = calibrate_stage(project, stage, dataset, rec, work, not args.no_dvc, args, gpu, logs)
        log.info("%s calibration: %s", stage, json.dumps({k: v for k, v in rec["calibration"].items()
                                                          if k != "log_tail"}))
        dump()
    for stage in args.rerun if ok else []:
        log.info("%s again, alone ...", stage)
        result.setdefault("reruns", {})[stage] = rerun_stage(project, stage, dataset, stride, args, gpu, logs)
        dump()
    work = work_done(project, dataset, stride)
    result["work"] = {k: v for k, v in work.items() if not k.startswith("_")}
    result["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    result["total_wall_s_without_synth"] = round(sum(r["wall_s"] for s, r in result["stages"].items()
                                                     if s != "synth"), 1)
    train_passes = None
    if "train" in result["stages"]:
        train_passes = target_window_passes(project, dataset, reference_dir(args.reference_dir),
                                            final=bool(work.get("final_model", True)))
    if ok and "evaluate" in result["stages"] and work.get("trained_models"):
        log.info("evaluate at the real datasets' scale ...")
        result["stages"]["evaluate"]["at_target"] = evaluate_at_targets(
            project, dataset, reference_dir(args.reference_dir), work, args, logs)
        dump()
    result["extrapolated"] = extrapolate(result["stages"], work, stride, args.layout, size,
                                         args.dvc_s_per_gb if args.no_dvc else None, train_passes)
    dump()
    print(json.dumps(result, indent=2, default=str))
    ok = all(r["rc"] == 0 for r in [*result["stages"].values(), *result.get("reruns", {}).values(),
                                    *(r["calibration"] for r in result["stages"].values() if "calibration" in r)])
    if ok and not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not ok:
        log.error("project copy and stage logs kept in %s", workdir)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
