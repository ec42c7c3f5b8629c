"""Per-video functions for the runner tests (importable, so process backends can pickle them)."""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from pathlib import Path

import numpy as np

from pipeline.errors import InputError
from pipeline.io.h5io import atomic_h5, write_attrs
from pipeline.core.runner import VideoTask

#: under ``pipeline``: the loggers whose records a worker sends back (pipeline.core.runner.WORKER_LOGGERS)
log = logging.getLogger("pipeline.tests_runner_funcs")


def make_tasks(out_dir: Path, videos, calls_dir: Path, version: str = "v1", **extra) -> list[VideoTask]:
    """One task per video writing ``out_dir/<video>.h5``; calls are recorded in ``calls_dir``."""
    from pipeline.core.params import digest

    return [VideoTask(v, out_dir / f"{v}.h5", digest({"video": v, "version": version}),
                      {"seed": i, "calls": str(calls_dir), **extra}) for i, v in enumerate(videos)]


def calls(calls_dir: Path) -> list[str]:
    """Videos the function was called for (one marker file per call)."""
    return sorted(p.name.split(".")[0] for p in Path(calls_dir).glob("*.call"))


def write_video(task: VideoTask) -> int:
    """Deterministic output for the task; fails/kills/sleeps when the payload says so."""
    p = task.payload
    Path(p["calls"]).mkdir(parents=True, exist_ok=True)
    (Path(p["calls"]) / f"{task.video}.{uuid.uuid4().hex}.call").write_text("")
    if task.video in p.get("kill", ()):
        os.kill(os.getpid(), signal.SIGKILL)
    if task.video in p.get("fail_user", ()):
        raise InputError(f"video {task.video}: frames missing; restore them")
    if task.video in p.get("fail_bug", ()):
        raise ValueError("boom")
    if task.video in p.get("warn", ()):
        try:
            raise ValueError("odd frame")
        except ValueError:
            log.warning("video %s: a warning", task.video, exc_info=True)
    if p.get("sleep"):
        time.sleep(float(p["sleep"]))
    data = np.random.default_rng(p["seed"]).standard_normal((16, 8, 8)).astype(np.float32)
    with atomic_h5(task.output, task.digest, {"seed": p["seed"]}) as f:
        f.create_dataset("x", data=data, chunks=(4, 8, 8), compression="gzip")
        write_attrs(f, {"video": task.video, "shape": list(data.shape)})
    log.info("video %s: %d frames written", task.video, data.shape[0])
    return int(data.shape[0])
