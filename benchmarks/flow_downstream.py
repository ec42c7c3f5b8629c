"""Downstream check of the flow implementations: does the spotting result depend on which TV-L1 ran?

Issue #5 asks that flow from ``opencv`` and from ``torch`` (the Triton kernel on a GPU, the
torch kernels on a CPU) give the same spotting result within noise. On a copy of the
pipeline holding one synthetic preset (default: the bundled ``synth_casme2``) this runs

* A: every stage with ``flow.impl: opencv`` (train seed 0);
* B: flow, features, train, evaluate again with ``flow.impl: torch`` (seed 0);
* C: train and evaluate again on A's features with train seed 1 -- the noise yardstick:
  how much the result moves when nothing but the training seed changes;

and reports the flow difference (mean end-point error B vs A over all pairs), the feature
difference (per-clip cosine), and the F1 of A, B and C per expression type and overall
under the default protocol and counting. "Within noise" means |F1(B) - F1(A)| is not
larger than |F1(C) - F1(A)| (reported, not asserted: a benchmark, not a test).

    python benchmarks/flow_downstream.py --out flow_downstream.json            # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.jsonout import emit  # noqa: E402
from pipeline.core.sandbox import make_project  # noqa: E402

log = logging.getLogger("flow_downstream")
ALL = ["synth", "ingest", "resample", "crop", "flow", "features", "train", "evaluate"]


def run_stages(project: Path, dataset: str, stages: list[str], params: dict[str, Any]) -> dict[str, float]:
    """Set ``params`` (section.key -> value) in the project's params.yaml, run ``stages``; wall seconds each."""
    path = project / "params.yaml"
    doc = yaml.safe_load(path.read_text())
    for key, value in params.items():
        section, name = key.split(".", 1)
        doc.setdefault(section, {})[name] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(project), os.environ.get("PYTHONPATH", "")]))
    walls = {}
    for stage in stages:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", f"pipeline.{stage}", "--dataset", dataset], cwd=project,
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{stage} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        walls[stage] = round(time.perf_counter() - t, 1)
        log.info("%s: %.1f s", stage, walls[stage])
    return walls


def snapshot(project: Path, dataset: str, name: str, keep: Path) -> Path:
    """Copy the flow, features and figures (evaluate's details.json) of the current run aside as ``keep/name``."""
    dst = keep / name
    for sub in ("flow", "features"):
        shutil.copytree(project / "data" / dataset / sub, dst / sub)
    shutil.copy2(project / "data" / dataset / "evaluate" / "details.json", dst / "metrics.json")
    return dst


def flow_difference(a: Path, b: Path) -> dict[str, float]:
    """Mean end-point error between the flow files of two runs, over every pair of every video."""
    per_video = []
    for fa in sorted((a / "flow").glob("*.h5")):
        with h5py.File(fa, "r") as x, h5py.File(b / "flow" / fa.name, "r") as y:
            u, v = x["flow"][()].astype(np.float32), y["flow"][()].astype(np.float32)
        per_video.append(float(np.linalg.norm(u - v, axis=-1).mean()))
    return {"videos": len(per_video), "mean_epe_px": round(float(np.mean(per_video)), 5),
            "max_video_epe_px": round(float(np.max(per_video)), 5)}


def feature_cosine(a: Path, b: Path) -> dict[str, float]:
    """Minimum and mean per-clip cosine similarity of the features of two runs, per stream."""
    out: dict[str, list[float]] = {}
    for fa in sorted((a / "features").glob("*.h5")):
        with h5py.File(fa, "r") as x, h5py.File(b / "features" / fa.name, "r") as y:
            for stream in ("rgb", "flow"):
                p, q = x[stream][()].astype(np.float64), y[stream][()].astype(np.float64)
                cos = (p * q).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(q, axis=1) + 1e-12)
                out.setdefault(stream, []).extend(cos.tolist())
    return {f"{s}_{k}": round(float(f(v)), 6) for s, v in out.items() for k, f in (("min", np.min), ("mean", np.mean))}


def f1s(metrics: Path) -> dict[str, float]:
    """F1 per type and overall under the default protocol and counting of evaluate's details.json."""
    doc = yaml.safe_load(metrics.read_text())
    proto, counting = doc["default"]["protocol"], doc["default"]["counting"]
    res = doc[counting][proto]
    return {t: res[t]["f1"] for t in ("macro", "micro", "overall")}


def main(argv: list[str] | None = None) -> int:
    """Run A, B and C; print the comparison as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="synth_casme2", help="a synthetic preset of configs/datasets")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--workdir", type=Path, help="where the project copy goes (default: a tmp dir, removed)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    preset = yaml.safe_load((REPO / "configs" / "datasets" / f"{args.preset}.yaml").read_text())
    if not preset.get("synthetic"):
        ap.error(f"--preset {args.preset} is not a synthetic preset (needs ground truth the run can generate)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="m2es_flowdown_"))
    dataset = args.preset
    preset = {**preset, "root": f"data/raw/{dataset}"}
    project = make_project(work / "project", dataset, preset)
    keep = work / "runs"
    report: dict[str, Any] = {"benchmark": "flow_downstream", "preset": args.preset, "runs": {}}
    try:
        report["runs"]["A_opencv_seed0"] = run_stages(project, dataset, ALL, {"flow.impl": "opencv", "train.seed": 0})
        a = snapshot(project, dataset, "A", keep)
        report["runs"]["B_torch_seed0"] = run_stages(project, dataset, ["flow", "features", "train", "evaluate"],
                                                     {"flow.impl": "torch"})
        b = snapshot(project, dataset, "B", keep)
        report["flow_kernels_B"] = yaml.safe_load((project / "params.yaml").read_text())["flow"].get("kernels")
        for sub in ("flow", "features"):                    # C: A's flow and features, another training seed
            shutil.rmtree(project / "data" / dataset / sub)
            shutil.copytree(a / sub, project / "data" / dataset / sub)
        report["runs"]["C_opencv_seed1"] = run_stages(project, dataset, ["train", "evaluate"],
                                                      {"flow.impl": "opencv", "train.seed": 1})
        c = snapshot(project, dataset, "C", keep)
        report["flow_B_vs_A"] = flow_difference(a, b)
        report["features_B_vs_A"] = feature_cosine(a, b)
        fa, fb, fc = f1s(a / "metrics.json"), f1s(b / "metrics.json"), f1s(c / "metrics.json")
        report["f1"] = {"A_opencv_seed0": fa, "B_torch_seed0": fb, "C_opencv_seed1": fc}
        report["f1_change_impl"] = {t: round(abs(fb[t] - fa[t]), 6) for t in fa}
        report["f1_change_seed"] = {t: round(abs(fc[t] - fa[t]), 6) for t in fa}
        report["within_noise"] = all(report["f1_change_impl"][t] <= report["f1_change_seed"][t] for t in fa)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
