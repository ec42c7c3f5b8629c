"""The evaluate stage at the real datasets' scale, measured instead of extrapolated.

Builds the stage's inputs at full scale from the real annotation table
(``shared/reference/annotations``) as ``benchmarks/e2e.py`` does at the end of its run
(:func:`benchmarks.e2e.target_evaluate_inputs`): the resampled videos, frames and intervals
of every video and random predictions, here at the density of the H100 end-to-end run
(19,243 rows over 19,200 kept frames and 25 predicted epochs). Then times
``python -m pipeline.evaluate`` on them in a copy of the project (every output: metrics, F1
curves, per-subject table, MEGC export, timelines) and, in this process,
``evaluate_predictions`` alone per counting rule. Prints one JSON object. Not part of pytest.

Usage: ``python benchmarks/bench_evaluate.py [--target 'CAS(ME)^2'|SAMM-LV] [--reference-dir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.e2e import TARGETS, reference_dir, target_evaluate_inputs, write_evaluate_dataset  # noqa: E402
from pipeline.evaluate import check_params, evaluate_predictions, natural_key  # noqa: E402
from pipeline.params import load_params  # noqa: E402

DENSITY = 19_243 / 19_200 / 25  # predictions per kept frame and predicted epoch in the H100 end-to-end run
EPOCHS = list(range(6, 31))     # the full recipe's 25 predicted epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=sorted(TARGETS), default="CAS(ME)^2")
    ap.add_argument("--reference-dir", type=Path, default=None)
    args = ap.parse_args()
    target = TARGETS[args.target]
    inputs = target_evaluate_inputs(target, reference_dir(args.reference_dir), DENSITY, EPOCHS)
    videos = inputs["videos"]
    out: dict = {"benchmark": "evaluate", "target": args.target,
                 "machine": {"host": platform.node(), "cores": os.cpu_count(), "python": platform.python_version()},
                 "inputs": {"videos": len(videos), "subjects": int(videos["subject"].nunique()),
                            "kept_frames": int(videos["n_frames"].sum()), "intervals": len(inputs["annotations"]),
                            "predictions": len(inputs["predictions"]), "epochs": len(EPOCHS)}}
    settings = check_params(load_params()["evaluate"])
    subjects = sorted(set(videos["subject"].astype(str)), key=natural_key)
    for counting in settings["countings"]:
        t0 = time.perf_counter()
        evaluate_predictions(inputs["predictions"], inputs["annotations"], subjects, settings, counting)
        out[f"evaluate_predictions_{counting}_s"] = round(time.perf_counter() - t0, 2)
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        for rel in files.split():
            if rel.startswith(("pipeline/", "models/", "configs/")) or rel == "params.yaml":
                (project / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, project / rel)
        write_evaluate_dataset(project, "bench", target, inputs)
        env = {**os.environ, "PYTHONPATH": str(project)}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pipeline.evaluate", "--dataset", "bench"], cwd=project,
                              env=env, capture_output=True, text=True)
        out["stage_wall_s"] = round(time.perf_counter() - t0, 2)
        out["stage_rc"] = proc.returncode
        if proc.returncode:
            out["stage_log_tail"] = (proc.stdout + proc.stderr)[-2000:]
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline.evaluate", "--help"], cwd=project, env=env,
                       capture_output=True)
        out["imports_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
