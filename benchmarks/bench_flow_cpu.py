"""The flow stage's OpenCV path on all cores against one core (issue #24, item 5), through the real stage.

In a sandbox project (a copy of the pipeline under ``--workdir``) the real ``synth``, ``ingest``,
``resample`` and ``crop`` stages make ``--videos`` equal synthetic videos (default: twice the cores, so
that every worker gets the same work) of ``--duration-s`` seconds at 30 fps, cropped to 224 px. Then
``python -m pipeline.flow`` runs three times with OpenCV's default Dual TV-L1 parameters (the published
ones; ``flow.impl: opencv``), one thread per video as the stage always does:

1. ``parallel.n_jobs: -1`` (every core, one video per worker process) on every video: the all-cores rate;
2. with every flow file complete: nothing to do, the stage's fixed cost (start-up, imports, checks);
3. ``parallel.n_jobs: 1`` after deleting two videos' flow files: the per-core rate.

Rates are pairs / (wall - fixed cost). ``efficiency`` = all-cores rate / (cores x per-core rate); issue
#24's target is >= 0.85. Prints one JSON document (``--out FILE`` also writes it). No figure here is
asserted by any test. Usage (from the repository root)::

    python -m benchmarks.bench_flow_cpu --out benchmarks/results/cpu_bench_flow_cores.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import pandas as pd
import yaml

from pipeline.core.sandbox import make_project

REPO = Path(__file__).resolve().parents[1]
NAME = "bench_flow_cpu"
log = logging.getLogger("bench_flow_cpu")


def preset() -> dict[str, Any]:
    """A CAS(ME)^2-layout synthetic preset at 30 fps (its sizes come from :func:`per_dataset`)."""
    return {"layout": "casme2", "root": f"data/raw/{NAME}", "frames_dir": "rawpic",
            "annotation_file": "CAS(ME)^2code_final.xlsx", "source_fps": 30, "target_fps": 30, "color": True,
            "model_preset": "iaenet_casme2", "synthetic": True}


def per_dataset(videos: int, duration_s: float) -> dict[str, Any]:
    """``videos`` subjects of one video each; 224-px crops; ``flow: {}``: params.yaml's TV-L1, OpenCV's defaults."""
    return {"synth": {"size": [320, 240], "n_subjects": videos, "videos_per_subject": 1, "duration_s": duration_s,
                      "count_model": "rounded",   # one expression of each type a video (ingest needs one)
                      "expressions": {"macro": {"rate_per_min": 60.0 / duration_s},
                                      "micro": {"rate_per_min": 60.0 / duration_s}}},
            "crop": {"size": 224}, "flow": {"impl": "opencv"}}


def stage(project: Path, name: str) -> float:
    """Run ``python -m pipeline.<name>`` in ``project``; its wall time in seconds."""
    path = os.pathsep.join(p for p in (str(project), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", f"pipeline.{name}", "--dataset", NAME], cwd=project, env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pipeline.{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def set_n_jobs(project: Path, n_jobs: int) -> None:
    """``parallel.n_jobs`` of the sandbox's params.yaml."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["parallel"]["n_jobs"] = n_jobs
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    """Build the sandbox, time the three flow runs, print (and write) the JSON."""
    cores = os.cpu_count() or 1
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=2 * cores, help="equal videos (default: 2 x cores)")
    ap.add_argument("--duration-s", type=float, default=2.5, help="seconds per video at 30 fps (default 2.5)")
    ap.add_argument("--single", type=int, default=2, help="videos the one-core run solves (default 2)")
    ap.add_argument("--workdir", default="data/bench/flow_cpu", help="sandbox folder (deleted first)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    project = make_project(work, NAME, preset(), {"parallel": {"n_jobs": -1}},
                           per_dataset(args.videos, args.duration_s))
    prep = {}
    for name in ("synth", "ingest", "resample", "crop"):
        log.info("%s", name)
        prep[name] = round(stage(project, name), 2)
    flow_dir = project / "data" / NAME / "flow"

    log.info("flow, every core (%d), %d videos", cores, args.videos)
    all_wall = stage(project, "flow")
    files = sorted(flow_dir.glob("*.h5"))
    videos = pd.read_csv(project / "data" / NAME / "resample" / "videos.csv")
    frames = {str(v): int(n) for v, n in zip(videos["video"], videos["n_frames"])}
    pairs_all = sum(n - 1 for n in frames.values())
    log.info("flow, nothing to do (fixed cost)")
    fixed = stage(project, "flow")
    set_n_jobs(project, 1)
    redo = files[:args.single]
    for f in redo:
        f.unlink()
    pairs_one = sum(frames[f.stem] - 1 for f in redo)
    log.info("flow, one core, %d videos", len(redo))
    one_wall = stage(project, "flow")

    rate_all = pairs_all / (all_wall - fixed)
    rate_one = pairs_one / (one_wall - fixed)
    out = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": cores,
                    "opencv": cv2.__version__, "load_average_at_end": list(os.getloadavg())},
        "videos": args.videos, "frames_per_video": sorted(set(frames.values())), "crop_px": 224,
        "tvl1": "OpenCV defaults (params.yaml flow)", "prep_s": prep,
        "all_cores": {"n_jobs": -1, "wall_s": round(all_wall, 2), "pairs": pairs_all,
                      "pairs_per_s": round(rate_all, 3)},
        "fixed_s": round(fixed, 2),
        "one_core": {"n_jobs": 1, "wall_s": round(one_wall, 2), "pairs": pairs_one, "pairs_per_s": round(rate_one, 3)},
        "efficiency": round(rate_all / (cores * rate_one), 3),
        "efficiency_raw_walls": round((pairs_all / all_wall) / (cores * pairs_one / one_wall), 3),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
