"""The run-many-videos helper: resume, atomicity, error collection, digests, backends."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers.params import assert_section_refuses
from helpers.runner_funcs import calls, make_tasks, write_video
from pipeline.errors import ConfigError, StageFailed
from pipeline.io.h5io import file_digest
from pipeline.core.runner import ALREADY_COMPLETE, ParallelParams, _guarded, map_videos, pending

VIDEOS = [f"v{i}" for i in range(6)]
TESTS = Path(__file__).resolve().parents[1]


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.h5"))}


def _stored(folder: Path) -> dict[str, object]:
    """Per file: every attribute, and per dataset its layout and the exact stored bytes of every chunk.

    What a reader can tell apart, byte for byte. Not where HDF5 put the chunks in the file: in a
    dask worker process the library occasionally places the same chunks at other offsets (seen under
    the full test suite: a file 96 bytes longer, chunk bytes and content identical).
    """
    out: dict[str, object] = {}
    for path in sorted(folder.glob("*.h5")):
        with h5py.File(path, "r") as f:
            attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
            x = f["x"]
            plist = x.id.get_create_plist()
            filters = [plist.get_filter(i)[:3] for i in range(plist.get_nfilters())]
            chunks = [hashlib.sha256(x.id.read_direct_chunk(x.id.get_chunk_info(i).chunk_offset)[1]).hexdigest()
                      for i in range(x.id.get_num_chunks())]
            out[path.name] = (attrs, x.dtype.str, x.shape, x.chunks, filters, chunks)
    return out


def _reference(tmp_path: Path) -> dict[str, str]:
    out = tmp_path / "reference"
    map_videos(write_video, make_tasks(out, VIDEOS, tmp_path / "ref_calls"), stage="t",
               parallel=ParallelParams("sequential"))
    return _hashes(out)


def test_outputs_are_byte_reproducible(tmp_path):
    assert _reference(tmp_path) == _reference(tmp_path / "again")


def test_resume_after_failure_is_identical_and_recomputes_only_unfinished(tmp_path):
    ref = _reference(tmp_path)
    out, log = tmp_path / "out", tmp_path / "calls"
    with pytest.raises(StageFailed) as info:
        map_videos(write_video, make_tasks(out, VIDEOS, log, fail_user=["v2"], fail_bug=["v4"]), stage="crop",
                   parallel=ParallelParams("sequential"))
    assert info.value.failures == {"v2": "video v2: frames missing; restore them", "v4": "ValueError: boom"}
    msg = str(info.value)
    assert msg.splitlines()[0] == "crop: 2 video(s) failed:"
    assert "  v2: video v2: frames missing; restore them" in msg and "  v4: ValueError: boom" in msg
    assert sorted(p.name for p in out.glob("*.h5")) == ["v0.h5", "v1.h5", "v3.h5", "v5.h5"]   # others went on
    assert not list(out.glob(".*partial"))

    before = calls(log)
    results = map_videos(write_video, make_tasks(out, VIDEOS, log), stage="crop", parallel=ParallelParams("sequential"))
    assert sorted(results) == ["v2", "v4"]
    assert calls(log) == sorted(before + ["v2", "v4"])
    assert _hashes(out) == ref


def test_a_rescheduled_task_whose_output_is_complete_is_not_redone(tmp_path):
    """A scheduler may re-run a finished task (dask, after the worker holding its result died):
    the task finds its output complete and returns without rewriting it."""
    out, log = tmp_path / "out", tmp_path / "calls"
    task = make_tasks(out, ["v0"], log)[0]
    assert _guarded(write_video, task) == ("v0", True, 16)
    stat = (out / "v0.h5").stat()
    assert _guarded(write_video, task) == ("v0", True, ALREADY_COMPLETE)
    assert calls(log) == ["v0"]
    after = (out / "v0.h5").stat()
    assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    # a stale output (other digest) is recomputed as before
    stale = make_tasks(out, ["v0"], log, version="v2")[0]
    assert _guarded(write_video, stale) == ("v0", True, 16)
    assert calls(log) == ["v0", "v0"]


def test_resume_after_kill_mid_run(tmp_path):
    """A run killed (SIGKILL) inside video v3 leaves no v3 file; the rerun does v3..v5 only, same bytes."""
    ref = _reference(tmp_path)
    out, log = tmp_path / "out", tmp_path / "calls"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from pathlib import Path
        from helpers.runner_funcs import make_tasks, write_video
        from pipeline.core.runner import ParallelParams, map_videos
        tasks = make_tasks(Path({str(out)!r}), {VIDEOS!r}, Path({str(log)!r}), kill=["v3"])
        map_videos(write_video, tasks, stage="t", parallel=ParallelParams("sequential"))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9
    assert sorted(p.name for p in out.glob("*.h5")) == ["v0.h5", "v1.h5", "v2.h5"]
    map_videos(write_video, make_tasks(out, VIDEOS, log), stage="t", parallel=ParallelParams("sequential"))
    assert calls(log) == ["v0", "v1", "v2", "v3", "v3", "v4", "v5"]
    assert _hashes(out) == ref


def test_fail_fast_stops_at_first_failure(tmp_path):
    out, log = tmp_path / "out", tmp_path / "calls"
    with pytest.raises(StageFailed) as info:
        map_videos(write_video, make_tasks(out, VIDEOS, log, fail_user=["v1", "v3"]), stage="t",
                   parallel=ParallelParams("sequential", fail_fast=True))
    assert list(info.value.failures) == ["v1"]
    assert calls(log) == ["v0", "v1"]


def test_digest_mismatch_reruns(tmp_path):
    out, log = tmp_path / "out", tmp_path / "calls"
    seq = ParallelParams("sequential")
    tasks = make_tasks(out, VIDEOS[:3], log, version="v1")
    map_videos(write_video, tasks, stage="t", parallel=seq)
    assert map_videos(write_video, tasks, stage="t", parallel=seq) == {}          # all complete: skipped
    assert len(calls(log)) == 3
    changed = make_tasks(out, VIDEOS[:3], log, version="v2")
    changed[0] = tasks[0]                                                         # v0 keeps its digest
    assert sorted(map_videos(write_video, changed, stage="t", parallel=seq)) == ["v1", "v2"]
    assert all(file_digest(t.output) == t.digest for t in changed)
    todo, done = pending(changed)
    assert todo == [] and len(done) == 3


def test_tasks_without_output_always_run(tmp_path):
    from pipeline.core.runner import VideoTask

    tasks = [VideoTask("a", None, "", {}), VideoTask("b", None, "", {})]
    assert map_videos(lambda t: t.video.upper(), tasks, stage="t", parallel=ParallelParams("sequential")) == {
        "a": "A", "b": "B"}


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_process_and_thread_backends_give_the_same_outputs(tmp_path, backend):
    ref = _reference(tmp_path)
    out, log = tmp_path / backend, tmp_path / f"{backend}_calls"
    results = map_videos(write_video, make_tasks(out, VIDEOS, log), stage="t", parallel=ParallelParams(backend, 2))
    assert results == {v: 16 for v in VIDEOS}
    assert _hashes(out) == ref
    with pytest.raises(StageFailed) as info:
        map_videos(write_video, make_tasks(tmp_path / f"{backend}2", VIDEOS, log, fail_bug=["v5"]), stage="t",
                   parallel=ParallelParams(backend, 2))
    assert info.value.failures == {"v5": "ValueError: boom"}
    assert len(list((tmp_path / f"{backend}2").glob("*.h5"))) == 5


def _worker_lines(caplog) -> list[str]:
    return sorted(r.getMessage() for r in caplog.records if r.name == "pipeline.tests_runner_funcs")


def _expected_lines(warned: str) -> list[str]:
    return sorted([f"video {v}: 16 frames written" for v in VIDEOS] + [f"video {warned}: a warning"])


@pytest.mark.parametrize("backend", ["loky", "threading", "sequential"])
def test_what_tasks_log_reaches_the_driver_log_once(tmp_path, caplog, backend):
    """A loky worker has no log of its own: its lines (INFO included, tracebacks as text) come back
    with the results; threads and the sequential runner log directly, and nothing comes twice."""
    caplog.set_level(logging.INFO)
    map_videos(write_video, make_tasks(tmp_path / "out", VIDEOS, tmp_path / "calls", warn=["v3"]), stage="t",
               parallel=ParallelParams(backend, 2))
    lines = _worker_lines(caplog)
    assert [line.split("\n")[0] for line in lines] == _expected_lines("v3")
    assert "ValueError: odd frame" in caplog.text       # the warning's traceback
    assert logging.getLogger("pipeline").level == logging.NOTSET and logging.getLogger("pipeline").propagate


def test_dask_backend_on_a_local_cluster(tmp_path, caplog):
    distributed = pytest.importorskip("distributed")
    _reference(tmp_path)
    ref = _stored(tmp_path / "reference")
    out, log = tmp_path / "dask", tmp_path / "dask_calls"
    # two threads per worker, as `dask worker` runs tasks: each task's log lines come back once, with it
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        cfg = ParallelParams("dask", 2, address=cluster.scheduler_address)
        caplog.set_level(logging.INFO)
        caplog.clear()              # the reference run above logged in this process
        results = map_videos(write_video, make_tasks(out, VIDEOS, log, warn=["v1"]), stage="t", parallel=cfg)
        assert results == {v: 16 for v in VIDEOS}
        assert [line.split("\n")[0] for line in _worker_lines(caplog)] == _expected_lines("v1")  # the workers' log
        with pytest.raises(StageFailed) as info:
            map_videos(write_video, make_tasks(tmp_path / "dask2", VIDEOS, log, fail_user=["v0"]), stage="t",
                       parallel=cfg)
        assert info.value.failures == {"v0": "video v0: frames missing; restore them"}
    assert _stored(out) == ref


def test_dask_backend_without_address_cleans_up_its_cluster(tmp_path):
    pytest.importorskip("distributed")
    before = {p.pid for p in multiprocessing.active_children()}
    out = tmp_path / "dask"
    map_videos(write_video, make_tasks(out, VIDEOS[:2], tmp_path / "calls"), stage="t",
               parallel=ParallelParams("dask", 2))
    assert len(list(out.glob("*.h5"))) == 2
    leftover = [p for p in multiprocessing.active_children() if p.pid not in before and p.is_alive()]
    assert leftover == [], f"worker processes left running: {leftover}"


def test_parallel_config_from_params():
    """``parallel`` is checked like every other section: keyword overrides win when not None, a typo
    names the close key, bad values name the key."""
    cfg = ParallelParams.from_params({"backend": "threading", "n_jobs": 3, "address": None}, fail_fast=True)
    assert (cfg.backend, cfg.n_jobs, cfg.address, cfg.fail_fast) == ("threading", 3, None, True)
    assert ParallelParams.from_params({"fail_fast": True}, fail_fast=None).fail_fast is True
    assert ParallelParams.from_params(None) == ParallelParams()
    assert ParallelParams.from_params({"backend": "dask", "address": ""}).address is None
    assert_section_refuses(ParallelParams, [
        ({"backend": "ray"}, r"parallel\.backend = 'ray' is not one of"),
        ({"n_job": 3}, r"parallel\.n_job \(did you mean n_jobs\?\)"),
        ({"n_jobs": 0}, r"parallel\.n_jobs must not be 0"),
    ])


def test_stage_functions_run_as_main_are_resolved_to_their_module(tmp_path):
    """`python -m pkg.mod` defines functions in __main__; loky workers must get them by reference."""
    import subprocess
    import sys
    import textwrap

    pkg = tmp_path / "stagepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(textwrap.dedent('''
        import functools, os
        from pipeline.core.runner import ParallelParams, VideoTask, importable, map_videos

        @functools.lru_cache(maxsize=None)
        def _cached():   # module state that only exists when the function is used by reference
            return os.getpid()

        def work(task):
            return _cached() > 0

        if __name__ == "__main__":
            assert importable(work).__module__ == "stagepkg.mod"
            tasks = [VideoTask(f"v{i}", None, "d") for i in range(4)]
            out = map_videos(work, tasks, stage="t", parallel=ParallelParams(backend="loky", n_jobs=2))
            assert out == {f"v{i}": True for i in range(4)}, out
            print("ok")
    '''))
    proc = subprocess.run([sys.executable, "-m", "stagepkg.mod"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


# ------------------------------------------------------------------ batched consumers (run_batched)
def _consumer(seen: list[list[str]], batch: int = 2):
    """A consumer as a GPU engine is one: takes the pending tasks in batches of ``batch`` videos, runs them in
    this process and reports each video (``write_video``'s failures become the video's failure)."""
    from pipeline.core.runner import TaskFeed

    def consume(todo, out) -> None:
        if isinstance(todo, TaskFeed):
            todo = list(iter(todo.get, None))
        for i in range(0, len(todo), batch):
            group = todo[i:i + batch]
            seen.append([t.video for t in group])
            for task in group:
                try:
                    out.succeeded(task.video, write_video(task))
                except Exception as exc:  # noqa: BLE001 - the test's engine reports per video
                    out.failed(task.video, exc)
            if out.stopped:
                return
    return consume


def test_batched_consumer_gets_only_pending_tasks_and_returns_results(tmp_path, caplog):
    from pipeline.core.runner import run_batched

    out, log = tmp_path / "out", tmp_path / "calls"
    map_videos(write_video, make_tasks(out, VIDEOS[:2], log), stage="t", parallel=ParallelParams("sequential"))
    seen: list[list[str]] = []
    caplog.set_level(logging.INFO)
    results = run_batched(_consumer(seen), make_tasks(out, VIDEOS, log), stage="t")
    assert results == {v: 16 for v in VIDEOS[2:]}
    assert seen == [["v2", "v3"], ["v4", "v5"]]                          # v0, v1 complete: never handed over
    assert "t: 2 of 6 videos already complete, skipped" in caplog.text
    assert _hashes(out) == _reference(tmp_path)
    seen.clear()
    assert run_batched(_consumer(seen), make_tasks(out, VIDEOS, log), stage="t") == {} and seen == []


def test_batched_consumer_from_a_feed_skips_complete_tasks_as_they_arrive(tmp_path):
    from pipeline.core.runner import TaskFeed, run_batched

    out, log = tmp_path / "out", tmp_path / "calls"
    map_videos(write_video, make_tasks(out, ["v1"], log), stage="t", parallel=ParallelParams("sequential"))
    seen: list[list[str]] = []
    results = run_batched(_consumer(seen, batch=6), TaskFeed(source=iter(make_tasks(out, VIDEOS, log))), stage="t")
    assert seen == [["v0", "v2", "v3", "v4", "v5"]] and sorted(results) == ["v0", "v2", "v3", "v4", "v5"]


def test_batched_failures_are_collected_like_map_videos(tmp_path):
    from pipeline.core.runner import run_batched

    def tasks(out: Path):
        return make_tasks(out, VIDEOS, tmp_path / "calls", fail_user=["v2"], fail_bug=["v4"])

    with pytest.raises(StageFailed) as mapped:
        map_videos(write_video, tasks(tmp_path / "mapped"), stage="flow", parallel=ParallelParams("sequential"))
    with pytest.raises(StageFailed) as batched:
        run_batched(_consumer([]), tasks(tmp_path / "batched"), stage="flow")
    assert batched.value.failures == mapped.value.failures == {
        "v2": "video v2: frames missing; restore them", "v4": "ValueError: boom"}
    assert str(batched.value) == str(mapped.value)
    assert batched.value.kinds == mapped.value.kinds == {"v2": "InputError", "v4": "ValueError"}
    assert sorted(p.name for p in (tmp_path / "batched").glob("*.h5")) == ["v0.h5", "v1.h5", "v3.h5", "v5.h5"]


def test_batched_fail_fast_stops_the_consumer_at_the_first_failure(tmp_path):
    from pipeline.core.runner import run_batched

    seen: list[list[str]] = []
    with pytest.raises(StageFailed) as info:
        run_batched(_consumer(seen), make_tasks(tmp_path / "out", VIDEOS, tmp_path / "calls", fail_user=["v1", "v3"]),
                    stage="t", fail_fast=True)
    assert list(info.value.failures) == ["v1"]
    assert seen == [["v0", "v1"]]                                        # the next batch was never started
    seen.clear()
    with pytest.raises(StageFailed) as info:                             # without fail_fast all go on
        run_batched(_consumer(seen), make_tasks(tmp_path / "out2", VIDEOS, tmp_path / "calls", fail_user=["v1", "v3"]),
                    stage="t")
    assert sorted(info.value.failures) == ["v1", "v3"] and len(seen) == 3


def test_an_error_outside_any_video_propagates_from_the_consumer(tmp_path):
    from pipeline.core.runner import run_batched

    def consume(todo, out) -> None:
        raise ConfigError("no GPU")

    with pytest.raises(ConfigError, match="no GPU"):
        run_batched(consume, make_tasks(tmp_path / "out", VIDEOS, tmp_path / "calls"), stage="t")

