"""Benchmark: the whole pipeline through ``dvc repro``, stage by stage, on a synthetic dataset of a chosen size.

A copy of the repository is made in a temporary folder (as ``tests/test_pipeline_dvc.py``
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
start-up costs with the work (:func:`calibrate_stage`). Train is extrapolated by window passes
(:func:`pipeline.train.window_passes`), at the target from the real annotation tables
(``--reference-dir``), where the evaluate stage also runs once at each target's scale (its time
grows with predictions x subjects and is mostly start-up in a small run: :func:`evaluate_at_targets`);
``--refit`` redoes the calibration and extrapolation of an earlier run's
JSON from its logs and its regenerated dataset (:func:`refit`).

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
import copy
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/e2e.py` without the package installed
    sys.path.insert(0, str(REPO))

from pipeline.core.sandbox import make_project  # noqa: E402

STAGES = ["synth", "ingest", "resample", "crop", "flow", "features", "train", "evaluate"]

log = logging.getLogger("e2e")

LAYOUTS: dict[str, dict[str, Any]] = {   # the synthetic presets' layouts (configs/datasets/synth_*.yaml)
    "casme2": {"layout": "casme2", "frames_dir": "rawpic", "annotation_file": "CAS(ME)^2code_final.xlsx",
               "source_fps": 30, "target_fps": 30, "color": True, "model_preset": "iaenet_casme2",
               "size": [640, 480]},
    "samm": {"layout": "samm", "frames_dir": "SAMM_longvideos", "annotation_file": "SAMM_LongVideos_V3_Release.xlsx",
             "source_fps": 200, "target_fps": 30, "color": False, "model_preset": "iaenet_samm",
             "size": [2040, 1088]},
}

RECIPES: dict[str, dict[str, Any]] = {
    # the published recipe (params.yaml defaults); I3D weights random (their values do not change speed)
    "full": {"features": {"allow_random_init": True}},
    # the synthetic presets' CPU recipe (configs/datasets/synth_casme2.yaml)
    "reduced": {"crop": {"size": 112},
                "flow": {"nscales": 3, "warps": 2, "outer_iterations": 1, "inner_iterations": 20},
                "features": {"allow_random_init": True, "input_size": 64, "fuse": True, "batch_size": 32},
                "train": {"epochs": 8, "warmup_epochs": 2, "batch_size": 8, "schedule": "step"}},
    # tests/test_pipeline_dvc.py's tiny recipe: proves the benchmark works, says nothing of real speed
    "tiny": {"crop": {"size": 48, "threads": 1},
             "flow": {"nscales": 2, "warps": 1, "outer_iterations": 1, "inner_iterations": 5, "median_filtering": 1},
             "features": {"allow_random_init": True, "input_size": 32, "fuse": True, "batch_size": 16},
             "train": {"epochs": 2, "warmup_epochs": 1, "batch_size": 4, "schedule": "step"}},
}

TARGETS: dict[str, dict[str, Any]] = {   # the real datasets' sizes
    "CAS(ME)^2": {"source_frames": 248_000, "source_fps": 30, "target_fps": 30, "subjects": 22,
                  "layout": "casme2", "source_size": [640, 480],
                  "model_preset": "iaenet_casme2", "table": "casme2_annotation_357.csv"},
    "SAMM-LV": {"source_frames": 491_000, "source_fps": 200, "target_fps": 30, "subjects": 30,
                "layout": "samm", "source_size": [2040, 1088],
                "model_preset": "iaenet_samm", "table": "samm_annotation.csv"},
}
# the real datasets' annotation tables (shared/reference/annotations): the train stage's work at their scale
REFERENCE_DIR_ENV = "M2ES_REFERENCE_DIR"

EXTRAPOLATION_RULE = (
    "Per stage: fixed_cost_s + (wall_s - fixed_cost_s) / measured units x target units (linear in the work, same "
    "machine, recipe and settings). fixed_cost_s is measured after the stage: `python -m pipeline.<stage> --help` "
    "(imports) plus a `dvc repro` of the up-to-date stage (DVC start-up and checks). Units: ingest = source "
    "frames; resample, crop, evaluate = kept frames (source frames x "
    "target_fps / source_fps); flow = frame pairs, taken as the kept frames (one pair fewer per video); features = "
    "clips per stream = kept frames / features.stride; train = window passes summed over the trained models "
    "(pipeline.train.window_passes: training windows x epochs + held-out windows x predicted epochs; training "
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
    "the stage logs inside each model's training per window pass over every model but the first, warmup_s what "
    "the first model took beyond that (CUDA and cuDNN start-up), s_per_model the per-model overhead outside "
    "training (models at the target: its subjects + the final model); with train.fold_workers = n > 1 the models "
    "run in n processes, process i taking models i, i + n, ... (pipeline.train), and the line is fixed_s + the "
    "slowest process's warmup_s + s_per_unit x its window passes, with s_per_unit from every process's models "
    "but its first (they ran side by side, so it holds their contention) and fixed_s the run's wall time beyond "
    "its slowest process's models. crop and "
    "ingest depend on the source resolution, so a target is comparable only when its layout and frame size match "
    "the run's ('comparable' below); flow, features and train depend on the recipe.")


# ----------------------------------------------------------------------------- sampling


def _nvml() -> tuple[Callable[[], list[dict[str, Any]]], Callable[[], dict[int, float]]] | None:
    """(per-device sample, per-process memory MiB) readers through NVML or nvidia-smi; None without a GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        if not handles:
            return None

        def devices() -> list[dict[str, Any]]:
            out = []
            for h in handles:
                util = pynvml.nvmlDeviceGetUtilizationRates(h)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                out.append({"util": float(util.gpu), "mem_mib": mem.used / 2**20})
            return out

        def processes() -> dict[int, float]:
            used: dict[int, float] = {}
            for h in handles:
                try:
                    procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
                except pynvml.NVMLError:
                    continue
                for p in procs:
                    if p.usedGpuMemory is not None:
                        used[p.pid] = used.get(p.pid, 0.0) + p.usedGpuMemory / 2**20
            return used

        return devices, processes
    except Exception:  # noqa: BLE001 - no NVML library or no driver: try nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None

    def smi_devices() -> list[dict[str, Any]]:
        out = subprocess.run([smi, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return [{"util": float(u), "mem_mib": float(m)} for u, m in
                (line.split(",") for line in out.strip().splitlines() if "," in line)]

    def smi_processes() -> dict[int, float]:
        out = subprocess.run([smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        used: dict[int, float] = {}
        for line in out.strip().splitlines():
            try:
                pid, mem = (x.strip() for x in line.split(","))
                used[int(pid)] = used.get(int(pid), 0.0) + float(mem)
            except ValueError:
                continue
        return used

    try:
        if not smi_devices():
            return None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return smi_devices, smi_processes


@dataclass
class Sampler:
    """Polls host memory of a process tree and the GPUs in a thread while a stage runs."""

    interval: float
    gpu: tuple[Callable[[], list[dict[str, Any]]], Callable[[], dict[int, float]]] | None
    root_pid: int | None = None
    rss_peak_mib: float = 0.0
    procs_peak: int = 0
    util: list[float] = field(default_factory=list)
    mem_peak_mib: float = 0.0
    proc_mem_peak_mib: float = 0.0
    baseline_mib: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self.root_pid = pid
        if self.gpu is not None:
            try:
                self.baseline_mib = sum(d["mem_mib"] for d in self.gpu[0]())
            except Exception:  # noqa: BLE001 - a failed read only loses that figure
                self.baseline_mib = 0.0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _tree(self) -> list[Any]:
        import psutil

        try:
            root = psutil.Process(self.root_pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            procs = self._tree()
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    continue
            self.rss_peak_mib = max(self.rss_peak_mib, rss / 2**20)
            self.procs_peak = max(self.procs_peak, len(procs))
            if self.gpu is not None:
                try:
                    devs = self.gpu[0]()
                    self.util.append(sum(d["util"] for d in devs) / max(len(devs), 1))
                    self.mem_peak_mib = max(self.mem_peak_mib, sum(d["mem_mib"] for d in devs) - self.baseline_mib)
                    pids = {p.pid for p in procs}
                    mine = sum(m for pid, m in self.gpu[1]().items() if pid in pids)
                    self.proc_mem_peak_mib = max(self.proc_mem_peak_mib, mine)
                except Exception:  # noqa: BLE001
                    pass
            self._stop.wait(self.interval)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"host_rss_tree_peak_mib": round(self.rss_peak_mib, 1),
                               "processes_peak": self.procs_peak}
        if self.gpu is not None:
            out.update({
                "gpu_util_mean_pct": round(sum(self.util) / len(self.util), 1) if self.util else None,
                "gpu_util_max_pct": max(self.util) if self.util else None,
                "gpu_samples": len(self.util),
                "gpu_mem_peak_above_baseline_mib": round(self.mem_peak_mib, 1),
                "gpu_mem_peak_stage_processes_mib": round(self.proc_mem_peak_mib, 1) or None,
            })
        return out


# ----------------------------------------------------------------------------- the project copy


def project_params(param_sets: list[str], n_jobs: int) -> dict[str, Any]:
    """params.yaml overrides from ``--param SECTION.KEY=VALUE`` options and the job count."""
    params: dict[str, Any] = {"parallel": {"n_jobs": n_jobs}}
    for item in param_sets:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not name or not _:
            raise SystemExit(f"--param {item!r}: expected SECTION.KEY=VALUE, e.g. train.fold_workers=2")
        params.setdefault(section, {})[name] = yaml.safe_load(value)
    return params


def build_preset(args: argparse.Namespace, dataset: str) -> dict[str, Any]:
    """The synthetic dataset preset of the requested layout, scale and recipe."""
    lay = copy.deepcopy(LAYOUTS[args.layout])
    size = args.size or lay.pop("size")
    lay.pop("size", None)
    overrides = copy.deepcopy(RECIPES[args.recipe])
    overrides["synth"] = {"size": list(size), "n_subjects": args.subjects,
                          "videos_per_subject": args.videos_per_subject, "duration_s": args.duration_s,
                          "count_model": "rounded",
                          # enough intervals in short videos for every fold to have training windows
                          "expressions": {"macro": {"rate_per_min": 20.0}, "micro": {"rate_per_min": 10.0}}}
    return {**lay, "root": f"data/raw/{dataset}", "synthetic": True, "overrides": overrides}


# ----------------------------------------------------------------------------- measuring the work


def _h5_rows(folder: Path, key: str) -> int:
    import h5py

    total = 0
    for path in sorted(folder.glob("*.h5")):
        with h5py.File(path, "r") as f:
            total += int(f[key].shape[0])
    return total


def work_done(project: Path, dataset: str, stride: int) -> dict[str, Any]:
    """What the run computed: frames, videos, subjects, pairs, clips, folds (from the stages' outputs)."""
    import pandas as pd

    base = project / "data" / dataset
    out: dict[str, Any] = {}
    ing = base / "ingest" / "videos.csv"
    if ing.is_file():
        out["source_frames"] = int(pd.read_csv(ing)["n_frames"].sum())
    res = base / "resample" / "videos.csv"
    if res.is_file():
        v = pd.read_csv(res, dtype={"subject": str})
        out.update(videos=len(v), kept_frames=int(v["n_frames"].sum()), subjects=int(v["subject"].nunique()))
    if (base / "faces").is_dir():
        out["crop_frames"] = _h5_rows(base / "faces", "frames")
        out["faces_bytes"] = sum(p.stat().st_size for p in (base / "faces").glob("*.h5"))
    if (base / "flow").is_dir():
        out["flow_pairs"] = _h5_rows(base / "flow", "flow")
        out["flow_bytes"] = sum(p.stat().st_size for p in (base / "flow").glob("*.h5"))
    if (base / "features").is_dir():
        out["feature_clips_per_stream"] = _h5_rows(base / "features", "rgb")
        out["features_stride"] = stride
    runs = base / "runs"
    if runs.is_dir():
        folds = sorted(p.name.removeprefix("fold_") for p in runs.glob("fold_*") if (p / "model.pt").is_file())
        final = (runs / "final" / "model.pt").is_file()
        out.update(loso_folds=len(folds), final_model=final, trained_models=len(folds) + int(final))
        passes = out["_model_passes"] = run_window_passes(project, dataset)
        out["train_window_passes"] = sum(passes.get(m, 0) for m in [*(f"fold_{f}" for f in folds),
                                                                    *(["final"] if final else [])])
    return out


def train_context(project: Path, dataset: str) -> Any:
    """The train stage's context of the project copy (its params.yaml and dataset preset)."""
    from pipeline.core.stage import make_context

    return make_context("train", dataset, project / "params.yaml", project / "data",
                        project / "configs" / "datasets")


def run_window_passes(project: Path, dataset: str) -> dict[str, int]:
    """{model: window passes} of the run's LOSO (pipeline.train.loso_window_passes) from the resample
    stage's videos (lengths in feature steps as the features stage counts them) and annotations;
    empty before resample has written them."""
    import pandas as pd

    from pipeline.features import clip_count
    from pipeline.io.tables import read_annotations
    from pipeline.train import loso_window_passes, model_recipe

    res = project / "data" / dataset / "resample"
    if not (res / "annotations.csv").is_file() or not (res / "videos.csv").is_file():
        return {}
    videos = pd.read_csv(res / "videos.csv", dtype={"subject": str})
    ctx = train_context(project, dataset)
    preset, cfg = model_recipe(ctx, project / "configs")
    feats = ctx.section("features")
    lengths = {str(r.video): clip_count(int(r.n_frames), int(feats["clip"]), int(feats["stride"]))
               for r in videos.itertuples()}
    subjects = {str(r.video): str(r.subject) for r in videos.itertuples()}
    return loso_window_passes({k: n for k, n in lengths.items() if n > 0}, read_annotations(res / "annotations.csv"),
                              subjects, preset, cfg)


def reference_dir(arg: Path | None) -> Path:
    """``--reference-dir``, else ``$M2ES_REFERENCE_DIR``, else ``shared/reference/annotations`` beside
    the repository."""
    if arg is not None:
        return arg
    env = os.environ.get(REFERENCE_DIR_ENV)
    return Path(env) if env else REPO.parent / "shared" / "reference" / "annotations"


def frame_tables(videos: list[str], subjects: list[str], fps: float, n_frames: list[int]) -> tuple[Any, Any]:
    """The ingest stage's videos and frames tables of colour frame folders without files (sources and
    paths empty): frames 0..n-1 of each video, source frames 1-based."""
    import numpy as np
    import pandas as pd

    table = pd.DataFrame({"video": videos, "subject": subjects, "fps": float(fps), "n_frames": n_frames,
                          "source": "", "kind": "frames", "color": 1})
    frames = pd.DataFrame({"video": np.repeat(table["video"].to_numpy(), table["n_frames"].to_numpy()),
                           "frame": np.concatenate([np.arange(n) for n in table["n_frames"]]), "path": ""})
    frames["source_frame"] = frames["frame"] + 1
    return table, frames


def reference_videos(table: Path, source_fps: float, target_fps: float, max_duration_s: float | None,
                     clip: int, stride: int) -> tuple[dict[str, int], Any, dict[str, str]]:
    """(feature steps per video, intervals at ``target_fps``, subject per video) of a real dataset from its
    reference annotation table (the published tooling's CSV: video path, subject, type_idx 1 macro / 2 micro,
    1-based startFrame and endFrame, frame_num), as ingest tables (0-based frames, onsets before the first
    frame clipped) put through the resample stage's own :func:`pipeline.resample.resample_tables`."""
    import numpy as np
    import pandas as pd

    from pipeline.features import clip_count
    from pipeline.resample import resample_tables

    df = pd.read_csv(table, dtype={"subject": str})
    df["video"] = df["video"].map(lambda v: Path(str(v)).name)
    per_video = df.groupby("video", sort=True).first()
    videos, frames = frame_tables(list(per_video.index), list(per_video["subject"]), source_fps,
                                  list(per_video["frame_num"].astype(int)))
    onset = np.clip(df["startFrame"].to_numpy() - 1, 0, None)
    offset = df["endFrame"].to_numpy() - 1
    ann = pd.DataFrame({"video": df["video"], "subject": df["subject"], "onset": onset, "apex": (onset + offset) // 2,
                        "offset": offset, "type": np.where(df["type_idx"].to_numpy() == 2, "micro", "macro")})
    for c in ("onset", "apex", "offset"):
        ann[f"source_{c}"] = ann[c] + 1
    vids, anns, _ = resample_tables(videos, ann, frames, target_fps, max_duration_s)
    lengths = {str(v): clip_count(int(n), clip, stride) for v, n in zip(vids["video"], vids["n_frames"])}
    subjects = {str(v): str(s) for v, s in zip(vids["video"], vids["subject"])}
    return {v: n for v, n in lengths.items() if n > 0}, anns, subjects


def target_window_passes(project: Path, dataset: str, ref_dir: Path, final: bool) -> dict[str, dict[str, int] | None]:
    """{target: {model: window passes}} of a LOSO run on each real dataset (its table in ``ref_dir``) with the
    run's training recipe and the target's model preset; None for a target whose table is missing."""
    from pipeline.train import loso_window_passes, model_recipe

    ctx = train_context(project, dataset)
    feats, res = ctx.section("features"), ctx.section("resample")
    max_s = res.get("max_duration_s")
    out: dict[str, dict[str, int] | None] = {}
    for name, target in TARGETS.items():
        table = ref_dir / target["table"]
        if not table.is_file():
            log.warning("%s: no reference table %s (--reference-dir or $%s): train not extrapolated to %s",
                        name, table, REFERENCE_DIR_ENV, name)
            out[name] = None
            continue
        lengths, ann, subjects = reference_videos(table, target["source_fps"], target["target_fps"],
                                                  None if max_s is None else float(max_s),
                                                  int(feats["clip"]), int(feats["stride"]))
        preset, cfg = model_recipe(ctx, project / "configs", model_preset=target["model_preset"])
        out[name] = loso_window_passes(lengths, ann, subjects, preset, cfg, final=final)
    return out


def target_evaluate_inputs(target: dict[str, Any], ref_dir: Path, density: float, epochs: list[int],
                           max_duration_s: float | None = None, clip: int = 8, stride: int = 2,
                           seed: int = 0) -> dict[str, Any]:
    """The evaluate stage's inputs at a real dataset's scale: its resampled videos, frames and intervals
    (from the reference table, :func:`reference_videos`) and random predictions, ``density`` per kept
    frame and predicted epoch, for ``epochs``; {"videos", "frames", "annotations", "predictions"}."""
    import numpy as np
    import pandas as pd

    steps, anns, subjects = reference_videos(ref_dir / target["table"], target["source_fps"], target["target_fps"],
                                             max_duration_s, clip, stride)
    rng = np.random.default_rng(seed)
    n_frames = {v: stride * s + clip - 1 for v, s in steps.items()}  # the most frames with these clip counts
    videos, frames = frame_tables(list(n_frames), [subjects[v] for v in n_frames], target["target_fps"],
                                  list(n_frames.values()))
    parts = []
    for v, n in n_frames.items():
        k = max(1, int(round(n * density)))
        for epoch in epochs:
            onset = rng.integers(0, max(1, n - 60), k)
            parts.append(pd.DataFrame({"video": v, "subject": subjects[v], "fold": subjects[v], "epoch": epoch,
                                       "onset": onset, "offset": np.minimum(onset + rng.integers(8, 60, k), n - 1),
                                       "type": rng.choice(["macro", "micro"], k), "score": rng.random(k)}))
    return {"videos": videos, "frames": frames, "annotations": anns[anns["video"].isin(n_frames)],
            "predictions": pd.concat(parts, ignore_index=True)}


def evaluate_preset(target: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The dataset preset of :func:`target_evaluate_inputs`' tables (evaluate reads only the tables)."""
    return {"layout": target["layout"], "root": f"data/raw/{dataset}", "source_fps": target["target_fps"],
            "target_fps": target["target_fps"], "color": True, "model_preset": target["model_preset"]}


def write_evaluate_tables(project: Path, dataset: str, inputs: dict[str, Any]) -> None:
    """The tables ``python -m pipeline.evaluate --dataset <dataset>`` reads, in ``project``."""
    from pipeline.io.tables import write_table

    base = project / "data" / dataset
    for name, rel in (("videos", "resample/videos.csv"), ("frames", "resample/frames.csv"),
                      ("annotations", "resample/annotations.csv"), ("predictions", "runs/predictions.csv")):
        write_table(inputs[name], base / rel)


def evaluate_at_targets(project: Path, dataset: str, ref_dir: Path, work: dict[str, Any], args: argparse.Namespace,
                        logs: Path) -> dict[str, dict[str, Any]]:
    """The evaluate stage run on each real dataset's scale (its inputs from :func:`target_evaluate_inputs`, with
    the run's own prediction density and predicted epochs), measured: {target: record}. Evaluate's time grows
    with predictions x subjects, not only frames, and is mostly start-up in a small run, so it is measured
    there (seconds) instead of scaled."""
    import pandas as pd

    pred = pd.read_csv(project / "data" / dataset / "runs" / "predictions.csv")
    epochs = sorted(int(e) for e in pred["epoch"].unique())
    if not epochs or not work.get("kept_frames"):
        return {}
    density = len(pred) / work["kept_frames"] / len(epochs)
    ctx = train_context(project, dataset)
    feats, max_s = ctx.section("features"), ctx.section("resample").get("max_duration_s")
    out: dict[str, dict[str, Any]] = {}
    for name, target in TARGETS.items():
        if not (ref_dir / target["table"]).is_file():
            continue
        slug = "".join(c for c in name.lower() if c.isalnum())
        inputs = target_evaluate_inputs(target, ref_dir, density, epochs, None if max_s is None else float(max_s),
                                        int(feats["clip"]), int(feats["stride"]))
        name_at = f"{dataset}_at_{slug}"
        (project / "configs" / "datasets" / f"{name_at}.yaml").write_text(yaml.safe_dump(evaluate_preset(target,
                                                                                                         name_at)))
        write_evaluate_tables(project, name_at, inputs)
        rec = run_stage(project, "evaluate", name_at, False, Sampler(args.interval, None), logs,
                        args.stage_timeout, log_name=f"evaluate_at_{slug}")
        out[name] = {"rc": rec["rc"], "wall_s": rec["wall_s"], "predictions": len(inputs["predictions"]),
                     "kept_frames": int(inputs["videos"]["n_frames"].sum()),
                     "subjects": int(inputs["videos"]["subject"].nunique()), "prediction_density": density}
    return out


STAGE_UNITS: dict[str, tuple[str, str]] = {   # stage: (measured quantity, throughput name)
    "synth": ("source_frames", "frames_per_s"),
    "ingest": ("source_frames", "frames_per_s"),
    "resample": ("kept_frames", "frames_per_s"),
    "crop": ("crop_frames", "frames_per_s"),
    "flow": ("flow_pairs", "pairs_per_s"),
    "features": ("feature_clips_per_stream", "clips_per_s_per_stream"),
    "train": ("train_window_passes", "window_passes_per_s"),
    "evaluate": ("kept_frames", "frames_per_s"),
    "overlap": ("flow_pairs", "pairs_per_s"),
}


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
                from pipeline.train import fold_groups

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


# ----------------------------------------------------------------------------- running


def machine() -> dict[str, Any]:
    """Host, CPU, memory, Python, torch and GPU names."""
    info: dict[str, Any] = {"host": platform.node(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        import torch   # versions only: no CUDA context in this process (it would hold GPU memory all run long)

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    info["gpus"] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout
            info["gpus"] = [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def _env(project: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(project), env.get("PYTHONPATH", "")])
    env.update({"DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"})
    return env


def _kill_group(pgid: int) -> None:
    """SIGKILL the process group ``pgid`` (a stage started in its own session), if any is left."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_stage(project: Path, stage: str, dataset: str, use_dvc: bool, sampler: Sampler, logs: Path,
              timeout: float, log_name: str | None = None, force: bool = False) -> dict[str, Any]:
    """Run one stage (``dvc repro --single-item``, or the module), measured; returns its record
    (the stage's output goes to ``logs/<log_name or stage>.log``). ``force``: DVC runs the stage's
    command even when its run cache holds the outputs (the stage itself still skips complete videos)."""
    target = f"{stage}@{dataset}"
    cmd = ([sys.executable, "-m", "dvc", "repro", "--single-item", *(["--force"] if force else []), target]
           if use_dvc else [sys.executable, "-m", f"pipeline.{stage}", "--dataset", dataset])
    logfile = logs / f"{log_name or stage}.log"
    t0 = time.perf_counter()
    with open(logfile, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=project, env=_env(project), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)   # its own process group: a timeout stops every worker
        timer = threading.Timer(timeout, _kill_group, (proc.pid,))
        timer.start()
        sampler.start(proc.pid)
        try:
            # wait4: the stage's rusage, with that of every descendant it waited for (CPU time, max RSS)
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            sampler.stop()
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    if rc == -signal.SIGKILL and time.perf_counter() - t0 >= timeout:
        rc = 124
        log.error("%s: stopped after --stage-timeout %.0f s", stage, timeout)
    _kill_group(proc.pid)   # nothing of the stage outlives it (orphaned pool workers)
    wall = time.perf_counter() - t0
    rec: dict[str, Any] = {"cmd": " ".join(["python", *cmd[1:]]), "rc": rc, "wall_s": round(wall, 2),
                           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                           "max_rss_single_process_mib": round(usage.ru_maxrss / 1024, 1)}
    rec["cores_busy_mean"] = round(rec["cpu_s"] / wall, 2) if wall > 0 else None
    rec.update(sampler.summary())
    if rc != 0:
        rec["log_tail"] = logfile.read_text(errors="replace")[-2000:]
    return rec


def measured_stage(project: Path, stage: str, dataset: str, use_dvc: bool, args: argparse.Namespace, gpu: Any,
                   logs: Path, stride: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one stage measured (:func:`run_stage`), then its fixed cost and its work and rate; returns
    (record, the run's work so far)."""
    rec = run_stage(project, stage, dataset, use_dvc, Sampler(args.interval, gpu), logs, args.stage_timeout)
    if rec["rc"] == 0:
        rec["fixed_cost_s"] = round(fixed_cost(project, stage, dataset, use_dvc), 2)
    work = work_done(project, dataset, stride)
    quantity, rate = STAGE_UNITS[stage]
    if work.get(quantity):
        rec["work"] = {quantity: work[quantity]}
        rec[rate] = round(work[quantity] / rec["wall_s"], 2)
    return rec, work


def fixed_cost(project: Path, stage: str, dataset: str, use_dvc: bool) -> float:
    """Seconds a stage costs whatever its size: importing its module (``python -m pipeline.<stage> --help``)
    plus, with DVC, a ``dvc repro`` of the now up-to-date stage (DVC start-up, lock and hash checks)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"pipeline.{stage}", "--help"], cwd=project, env=_env(project),
                   capture_output=True, timeout=600)
    if use_dvc:
        subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", f"{stage}@{dataset}"], cwd=project,
                       env=_env(project), capture_output=True, timeout=600)
    return time.perf_counter() - t0


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
    seconds each model spent training (``train.log``, :func:`pipeline.train.model_seconds`; the fold
    processes' lines reach the stage's log) and its window passes (``passes``, in the stage's order):
    s_per_unit over every process's models but its first, warmup_s the mean of what each first model
    took beyond that, fixed_s the wall time beyond the slowest process's models. Returns models,
    compute_s, critical_path_s and fit (or a note when the log does not allow one)."""
    from pipeline.train import fold_groups, model_seconds

    compute = model_seconds((logs / "train.log").read_text(errors="replace"))
    groups = fold_groups(list(passes), workers)
    rest = [m for g in groups for m in g[1:]]
    if set(compute) != set(passes) or not rest:
        return {"note": f"train.fold_workers {workers}: the models' lines (or a second model per process) "
                        "were not found in the train log: no per-process fit"}
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
    """The train stage's time line from its two runs' logs (``train.log``, ``train_calibration.log``):
    the seconds each model spent training (:func:`pipeline.train.model_seconds`, in training order) and
    its window passes give s_per_unit over every model but the first, and warmup_s, what the first
    model took beyond that; the time outside training in the whole run and in the one-model run
    gives s_per_model and fixed_s (stage start-up). Returns models, compute_s, compute_one_s and fit
    (absent, with a note, when the logs or the numbers do not allow one)."""
    from pipeline.train import model_seconds

    compute_all = model_seconds((logs / "train.log").read_text(errors="replace"))
    compute_one = model_seconds((logs / "train_calibration.log").read_text(errors="replace")).get(
        calibration["removed"])
    names = list(compute_all)
    if len(names) < 2 or compute_one is None or any(m not in passes for m in names):
        return {"note": "the train stage's per-model lines (or their window passes) were not found: no fit"}
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


def refit(args: argparse.Namespace) -> int:
    """Recompute an earlier run's train calibration and extrapolation under the current rule.

    The earlier JSON (``--refit``) keeps its measured wall times; the train stage's per-model
    seconds come from its logs (``--logs``: ``train.log``, ``train_calibration.log``) and the
    window passes of each model from the same synthetic dataset regenerated in ``--workdir``
    (same layout, scale and recipe; checked by its frame count), so a run measured before the
    train unit was window passes can be extrapolated without a second lease.
    """
    from pipeline.train import model_seconds

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
    trained = list(model_seconds((args.logs / "train.log").read_text(errors="replace")))
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
    ap.add_argument("--logs", type=Path, default=None, help="with --refit: the earlier run's stage logs folder")
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
    preset = build_preset(args, dataset)
    workdir = Path(tempfile.mkdtemp(prefix="m2es_e2e_")) if args.workdir is None else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    project = make_project(workdir / "project", dataset, preset, project_params(args.param, args.n_jobs))
    params = yaml.safe_load((project / "params.yaml").read_text())
    stride = int((preset["overrides"].get("features") or {}).get("stride") or params["features"]["stride"])
    size = list(args.size or LAYOUTS[args.layout]["size"])
    gpu = _nvml()
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
