"""Shared fixtures: a throw-away workspace with the repository's params and presets of our own."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # so that tests can import tests/helpers as `helpers`
    sys.path.insert(0, str(TESTS))

from helpers.datasets import write_preset  # noqa: E402
from helpers.reference import REFERENCE_DIR  # noqa: E402


class Workspace:
    """A temporary repository-like folder (params.yaml, configs/datasets/, data/) that tests run in."""

    def __init__(self, root: Path):
        self.root = root
        self.params = yaml.safe_load((REPO / "params.yaml").read_text())
        self.params["parallel"] = {"backend": "sequential", "n_jobs": 1, "address": None, "fail_fast": False}
        self.save_params()

    def save_params(self) -> None:
        """Write the current params to ``params.yaml``."""
        (self.root / "params.yaml").write_text(yaml.safe_dump(self.params, sort_keys=False))

    def set_params(self, section: str, **values: Any) -> None:
        """Update one params section and save."""
        self.params.setdefault(section, {}).update(values)
        self.save_params()

    def preset(self, name: str, per_dataset: dict[str, Any] | None = None, **preset: Any) -> Path:
        """Write the dataset preset ``name``; ``per_dataset`` ({stage: {key: value}}) becomes its
        params.yaml ``per_dataset.<name>`` entry."""
        if per_dataset is not None:
            self.params.setdefault("per_dataset", {})[name] = per_dataset
            self.save_params()
        return write_preset(self.root, name, preset)

    def context(self, stage: str, dataset: str):
        """The stage context, as ``python -m pipeline.<stage> --dataset`` builds it here."""
        from pipeline.core.stage import make_context

        return make_context(stage, dataset)

    def run(self, stage: str, dataset: str) -> None:
        """Run ``pipeline.<stage>.run`` for ``dataset``; user errors propagate as exceptions."""
        import importlib

        module = importlib.import_module(f"pipeline.{stage}")
        module.run(self.context(stage, dataset))

    def out(self, dataset: str, stage: str) -> Path:
        """``data/<dataset>/<stage>``."""
        return self.root / "data" / dataset / stage


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A fresh workspace as the current directory (sequential runner unless a test changes it)."""
    monkeypatch.chdir(tmp_path)
    return Workspace(tmp_path)


@pytest.fixture
def one_thread():
    """Tiny models train faster on one torch thread (and do not fight other jobs for the 2 cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def repo_root() -> Path:
    """The repository root (for running ``python -m pipeline.<stage>`` in subprocesses)."""
    return REPO


@pytest.fixture
def reference_dir() -> Path:
    """The real reference annotation tables (``$M2ES_REFERENCE_DIR``, default the ``shared/`` copy
    beside the repository, as CI lays it out); skip if absent."""
    path = REFERENCE_DIR
    if not (path / "samm_annotation.csv").is_file():
        pytest.skip(f"reference annotation tables not found in {path} (set M2ES_REFERENCE_DIR)")
    return path
