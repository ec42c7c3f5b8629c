"""Fixtures of the scaling tests, built once per session: the project copy with its 4-video synthetic
dataset and reference (loky) outputs, and a local dask cluster."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from helpers.h5compare import h5_files
from helpers.scaling import DS, N_VIDEOS, OUT_DIR, PER_DATASET, PRESET, fresh_root, run_stage


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository with a 4-video synthetic dataset and the reference (loky) crop/flow/features
    in ``<project>/ref``. Tests write their own data roots and params files beside it, each under its own name."""
    from pipeline.core.sandbox import make_project

    root = make_project(tmp_path_factory.mktemp("scaling"), DS, PRESET,
                        {"parallel": {"backend": "loky", "n_jobs": 2, "address": None}}, PER_DATASET)
    for stage in ("synth", "ingest", "resample"):
        run_stage(root, stage)
    ref = fresh_root(root, "ref")
    for stage in ("crop", "flow", "features"):
        run_stage(root, stage, ref)
        assert len(h5_files(ref / DS / OUT_DIR[stage])) == N_VIDEOS
    return root


@pytest.fixture(scope="session")
def _local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, Path]]:
    distributed = pytest.importorskip("distributed")
    elsewhere = tmp_path_factory.mktemp("worker_cwd")
    before = os.getcwd()
    os.chdir(elsewhere)        # workers start here, like workers of a real cluster
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                      env={"OMP_NUM_THREADS": "1"}) as c:
            os.chdir(before)   # the tests' `cluster` fixture goes back there for each test
            yield c, elsewhere
    finally:
        os.chdir(before)


@pytest.fixture
def cluster(_local_cluster, monkeypatch: pytest.MonkeyPatch) -> tuple[object, Path]:
    """A LocalCluster of 2 single-threaded worker processes whose working directory is not the project's
    (the cluster is shared by the session; during a test the current directory is the workers', so a
    worker the nanny restarts starts there too)."""
    monkeypatch.chdir(_local_cluster[1])
    return _local_cluster
