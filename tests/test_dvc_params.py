"""`dvc exp run -S` on a stage section or on per_dataset changes exactly the stage that reads it (#25).

Real DVC on a project copy: the params each stage tracks are read with DVC's own dependency code,
before and after params.yaml is rewritten the way `dvc exp run -S` does (``apply_overrides``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo
from dvc.utils.hydra import apply_overrides

from pipeline.core.sandbox import make_project

from helpers.project import tiny_per_dataset, tiny_preset

DS = "synth_tiny"


def tracked(root: Path) -> dict[str, dict]:
    """Stage name -> the params values DVC tracks for it."""
    repo = Repo(str(root))
    try:
        return {stage.name: {f"{d.def_path}:{k}": v for d in stage.deps if isinstance(d, ParamsDependency)
                             for k, v in d.read_params().items()} for stage in repo.index.stages}
    finally:
        repo.close()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("dvcparams"), DS, tiny_preset(DS), None, tiny_per_dataset())


@pytest.mark.parametrize("override, stages", [
    ("train.epochs=30", ["train@synth_tiny"]),
    (f"per_dataset.{DS}.train.epochs=30", ["train@synth_tiny"]),
    (f"per_dataset.{DS}.crop.size=64", ["crop@synth_tiny"]),
    (f"+per_dataset.{DS}.evaluate.iou_threshold=0.3", ["evaluate@synth_tiny"]),
    (f"per_dataset.{DS}.synth.n_subjects=3", ["synth@synth_tiny"]),
    (f"+per_dataset.{DS}.features.roi.region_scale=0.3", ["baseline@synth_tiny", "features@synth_tiny"]),
])
def test_a_set_param_changes_exactly_the_stages_that_read_it(project: Path, tmp_path: Path, override: str,
                                                            stages: list[str]) -> None:
    before = tracked(project)
    shutil.copy(project / "params.yaml", tmp_path / "params.yaml")
    try:
        apply_overrides(str(project / "params.yaml"), [override])
        after = tracked(project)
    finally:
        shutil.copy(tmp_path / "params.yaml", project / "params.yaml")
    assert sorted(s for s in before if before[s] != after[s]) == stages
