"""The tiny synthetic dataset of the scaling tests (tests/scaling/) and the steps they share.

The kill point of the resume tests is drawn at random; set ``M2ES_KILL_SEED`` to replay a
failing draw (the seed is drawn once per session and named in every failure).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import yaml

from helpers import h5compare, subprocess_stage
from helpers.project import tiny_per_dataset, tiny_preset

DS = "synth_scale"
N_VIDEOS = 4
KILL_SEED = int(os.environ.get("M2ES_KILL_SEED", random.SystemRandom().randrange(2**31)))
OUT_DIR = {"crop": "faces", "flow": "flow", "features": "features"}
UPSTREAM = {"crop": [], "flow": ["faces"], "features": ["faces", "flow"]}

PRESET = tiny_preset(DS)
PER_DATASET = tiny_per_dataset()
PER_DATASET["synth"].update(n_subjects=2, videos_per_subject=2, duration_s=3.0)


def stage_cmd(stage: str, root: Path | None = None, params: str = "params.yaml") -> list[str]:
    """The command line of ``pipeline.<stage>`` on the scaling dataset."""
    return subprocess_stage.stage_cmd(stage, DS, root, params)


def run_stage(project: Path, stage: str, root: Path | None = None, params: str = "params.yaml"
              ) -> subprocess.CompletedProcess:
    """``python -m pipeline.<stage>`` on the scaling dataset in the project copy (fails the test on error)."""
    return subprocess_stage.run_stage(project, stage, DS, root, params)


def start_stage(project: Path, stage: str, root: Path, params: str = "params.yaml") -> subprocess.Popen:
    """Start the stage in its own session (see ``subprocess_stage.start_stage``)."""
    return subprocess_stage.start_stage(project, stage, DS, root, params)


def assert_same_outputs(folder: Path, reference: Path, context: str, rtol: float = 0.0) -> None:
    """The ``N_VIDEOS`` files of ``reference`` and the same content in ``folder``."""
    h5compare.assert_same_outputs(folder, reference, context, rtol, n_files=N_VIDEOS)


def fresh_root(project: Path, name: str, upstream: list[str] = ()) -> Path:
    """A data root ``<project>/<name>`` (absolute) with the resample tables and the reference's upstream outputs."""
    root = project / name
    base = root / DS
    base.mkdir(parents=True)
    shutil.copytree(project / "data" / DS / "resample", base / "resample")
    for out in upstream:
        shutil.copytree(project / "ref" / DS / out, base / out, copy_function=shutil.copy2)
    return root


def _write_section(project: Path, name: str, section: str, values: dict) -> str:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section].update(values)
    (project / name).write_text(yaml.safe_dump(params, sort_keys=False))
    return name


def write_params(project: Path, name: str, **parallel) -> str:
    """A params file ``<project>/<name>`` with the ``parallel`` section updated; returns ``name``."""
    return _write_section(project, name, "parallel", parallel)


def write_flow_params(project: Path, name: str, **flow) -> str:
    """A params file ``<project>/<name>`` with the ``flow`` section updated; returns ``name``."""
    return _write_section(project, name, "flow", flow)
