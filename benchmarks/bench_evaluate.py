"""The evaluate stage at the real datasets' scale, measured instead of extrapolated.

Builds the stage's inputs at full scale from the real annotation table
(``shared/reference/annotations``) as ``benchmarks/e2e.py`` does at the end of its run
(:func:`benchmarks.e2e_targets.target_evaluate_inputs`): the resampled videos, frames and intervals
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
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.e2e_monitor import Sampler  # noqa: E402
from benchmarks.e2e_run import fixed_cost, run_stage  # noqa: E402
from benchmarks.e2e_targets import (TARGETS, evaluate_preset, reference_dir, target_evaluate_inputs,  # noqa: E402
                                    write_evaluate_tables)
from pipeline.evaluate import evaluate_predictions, natural_key  # noqa: E402
from pipeline.core.params import load_params  # noqa: E402
from pipeline.core.sandbox import make_project  # noqa: E402
from pipeline.scoring.params import EvaluateParams  # noqa: E402

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
    settings = EvaluateParams.from_params(load_params()["evaluate"])
    subjects = sorted(set(videos["subject"].astype(str)), key=natural_key)
    for counting in settings.countings:
        t0 = time.perf_counter()
        evaluate_predictions(inputs["predictions"], inputs["annotations"], subjects, settings, counting)
        out[f"evaluate_predictions_{counting}_s"] = round(time.perf_counter() - t0, 2)
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp) / "project", "bench", evaluate_preset(target, "bench"))
        write_evaluate_tables(project, "bench", inputs)
        logs = Path(tmp) / "logs"
        logs.mkdir()
        rec = run_stage(project, "evaluate", "bench", False, Sampler(0.2, None), logs, 600.0)
        out.update(stage_wall_s=rec["wall_s"], stage_rc=rec["rc"])
        if rec["rc"]:
            out["stage_log_tail"] = rec.get("log_tail")
        out["imports_s"] = round(fixed_cost(project, "evaluate", "bench", use_dvc=False), 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
