"""A stage SIGKILLed at a random point (after a random number of its videos are done) resumes: the
rerun recomputes only the unfinished videos (the finished files keep their inode and mtime) and
ends with exactly the uninterrupted run's content (features too: every batch is padded to
``features.batch_size``, so a video's features do not depend on which videos share its batches).
The same when only the driver dies and its loky workers live on while the rerun starts, and when
one dask worker process is killed in the middle of a video.

The kill point is drawn at random; set ``M2ES_KILL_SEED`` to replay a failing draw.
Fixtures: tests/scaling/conftest.py.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers.h5compare import h5_differences, h5_files, partials, snapshot
from helpers.scaling import (DS, KILL_SEED, N_VIDEOS, OUT_DIR, UPSTREAM, assert_same_outputs, fresh_root, run_stage,
                             start_stage, write_params)
from helpers.subprocess_stage import kill_group, log_tail, wait_group_gone


def _wait_for_outputs(proc: subprocess.Popen, folder: Path, k: int, what: str, log: str,
                      timeout: float = 120.0) -> None:
    """Poll until ``k`` complete outputs exist; fail if the stage ends first."""
    end = time.monotonic() + timeout
    while len(h5_files(folder)) < k:
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the stage ended (rc {proc.returncode}) before {k} outputs existed: "
                                 f"{Path(log).read_text()[-3000:]}")
        if time.monotonic() > end:
            raise AssertionError(f"{what}: {k} outputs did not appear within {timeout} s")
        time.sleep(0.002)


@pytest.mark.parametrize("stage", ["crop", "flow", "features"])
def test_stage_killed_at_a_random_point_resumes(project: Path, stage: str) -> None:
    """SIGKILL the whole stage (driver and its worker processes) after k of the videos, then rerun."""
    k = random.Random(f"{KILL_SEED}:{stage}").randint(1, N_VIDEOS - 1)
    what = f"{stage} killed after {k} videos (M2ES_KILL_SEED={KILL_SEED})"
    # Two worker processes finish videos in near-simultaneous pairs: with k = N - 1 the last video
    # can land between the k-th output and the kill (seen once in CI). Such a run interrupted
    # nothing, so it is drawn again on a fresh folder; only a kill mid-run is checked.
    for attempt in range(3):
        root = fresh_root(project, f"kill_{stage}_{attempt}", UPSTREAM[stage])
        out = root / DS / OUT_DIR[stage]
        proc = start_stage(project, stage, root)
        try:
            _wait_for_outputs(proc, out, k, what, str(root / f"{stage}.log"))
            kill_group(proc.pid)
            proc.wait(timeout=30)
            wait_group_gone(proc.pid)
        finally:
            kill_group(proc.pid)
        finished = snapshot(out)
        if len(finished) < N_VIDEOS:
            break
    assert k <= len(finished) < N_VIDEOS, f"{what}: {len(finished)} finished at the kill in 3 tries"
    for name in finished:   # a file with the final name is always complete and right
        assert not h5_differences(out / name, project / "ref" / DS / OUT_DIR[stage] / name), what

    rerun = run_stage(project, stage, root)
    assert f"{len(finished)} of {N_VIDEOS} videos already complete" in rerun.stderr, what
    assert {n: v for n, v in snapshot(out).items() if n in finished} == finished, \
        f"{what}: the rerun rewrote finished files"
    assert partials(out) == [], f"{what}: temporary files left: {partials(out)}"
    assert_same_outputs(out, project / "ref" / DS / OUT_DIR[stage], what, 0)


def test_features_of_a_video_do_not_depend_on_the_others(project: Path) -> None:
    root = fresh_root(project, "features_alone", UPSTREAM["features"])
    out = root / DS / "features"
    shutil.copytree(project / "ref" / DS / "features", out)
    first = h5_files(out)[0]
    (out / first).unlink()                    # as if a kill had stopped the run right before this video
    run_stage(project, "features", root)
    assert not h5_differences(out / first, project / "ref" / DS / "features" / first)


def test_driver_killed_while_its_workers_live_on(project: Path) -> None:
    """SIGKILL only the driver of `pipeline.crop` (loky): its workers finish their videos as orphans
    while the rerun starts at once; atomic writes keep every file complete and right."""
    k = random.Random(f"{KILL_SEED}:driver").randint(1, N_VIDEOS - 2)
    what = f"crop driver killed after {k} videos (M2ES_KILL_SEED={KILL_SEED})"
    root = fresh_root(project, "kill_driver")
    out = root / DS / "faces"
    proc = start_stage(project, "crop", root)
    try:
        _wait_for_outputs(proc, out, k, what, str(root / "crop.log"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        finished = snapshot(out)
        rerun = run_stage(project, "crop", root)          # orphaned loky workers may still be writing
    finally:
        kill_group(proc.pid)                              # the orphans are in the killed driver's session
    wait_group_gone(proc.pid)
    assert "videos already complete" in rerun.stderr, what
    assert {n: v for n, v in snapshot(out).items() if n in finished} == finished, what
    for name in partials(out):    # only an orphan's abandoned write may be left, never a final name
        assert name.startswith(".") and name.endswith(".partial")
    assert_same_outputs(out, project / "ref" / DS / "faces", what)


def _worker_pids(address: str) -> dict[str, int]:
    import distributed

    with distributed.Client(address, timeout=30) as client:
        return client.run(os.getpid)


def _open_partial(pids: dict[str, int]) -> tuple[str, int, str] | None:
    """(worker, pid, video) of a worker that has a temporary output file open (is mid-video)."""
    import psutil

    for worker, pid in pids.items():
        try:
            files = psutil.Process(pid).open_files()
        except psutil.Error:
            continue
        for f in files:
            name = Path(f.path).name
            if name.endswith(".partial"):
                return worker, pid, name[1:].split(".h5.")[0]
    return None


def test_dask_worker_killed_mid_video(project: Path, cluster) -> None:
    """SIGKILL one worker process of the cluster while it writes a video: the stage still succeeds,
    the video is recomputed elsewhere, and no other video's result is lost or redone."""
    pytest.importorskip("psutil")
    c, _ = cluster
    params = write_params(project, "params_dask.yaml", backend="dask", address=c.scheduler_address)
    root = fresh_root(project, "kill_worker")
    out = root / DS / "faces"
    pids = _worker_pids(c.scheduler_address)
    assert len(pids) == 2
    proc = start_stage(project, "crop", root, params)
    try:
        end = time.monotonic() + 120
        victim = None
        while victim is None:
            busy = _open_partial(pids) if h5_files(out) else None
            if busy is not None and len(h5_files(out)) < N_VIDEOS - 1:
                # freeze the worker, then make sure it is still mid-video (it may have finished
                # the file between the look and the stop); only then kill it
                os.kill(busy[1], signal.SIGSTOP)
                if _open_partial({busy[0]: busy[1]}) == busy and not (out / f"{busy[2]}.h5").exists():
                    victim = busy
                    break
                os.kill(busy[1], signal.SIGCONT)
            assert proc.poll() is None, \
                f"crop ended before a worker could be killed mid-video: {log_tail(root, 'crop')}"
            assert time.monotonic() < end, "no worker was seen mid-video"
            time.sleep(0.002)
        worker, pid, video = victim
        finished = snapshot(out)
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=240)
        err = log_tail(root, "crop")
    finally:
        kill_group(proc.pid)
    assert proc.returncode == 0, f"crop failed after worker {worker} (pid {pid}) died on {video}: {err[-3000:]}"
    assert f"{video}.h5" not in finished
    assert {n: v for n, v in snapshot(out).items() if n in finished} == finished, \
        f"videos finished before worker {worker} died were recomputed"
    assert_same_outputs(out, project / "ref" / DS / "faces", f"worker {worker} killed on {video}")
    # the dead worker's temporary file stays until the stage's next run removes it
    again = run_stage(project, "crop", root, params)
    assert f"{N_VIDEOS} of {N_VIDEOS} videos already complete" in again.stderr
    assert partials(out) == []
