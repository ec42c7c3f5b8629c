"""A throwaway copy of the pipeline holding one dataset: for end-to-end tests and benchmarks.

The copy has the code, configs, ``params.yaml`` and ``dvc.yaml`` of this repository, the
given dataset preset as the only dataset (with its ``per_dataset`` params entry), and is a git
repository with one commit (DVC and dvclive need one), so ``dvc repro`` runs in it exactly as in
the real project.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipeline.core.params import PER_DATASET, deep_merge

REPO = Path(__file__).resolve().parents[2]
COPIED = ("pipeline", "models", "configs", "params.yaml", "dvc.yaml", "setup.cfg", ".dvc/config", ".dvcignore")


def make_project(root: str | Path, dataset: str, preset: Mapping[str, Any],
                 params: Mapping[str, Any] | None = None, per_dataset: Mapping[str, Any] | None = None) -> Path:
    """Copy the pipeline to ``root`` with ``preset`` as the only dataset; ``params`` are merged into
    ``params.yaml`` (nested sections merge key by key) and ``per_dataset`` ({stage: {key: value}}) is
    the dataset's ``per_dataset`` entry (default: its entry in this repository's params.yaml, if any; every
    per-dataset (foreach) stage of dvc.yaml gets a key, ``{}`` where none). Returns ``root``."""
    root = Path(root)
    for item in COPIED:
        src, dst = REPO / item, root / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    (root / "configs" / "datasets" / f"{dataset}.yaml").write_text(yaml.safe_dump(dict(preset), sort_keys=False))
    merged = yaml.safe_load((root / "params.yaml").read_text())
    merged = deep_merge(merged, {"datasets": [dataset], "synth_datasets": [dataset], **dict(params or {})})
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    entries = merged.setdefault(PER_DATASET, {})
    own = entries.get(dataset) or {} if per_dataset is None else per_dataset   # a repository dataset keeps its own
    per_stage = [stage for stage, body in stages.items() if "foreach" in body]   # not `report`: all datasets at once
    entries[dataset] = {**{stage: {} for stage in per_stage}, **dict(own)}
    (root / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    (root / ".gitignore").write_text("/data/\n/metrics/\n")
    git = ["git", "-c", "user.name=m2es", "-c", "user.email=m2es@localhost.invalid"]
    for cmd in ([*git, "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-qm", f"m2es project: {dataset}"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root
