"""The per-video stages on a real ``distributed.LocalCluster`` (2 worker processes, reached through
``parallel.address``) write the same HDF5 files as the local loky run: every dataset (values, dtype,
shape, chunks, filter) and every attribute, ``m2es_digest`` included, are compared. Whole-file bytes
are not: the LZF filter's output can differ by a byte in a chunk between processes although it
decompresses to the same data.

A regression test pins a bug found here: outputs of a relative data root written by workers in
another directory (the stage now resolves the data root). The cluster's workers run in a directory
of their own (as workers of a real cluster do). Fixtures: tests/scaling/conftest.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.h5compare import h5_files
from helpers.scaling import (DS, N_VIDEOS, OUT_DIR, assert_same_outputs, fresh_root, run_stage, stage_cmd,
                             write_params)
from helpers.subprocess_stage import stage_env

distributed = pytest.importorskip("distributed")


def _transitions(address: str) -> int:
    with distributed.Client(address, timeout=30) as client:
        return int(client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter))


def test_dask_cluster_gives_the_loky_outputs(project: Path, cluster) -> None:
    c, _ = cluster
    params = write_params(project, "params_dask.yaml", backend="dask", address=c.scheduler_address)
    root = fresh_root(project, "dask")
    for stage in ("crop", "flow"):    # (features batch across videos in one process whatever the backend)
        before = _transitions(c.scheduler_address)
        run_stage(project, stage, root, params)
        assert _transitions(c.scheduler_address) - before >= N_VIDEOS, f"{stage}: the cluster ran no tasks"
        assert_same_outputs(root / DS / OUT_DIR[stage], project / "ref" / DS / OUT_DIR[stage], f"dask {stage}")


def test_relative_data_root_with_workers_elsewhere(project: Path, cluster) -> None:
    c, elsewhere = cluster
    params = write_params(project, "params_dask.yaml", backend="dask", address=c.scheduler_address)
    faces = project / "data" / DS / "faces"
    try:
        proc = subprocess.run(stage_cmd("crop", None, params), cwd=project, env=stage_env(), capture_output=True,
                              text=True, timeout=300)
        landed_elsewhere = h5_files(elsewhere / "data" / DS / "faces")
        # right: every output in the project's data/, or a clear refusal naming the working directory
        assert (proc.returncode == 0 and len(h5_files(faces)) == N_VIDEOS) or \
            (proc.returncode == 2 and "director" in proc.stderr), \
            f"rc {proc.returncode}, {len(h5_files(faces))} files in {faces}, {len(landed_elsewhere)} in the " \
            f"workers' directory {elsewhere}"
    finally:
        shutil.rmtree(faces, ignore_errors=True)
        shutil.rmtree(elsewhere / "data", ignore_errors=True)

