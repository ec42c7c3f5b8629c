"""``pipeline.overlap`` (crop and flow at once: torch TV-L1 on each faces file as it lands) writes what
the two stages write, and the stages rerun afterwards rewrite nothing. Fixtures: tests/scaling/conftest.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.h5compare import h5_differences, h5_files, partials, snapshot
from helpers.scaling import DS, assert_same_outputs, fresh_root, run_stage, write_flow_params
from helpers.subprocess_stage import stage_env


def test_overlap_writes_what_the_stages_write_and_they_then_skip(project: Path) -> None:
    """``pipeline.overlap`` (crop in its processes, torch TV-L1 on each faces file as it lands) gives the
    stage-by-stage outputs; the stages rerun afterwards (what `dvc repro` does) rewrite nothing."""
    params = write_flow_params(project, "params_overlap.yaml", impl="torch", device="cpu")
    ref = fresh_root(project, "ref_overlap", ["faces"])   # crop params unchanged: the reference crops
    run_stage(project, "flow", ref, params)
    root = fresh_root(project, "overlapped")
    proc = subprocess.run([sys.executable, "-m", "pipeline.overlap", "--dataset", DS, "--params", params,
                           "--data-root", str(root)], cwd=project, env=stage_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_outputs(root / DS / "faces", project / "ref" / DS / "faces", "overlap: faces")
    assert_same_outputs(root / DS / "flow", ref / DS / "flow", "overlap: flow")
    before = {out: snapshot(root / DS / out) for out in ("faces", "flow")}
    for stage in ("crop", "flow"):
        run_stage(project, stage, root, params)
    assert {out: snapshot(root / DS / out) for out in ("faces", "flow")} == before
    # on a machine where flow.impl resolves to OpenCV it refuses, naming the setting
    refused = subprocess.run([sys.executable, "-m", "pipeline.overlap", "--dataset", DS, "--params",
                              write_flow_params(project, "params_cv.yaml", impl="opencv"), "--data-root",
                              str(fresh_root(project, "refused"))], cwd=project, env=stage_env(), capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2 and "flow.impl" in refused.stderr and "dvc repro" in refused.stderr


def test_overlap_with_a_failing_video_keeps_the_others(project: Path) -> None:
    """A video the crop stage cannot read fails the command (exit 2, naming it) after the other videos'
    faces and flow are written."""
    params = write_flow_params(project, "params_overlap.yaml", impl="torch", device="cpu")
    root = fresh_root(project, "overlap_bad")
    table = root / DS / "resample" / "frames.csv"
    frames = pd.read_csv(table, dtype=str, keep_default_na=False)
    bad = sorted(frames["video"].unique())[1]
    frames.loc[frames["video"] == bad, "path"] = frames.loc[frames["video"] == bad, "path"] + ".missing"
    frames.to_csv(table, index=False)
    proc = subprocess.run([sys.executable, "-m", "pipeline.overlap", "--dataset", DS, "--params", params,
                           "--data-root", str(root)], cwd=project, env=stage_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert bad in proc.stderr and ".missing" in proc.stderr and "crop stage exited" in proc.stderr
    good = sorted(f"{v}.h5" for v in frames["video"].unique() if v != bad)
    assert h5_files(root / DS / "faces") == good and h5_files(root / DS / "flow") == good
    assert partials(root / DS / "flow") == []


def test_streamed_flow_solves_while_the_next_video_is_still_coming(project: Path) -> None:
    """With a streaming feed, run_torch solves and writes a video while the next has not arrived: the feed
    below hands over the second video only once the first one's flow file is complete (else it times out)."""
    from pipeline.flow import build_task
    from pipeline.tvl1.backend import FlowPlan
    from pipeline.tvl1.batch import run_torch
    from pipeline.io.h5io import file_digest
    from pipeline.core.runner import TaskFeed
    from pipeline.core.stage import make_context

    params = write_flow_params(project, "params_overlap.yaml", impl="torch", device="cpu")
    root = fresh_root(project, "streamed", ["faces"])
    ctx = make_context("flow", DS, project / params, root, preset_dir=project / "configs" / "datasets")
    plan = FlowPlan.from_section(ctx.section())
    faces = sorted((root / DS / "faces").glob("*.h5"))[:2]
    tasks = [build_task(ctx, plan, f) for f in faces]

    def arriving():
        yield tasks[0]
        end = time.monotonic() + 120
        while file_digest(tasks[0].output) != tasks[0].digest:
            if time.monotonic() > end:
                raise AssertionError("the first video's flow was not written while the second was awaited")
            time.sleep(0.05)
        yield tasks[1]

    done = run_torch(TaskFeed(source=arriving()), plan.tvl1, plan.cfg, plan.ident, plan.section)
    assert sorted(done) == sorted(t.video for t in tasks)
    ref = project / "ref_overlap" / DS / "flow"
    if ref.is_dir():   # written by the test above when it ran first
        for t in tasks:
            assert not h5_differences(t.output, ref / t.output.name)


def test_follow_faces_takes_files_as_they_complete_with_the_expected_digest(tmp_path: Path) -> None:
    from pipeline.io.h5io import atomic_h5
    from pipeline.overlap import follow_faces

    def write(video: str, dig: str) -> None:
        with atomic_h5(tmp_path / f"{video}.h5", dig) as f:
            f["x"] = np.zeros(3)

    write("b", "old-digest")   # an earlier run's file, about to be replaced
    producer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    seen: list[tuple[str, float]] = []
    t0 = time.monotonic()
    gen = follow_faces(tmp_path, {"a": "da", "b": "db", "c": "dc"}, producer, poll_s=0.02)
    write("a", "da")
    seen.append((next(gen).stem, time.monotonic() - t0))
    write("b", "db")
    seen.append((next(gen).stem, time.monotonic() - t0))
    rest = list(gen)           # "c" never comes: the generator ends once the producer has exited
    assert [v for v, _ in seen] == ["a", "b"] and rest == []
    assert seen[1][1] < 2.5 and time.monotonic() - t0 >= 2.9, "taken as they came, ended with the producer"
    producer.wait()
