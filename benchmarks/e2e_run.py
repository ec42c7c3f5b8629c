"""Running one stage of the project copy measured: ``dvc repro --single-item`` (or the module) in its own
process group, with its rusage, sampled memory and GPU, fixed cost, work and rate (``benchmarks/e2e.py``)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.e2e_monitor import Sampler
from benchmarks.e2e_work import (STAGE_UNITS, TIMINGS_FILE, keep_run_records, read_records, timings_path,
                                 work_done)

log = logging.getLogger("e2e")


def _env(project: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(project), env.get("PYTHONPATH", "")])
    env.update({"DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"})
    return env


def _kill_group(pgid: int) -> None:
    """SIGKILL the process group ``pgid`` (a stage started in its own session), if any is left."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_stage(project: Path, stage: str, dataset: str, use_dvc: bool, sampler: Sampler, logs: Path,
              timeout: float, log_name: str | None = None, force: bool = False) -> dict[str, Any]:
    """Run one stage (``dvc repro --single-item``, or the module), measured; returns its record
    (the stage's output goes to ``logs/<log_name or stage>.log``; train's timing records of this run
    to ``logs/<log_name or stage>_timings.jsonl``: :func:`keep_run_records`). ``force``: DVC runs the
    stage's command even when its run cache holds the outputs (the stage itself still skips complete
    videos)."""
    target = f"{stage}@{dataset}"
    cmd = ([sys.executable, "-m", "dvc", "repro", "--single-item", *(["--force"] if force else []), target]
           if use_dvc else [sys.executable, "-m", f"pipeline.{stage}", "--dataset", dataset])
    logfile = logs / f"{log_name or stage}.log"
    timings = timings_path(project, dataset)
    timings_before = read_records(timings) if stage == "train" else []
    t0 = time.perf_counter()
    with open(logfile, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=project, env=_env(project), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)   # its own process group: a timeout stops every worker
        timer = threading.Timer(timeout, _kill_group, (proc.pid,))
        timer.start()
        sampler.start(proc.pid)
        try:
            # wait4: the stage's rusage, with that of every descendant it waited for (CPU time, max RSS)
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            sampler.stop()
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    if rc == -signal.SIGKILL and time.perf_counter() - t0 >= timeout:
        rc = 124
        log.error("%s: stopped after --stage-timeout %.0f s", stage, timeout)
    _kill_group(proc.pid)   # nothing of the stage outlives it (orphaned pool workers)
    wall = time.perf_counter() - t0
    if stage == "train":
        keep_run_records(timings_before, timings, logs / f"{log_name or stage}_{TIMINGS_FILE}")
    rec: dict[str, Any] = {"cmd": " ".join(["python", *cmd[1:]]), "rc": rc, "wall_s": round(wall, 2),
                           "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                           "max_rss_single_process_mib": round(usage.ru_maxrss / 1024, 1)}
    rec["cores_busy_mean"] = round(rec["cpu_s"] / wall, 2) if wall > 0 else None
    rec.update(sampler.summary())
    if rc != 0:
        rec["log_tail"] = logfile.read_text(errors="replace")[-2000:]
    return rec


def measured_stage(project: Path, stage: str, dataset: str, use_dvc: bool, args: argparse.Namespace, gpu: Any,
                   logs: Path, stride: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one stage measured (:func:`run_stage`), then its fixed cost and its work and rate; returns
    (record, the run's work so far)."""
    rec = run_stage(project, stage, dataset, use_dvc, Sampler(args.interval, gpu), logs, args.stage_timeout)
    if rec["rc"] == 0:
        rec["fixed_cost_s"] = round(fixed_cost(project, stage, dataset, use_dvc), 2)
    work = work_done(project, dataset, stride)
    quantity, rate = STAGE_UNITS[stage]
    if work.get(quantity):
        rec["work"] = {quantity: work[quantity]}
        rec[rate] = round(work[quantity] / rec["wall_s"], 2)
    return rec, work


def fixed_cost(project: Path, stage: str, dataset: str, use_dvc: bool) -> float:
    """Seconds a stage costs whatever its size: importing its module (``python -m pipeline.<stage> --help``)
    plus, with DVC, a ``dvc repro`` of the now up-to-date stage (DVC start-up, lock and hash checks)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"pipeline.{stage}", "--help"], cwd=project, env=_env(project),
                   capture_output=True, timeout=600)
    if use_dvc:
        subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", f"{stage}@{dataset}"], cwd=project,
                       env=_env(project), capture_output=True, timeout=600)
    return time.perf_counter() - t0
