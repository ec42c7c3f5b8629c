"""Cluster and reliability tests on a tiny synthetic dataset (CPU, real processes, no mocks).

* The per-video stages on a real ``distributed.LocalCluster`` (2 worker processes, reached
  through ``parallel.address``) write the same HDF5 files as the local loky run: every
  dataset (values, dtype, shape, chunks, filter) and every attribute, ``m2es_digest``
  included, are compared. Whole-file bytes are not: the LZF filter's output can differ by a
  byte in a chunk between processes although it decompresses to the same data.
* A stage SIGKILLed at a random point (after a random number of its videos are done)
  resumes: the rerun recomputes only the unfinished videos (the finished files keep their
  inode and mtime) and ends with exactly the uninterrupted run's content (features too:
  every batch is padded to ``features.batch_size``, so a video's features do not depend on
  which videos share its batches). The same when only the driver dies and its loky
  workers live on while the rerun starts, and when one dask worker process is killed in
  the middle of a video.
* ``train.fold_workers`` (folds in parallel processes, loky or the dask cluster) gives the
  sequential run's predictions and checkpoints exactly.

Two regression tests pin bugs found here: outputs of a relative data root written by workers
in another directory (the stage now resolves the data root), and features depending on their
batch. The kill point is drawn at random; set ``M2ES_KILL_SEED`` to replay a failing draw.
The cluster's workers run in a directory of their own (as workers of a real cluster do).
"""

from __future__ import annotations

import copy
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import pipeline.io.h5io  # noqa: F401  (registers the faces files' Blosc filter with HDF5 for h5_differences)
from pipeline.core.sandbox import make_project

from helpers.project import tiny_preset

distributed = pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[2]
DS = "synth_scale"
N_VIDEOS = 4
KILL_SEED = int(os.environ.get("M2ES_KILL_SEED", random.SystemRandom().randrange(2**31)))
OUT_DIR = {"crop": "faces", "flow": "flow", "features": "features"}
UPSTREAM = {"crop": [], "flow": ["faces"], "features": ["faces", "flow"]}

PRESET = tiny_preset(DS)
PRESET["overrides"]["synth"].update(n_subjects=2, videos_per_subject=2, duration_s=3.0)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


def _cmd(stage: str, root: Path | None = None, params: str = "params.yaml") -> list[str]:
    cmd = [sys.executable, "-m", f"pipeline.{stage}", "--dataset", DS, "--params", params]
    return cmd + (["--data-root", str(root)] if root is not None else [])


def run_stage(project: Path, stage: str, root: Path | None = None, params: str = "params.yaml"
              ) -> subprocess.CompletedProcess:
    """``python -m pipeline.<stage>`` in the project copy; fails the test with the log tail on error."""
    proc = subprocess.run(_cmd(stage, root, params), cwd=project, env=_env(), capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"{stage} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def h5_files(folder: Path) -> list[str]:
    """Names of the complete per-video files of a stage folder (temporary files excluded)."""
    return sorted(p.name for p in folder.glob("*.h5")) if folder.is_dir() else []


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.partial"))


def _close(x: np.ndarray, y: np.ndarray, rtol: float) -> bool:
    if rtol == 0:
        return bool(np.array_equal(x, y))
    scale = float(np.abs(y).max()) if y.size else 0.0
    return bool(np.allclose(x, y, rtol=0, atol=rtol * scale))


def _attrs(obj: h5py.HLObject) -> dict[str, object]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in obj.attrs.items()}


def h5_differences(a: Path, b: Path, rtol: float = 0.0) -> list[str]:
    """Differences between two per-video files: every dataset (dtype, shape, chunks, filter, values: equal,
    or within ``rtol`` of the largest magnitude when given) and every attribute (``m2es_digest``,
    ``m2es_params`` and the stage's own) of the file and its datasets."""
    diffs: list[str] = []
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        names: list[str] = []
        fa.visit(lambda n: names.append(n) if isinstance(fa[n], h5py.Dataset) else None)
        other: list[str] = []
        fb.visit(lambda n: other.append(n) if isinstance(fb[n], h5py.Dataset) else None)
        if sorted(names) != sorted(other):
            diffs.append(f"datasets {sorted(names)} vs {sorted(other)}")
        for n in sorted(set(names) & set(other)):
            x, y = fa[n], fb[n]
            layout = [(d.dtype, d.shape, d.chunks, d.compression) for d in (x, y)]
            same = layout[0] == layout[1] and _close(x[()], y[()], rtol)
            if not same or _attrs(x) != _attrs(y):
                err = np.abs(x[()].astype(np.float64) - y[()]).max() if layout[0] == layout[1] else None
                diffs.append(f"dataset {n}: {layout[0]} vs {layout[1]}, values equal within rtol {rtol}: {same} "
                             f"(max abs difference {err})")
        ax, ay = _attrs(fa), _attrs(fb)
        for key in sorted(set(ax) | set(ay)):
            if ax.get(key) != ay.get(key):
                diffs.append(f"attribute {key}: {ax.get(key)!r} vs {ay.get(key)!r}")
    return diffs


def assert_same_outputs(folder: Path, reference: Path, context: str, rtol: float = 0.0) -> None:
    """Same file names, and per file the same datasets, values and attributes (``m2es_digest`` included).

    Whole-file bytes are not compared: h5py writes no timestamps, but its LZF filter (the flow stage's
    default) does not always compress a chunk to the same bytes (seen: one chunk of a faces file
    one byte longer on a dask worker, with identical decompressed data).
    """
    names = h5_files(reference)
    assert len(names) == N_VIDEOS, f"reference {reference} is incomplete: {names}"
    assert h5_files(folder) == names, f"{context}: files {h5_files(folder)} vs reference {names}"
    for name in names:
        diffs = h5_differences(folder / name, reference / name, rtol)
        assert not diffs, f"{context}: {name} differs from the uninterrupted loky run: {diffs}"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every complete file: a file rewritten by a rerun changes both."""
    return {n: ((folder / n).stat().st_ino, (folder / n).stat().st_mtime_ns) for n in h5_files(folder)}


def fresh_root(project: Path, name: str, upstream: list[str] = ()) -> Path:
    """A data root ``<project>/<name>`` (absolute) with the resample tables and the reference's upstream outputs."""
    root = project / name
    base = root / DS
    base.mkdir(parents=True)
    shutil.copytree(project / "data" / DS / "resample", base / "resample")
    for out in upstream:
        shutil.copytree(project / "ref" / DS / out, base / out, copy_function=shutil.copy2)
    return root


def write_params(project: Path, name: str, **parallel) -> str:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["parallel"].update(parallel)
    (project / name).write_text(yaml.safe_dump(params, sort_keys=False))
    return name


def wait_group_gone(pgid: int, timeout: float = 30.0) -> None:
    """Wait until no process of the process group ``pgid`` is left."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes of group {pgid} still alive {timeout} s after SIGKILL")


def kill_group(pgid: int) -> None:
    """SIGKILL every process of the group (a stage we started in its own session)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository with a 4-video synthetic dataset and the reference (loky) crop/flow/features."""
    root = make_project(tmp_path_factory.mktemp("scaling"), DS, PRESET,
                        {"parallel": {"backend": "loky", "n_jobs": 2, "address": None}})
    for stage in ("synth", "ingest", "resample"):
        run_stage(root, stage)
    ref = fresh_root(root, "ref")
    for stage in ("crop", "flow", "features"):
        run_stage(root, stage, ref)
        assert len(h5_files(ref / DS / OUT_DIR[stage])) == N_VIDEOS
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, Path]]:
    """A LocalCluster of 2 single-threaded worker processes whose working directory is not the project's."""
    elsewhere = tmp_path_factory.mktemp("worker_cwd")
    before = os.getcwd()
    os.chdir(elsewhere)        # workers (and the nanny's restarts) start here, like workers of a real cluster
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("OMP_NUM_THREADS", "1")
            with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                          dashboard_address=None) as c:
                yield c, elsewhere
    finally:
        os.chdir(before)


def _transitions(address: str) -> int:
    with distributed.Client(address, timeout=30) as client:
        return int(client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter))


def _worker_pids(address: str) -> dict[str, int]:
    with distributed.Client(address, timeout=30) as client:
        return client.run(os.getpid)


# ------------------------------------------------------------------------------ a. dask = loky


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
        proc = subprocess.run(_cmd("crop", None, params), cwd=project, env=_env(), capture_output=True, text=True,
                              timeout=300)
        landed_elsewhere = h5_files(elsewhere / "data" / DS / "faces")
        # right: every output in the project's data/, or a clear refusal naming the working directory
        assert (proc.returncode == 0 and len(h5_files(faces)) == N_VIDEOS) or \
            (proc.returncode == 2 and "director" in proc.stderr), \
            f"rc {proc.returncode}, {len(h5_files(faces))} files in {faces}, {len(landed_elsewhere)} in the " \
            f"workers' directory {elsewhere}"
    finally:
        shutil.rmtree(faces, ignore_errors=True)
        shutil.rmtree(elsewhere / "data", ignore_errors=True)


# ------------------------------------------------------------------------------ b. kills


def _start(project: Path, stage: str, root: Path, params: str = "params.yaml") -> subprocess.Popen:
    """Start a stage in its own session (its process group is the stage); its log goes to ``<root>/<stage>.log``."""
    with open(root / f"{stage}.log", "w") as log:
        return subprocess.Popen(_cmd(stage, root, params), cwd=project, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=log, start_new_session=True)


def _log(root: Path, stage: str) -> str:
    return (root / f"{stage}.log").read_text()[-3000:]


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
        proc = _start(project, stage, root)
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
    proc = _start(project, "crop", root)
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


def _open_partial(pids: dict[str, int]) -> tuple[str, int, str] | None:
    """(worker, pid, video) of a worker that has a temporary output file open (is mid-video)."""
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
    c, _ = cluster
    params = write_params(project, "params_dask.yaml", backend="dask", address=c.scheduler_address)
    root = fresh_root(project, "kill_worker")
    out = root / DS / "faces"
    pids = _worker_pids(c.scheduler_address)
    assert len(pids) == 2
    proc = _start(project, "crop", root, params)
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
            assert proc.poll() is None, f"crop ended before a worker could be killed mid-video: {_log(root, 'crop')}"
            assert time.monotonic() < end, "no worker was seen mid-video"
            time.sleep(0.002)
        worker, pid, video = victim
        finished = snapshot(out)
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=240)
        err = _log(root, "crop")
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


# ------------------------------------------------------------------------------ 2. LOSO folds in parallel

FOLD_VIDEOS = {"a1": ("s1", 150), "a2": ("s1", 90), "b1": ("s2", 160), "c1": ("s3", 140)}
FOLD_ROWS = [("a1", "s1", 40, 60, "macro"), ("a1", "s1", 150, 162, "micro"), ("a2", "s1", 20, 50, "macro"),
             ("b1", "s2", 100, 140, "macro"), ("c1", "s3", 30, 42, "micro"), ("c1", "s3", 150, 200, "macro")]


def _tiny_training_set(root: Path) -> None:
    """Random features with the annotated intervals marked, tables, and a small IAENet preset (as test_train)."""
    from models.iaenet import load_model_preset

    rng = np.random.default_rng(0)
    feats = root / "data" / "tiny" / "features"
    feats.mkdir(parents=True)
    for video, (_, n) in FOLD_VIDEOS.items():
        rgb = rng.normal(0, 0.3, size=(n, 8)).astype(np.float32)
        for v, _, on, off, kind in FOLD_ROWS:
            if v == video:
                rgb[on // 2:off // 2 + 1, 0 if kind == "macro" else 1] += 2.0
        with h5py.File(feats / f"{video}.h5", "w") as f:
            f["rgb"], f["flow"] = rgb, rng.normal(size=(n, 8)).astype(np.float32)
            f.attrs.update({"backbone": "i3d", "weights_rgb": "random-init", "weights_flow": "random-init",
                            "stride": 2, "clip": 8, "m2es_digest": f"dig-{video}", "m2es_complete": True})
    res = root / "data" / "tiny" / "resample"
    res.mkdir(parents=True)
    ann = pd.DataFrame(FOLD_ROWS, columns=["video", "subject", "onset", "offset", "type"])
    ann["apex"] = (ann.onset + ann.offset) // 2
    for col in ("onset", "apex", "offset"):
        ann[f"source_{col}"] = ann[col]
    ann.to_csv(res / "annotations.csv", index=False)
    # a listed video without features (too short for a clip): the stage warns of it and trains without it
    videos = [(v, subject) for v, (subject, _) in FOLD_VIDEOS.items()] + [("a3_short", "s1")]
    pd.DataFrame(videos, columns=["video", "subject"]).to_csv(res / "videos.csv", index=False)
    preset = copy.deepcopy(load_model_preset("iaenet_casme2"))
    preset.update(name="iaenet_tiny")
    preset["model"]["base"]["dim"] = 16
    preset["model"]["encoder"]["dims"] = [16, 16, 32]
    preset["model"]["heads"]["dim"] = 16
    (root / "configs").mkdir(exist_ok=True)
    (root / "configs" / "iaenet_tiny.yaml").write_text(yaml.safe_dump(preset))


def _train_outputs(runs: Path) -> tuple[bytes, dict[str, dict[str, torch.Tensor]]]:
    blobs = {d.name: torch.load(d / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
             for d in sorted(runs.iterdir()) if (d / "model.pt").is_file()}
    return (runs / "predictions.csv").read_bytes(), blobs


def test_folds_in_parallel_processes_equal_the_sequential_run(cluster, workspace, caplog) -> None:
    c, _ = cluster
    caplog.set_level(logging.INFO)
    _tiny_training_set(workspace.root)
    workspace.preset("tiny", layout="generic", root="data/raw/tiny", model_preset="iaenet_tiny")
    workspace.set_params("train", epochs=3, warmup_epochs=1, batch_size=4, lr=3e-3, device="cpu", seed=3)
    runs = workspace.out("tiny", "runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # the fold processes run one torch thread each (1 core per worker here)
    try:
        workspace.run("train", "tiny")
    finally:
        torch.set_num_threads(threads)
    seq_preds, seq_models = _train_outputs(runs)
    assert set(seq_models) == {"fold_s1", "fold_s2", "fold_s3", "final"}
    assert len(pd.read_csv(runs / "predictions.csv")) > 0

    for name, parallel in (("loky", {"backend": "loky", "n_jobs": 2, "address": None}),
                           ("dask", {"backend": "dask", "n_jobs": 2, "address": c.scheduler_address})):
        shutil.move(runs, runs.with_name(f"runs_before_{name}"))
        workspace.set_params("parallel", **parallel)
        workspace.set_params("train", fold_workers=2)
        caplog.clear()
        workspace.run("train", "tiny")
        model_lines = (re.match(r"(\w+): \d+ training windows, ", r.getMessage()) for r in caplog.records)
        trained = {m.group(1) for m in model_lines if m}
        assert trained == set(seq_models), f"{name}: the fold processes' lines are not in the stage's log"
        left_out = [r for r in caplog.records if r.getMessage().startswith("a3_short: no features file")]
        assert len(left_out) == 1, f"{name}: the left-out video is reported {len(left_out)} times, not once"
        preds, models = _train_outputs(runs)
        assert preds == seq_preds, f"{name}: predictions.csv differs from the sequential run"
        assert set(models) == set(seq_models)
        for fold, state in models.items():
            for key, tensor in state.items():
                assert torch.equal(tensor, seq_models[fold][key]), f"{name}: {fold} {key} differs"
    assert (runs / "live" / "fold_s2" / "plots" / "metrics" / "train" / "loss.tsv").is_file()


def test_fold_workers_must_be_positive(workspace) -> None:
    from pipeline.errors import ConfigError

    _tiny_training_set(workspace.root)
    workspace.preset("tiny", layout="generic", root="data/raw/tiny", model_preset="iaenet_tiny")
    workspace.set_params("train", fold_workers=0, device="cpu", epochs=1, warmup_epochs=0)
    with pytest.raises(ConfigError, match="train.fold_workers must be >= 1"):
        workspace.run("train", "tiny")


def test_fold_devices_round_robin_only_for_local_processes_on_cuda() -> None:
    from pipeline.train import fold_devices

    assert fold_devices(torch.device("cpu"), 3, "loky") == ["cpu"] * 3
    assert fold_devices(torch.device("cpu"), 2, "dask", "auto") == ["auto"] * 2   # each worker resolves its own
    n = torch.cuda.device_count()
    if n:
        assert fold_devices(torch.device("cuda:0"), 3, "loky") == ["cuda:0"] * 3  # an explicit card is kept
        expected = [f"cuda:{i % n}" for i in range(3)] if n > 1 else ["cuda"] * 3
        assert fold_devices(torch.device("cuda"), 3, "loky") == expected


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_folds_on_two_gpus_equal_one_gpu(workspace) -> None:
    """One fold per GPU (cuda:0, cuda:1) against all folds on one GPU, sequentially: same predictions
    (to fp32 rounding: two cards may pick different kernels) and the same folds trained."""
    _tiny_training_set(workspace.root)
    workspace.preset("tiny", layout="generic", root="data/raw/tiny", model_preset="iaenet_tiny")
    workspace.set_params("train", epochs=3, warmup_epochs=1, batch_size=4, lr=3e-3, device="cuda", seed=3)
    runs = workspace.out("tiny", "runs")
    workspace.run("train", "tiny")
    one = pd.read_csv(runs / "predictions.csv")
    shutil.move(runs, runs.with_name("runs_one_gpu"))
    workspace.set_params("parallel", backend="loky", n_jobs=2)
    workspace.set_params("train", fold_workers=2)
    workspace.run("train", "tiny")
    two = pd.read_csv(runs / "predictions.csv")
    pd.testing.assert_frame_equal(two, one, check_exact=False, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ c. crop and flow at once


def write_flow_params(project: Path, name: str, **flow) -> str:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["flow"].update(flow)
    (project / name).write_text(yaml.safe_dump(params, sort_keys=False))
    return name


def test_overlap_writes_what_the_stages_write_and_they_then_skip(project: Path) -> None:
    """``pipeline.overlap`` (crop in its processes, torch TV-L1 on each faces file as it lands) gives the
    stage-by-stage outputs; the stages rerun afterwards (what `dvc repro` does) rewrite nothing."""
    params = write_flow_params(project, "params_overlap.yaml", impl="torch", device="cpu")
    ref = fresh_root(project, "ref_overlap", ["faces"])   # crop params unchanged: the reference crops
    run_stage(project, "flow", ref, params)
    root = fresh_root(project, "overlapped")
    proc = subprocess.run([sys.executable, "-m", "pipeline.overlap", "--dataset", DS, "--params", params,
                           "--data-root", str(root)], cwd=project, env=_env(), capture_output=True, text=True,
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
                              str(fresh_root(project, "refused"))], cwd=project, env=_env(), capture_output=True,
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
                           "--data-root", str(root)], cwd=project, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert bad in proc.stderr and ".missing" in proc.stderr and "crop stage exited" in proc.stderr
    good = sorted(f"{v}.h5" for v in frames["video"].unique() if v != bad)
    assert h5_files(root / DS / "faces") == good and h5_files(root / DS / "flow") == good
    assert partials(root / DS / "flow") == []


def test_streamed_flow_solves_while_the_next_video_is_still_coming(project: Path) -> None:
    """With a streaming feed, run_torch solves and writes a video while the next has not arrived: the feed
    below hands over the second video only once the first one's flow file is complete (else it times out)."""
    from pipeline.flow import FlowPlan, build_task, run_torch
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
