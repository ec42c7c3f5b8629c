"""The whole pipeline through the real `dvc repro`, on a tiny synthetic dataset, on the CPU.

One module-scoped run (every stage, synth to evaluate) in a copy of the repository,
then checks that build on it: outputs and metrics, single-stage reruns, which stages a
params change invalidates, and sharing HDF5 outputs through a DVC remote.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml

from pipeline.core.sandbox import make_project

from helpers.project import tiny_per_dataset, tiny_preset

REPO = Path(__file__).resolve().parents[2]
DS = "synth_tiny"
TINY_PRESET = tiny_preset(DS)



def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update({"OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"})
    return env


def dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the dvc of this interpreter's environment in ``cwd``."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository with one tiny synthetic dataset, after a full `dvc repro`."""
    root = make_project(tmp_path_factory.mktemp("project"), DS, TINY_PRESET, {"parallel": {"n_jobs": 2}},
                        tiny_per_dataset())
    proc = dvc(root, "repro")
    (root / "repro.log").write_text(proc.stdout)   # for the checks on what `dvc repro` printed
    return root


def _stages_run(proc: subprocess.CompletedProcess) -> list[str]:
    return [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")]


def test_repro_runs_every_stage_and_writes_metrics(project: Path) -> None:
    base = project / "data" / DS
    videos = sorted(p.name for p in (base / "faces").glob("*.h5"))
    assert len(videos) == 2
    for stage in ("flow", "features"):
        assert sorted(p.name for p in (base / stage).glob("*.h5")) == videos
    with h5py.File(base / "features" / videos[0], "r") as f:
        t = h5py.File(base / "faces" / videos[0], "r")["frames"].shape[0]
        assert f["rgb"].shape[0] == f["flow"].shape[0] == (t - 1 - 8) // 2 + 1
    assert (base / "runs" / "predictions.csv").is_file()
    assert (base / "runs" / "final" / "model.pt").is_file()
    metrics = yaml.safe_load((project / "metrics" / f"{DS}.json").read_text())
    assert set(metrics) == {DS} and set(metrics[DS]) == {"f1", "base"}
    details = yaml.safe_load((base / "evaluate" / "details.json").read_text())
    assert {"cross-fold", "paper-optimistic", "fixed"} <= set(details["one-to-one"])
    assert details["features"]["backbone"] is not None   # read from the train stage's checkpoints
    shown = dvc(project, "metrics", "show")
    assert f"metrics/{DS}.json" in shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()) <= 120
    assert dvc(project, "status").stdout.strip().endswith("up to date.")


def test_repro_ends_with_the_whole_run_summary(project: Path) -> None:
    """The last stage, `report`, prints every stage's duration and the F1s (issue #25 §5); a second
    `dvc repro` finds nothing to do, reruns nothing (the report included) and leaves `dvc status` clean."""
    log = (project / "repro.log").read_text()
    assert _stages_run(subprocess.CompletedProcess([], 0, log, ""))[-1] == "report"
    summary = log[log.index("Running stage 'report'"):]
    assert "Last run of each stage" in summary and f"  {DS}: macro " in summary
    for stage in ("synth", "crop", "flow", "features", "train", "evaluate"):
        assert any(line.strip().startswith(stage + " ") and " s (" in line for line in summary.splitlines()), stage
    again = dvc(project, "repro")
    assert _stages_run(again) == [] and "Last run of each stage" not in again.stdout
    # a fresh clone: committed metrics and dvc.lock already match, only the report's file is missing
    report = project / "data" / "report.txt"
    written, lock = report.read_text(), (project / "dvc.lock").read_bytes()
    assert f"  {DS}: macro " in written and " s (" not in written   # F1 lines, no times
    report.unlink()
    fresh = dvc(project, "repro")
    assert _stages_run(fresh) == ["report"] and "Last run of each stage" in fresh.stdout
    assert report.read_text() == written and (project / "dvc.lock").read_bytes() == lock


def test_single_stage_reruns_alone(project: Path) -> None:
    proc = dvc(project, "repro", "--force", "--single-item", f"crop@{DS}")
    assert _stages_run(proc) == [f"crop@{DS}"]


def test_features_params_invalidate_only_features_and_after(project: Path) -> None:
    path = project / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    params["features"]["seed"] = 1
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = dvc(project, "status").stdout
    finally:
        path.write_text(original)
    changed = {line.strip().rstrip(":") for line in status.splitlines() if line and not line.startswith((" ", "\t"))}
    assert {f"features@{DS}"} <= changed
    assert not changed & {f"synth@{DS}", f"ingest@{DS}", f"resample@{DS}", f"crop@{DS}", f"flow@{DS}"}


def test_outputs_are_shared_through_a_dvc_remote(project: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    dvc(project, "remote", "add", "-f", "-d", "shared", str(remote))
    dvc(project, "push")
    features = project / "data" / DS / "features"
    before = {p.name: p.read_bytes() for p in features.glob("*.h5")}
    shutil.rmtree(features)
    dvc(project, "pull")
    assert {p.name: p.read_bytes() for p in features.glob("*.h5")} == before
