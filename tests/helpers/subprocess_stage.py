"""Running ``python -m pipeline.<stage>`` as a real process, in a project copy (see pipeline.core.sandbox)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def stage_env() -> dict[str, str]:
    """This environment with the repository on ``PYTHONPATH``, one OpenMP thread, unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


def stage_cmd(module: str, dataset: str, root: Path | None = None, params: str = "params.yaml") -> list[str]:
    """``python -m pipeline.<module> --dataset <dataset> --params <params> [--data-root <root>]``."""
    cmd = [sys.executable, "-m", f"pipeline.{module}", "--dataset", dataset, "--params", params]
    return cmd + (["--data-root", str(root)] if root is not None else [])


def run_stage(project: Path, stage: str, dataset: str, root: Path | None = None, params: str = "params.yaml",
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a stage in ``project``; fails the test with the log tail on a non-zero exit."""
    proc = subprocess.run(stage_cmd(stage, dataset, root, params), cwd=project, env=stage_env(),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{stage} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def start_stage(project: Path, stage: str, dataset: str, root: Path, params: str = "params.yaml"
                ) -> subprocess.Popen:
    """Start a stage in its own session (its process group is the stage); its log goes to
    ``<root>/<stage>.log``."""
    with open(root / f"{stage}.log", "w") as log:
        return subprocess.Popen(stage_cmd(stage, dataset, root, params), cwd=project, env=stage_env(),
                                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)


def log_tail(root: Path, stage: str) -> str:
    """The end of the log ``start_stage`` wrote."""
    return (root / f"{stage}.log").read_text()[-3000:]


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
