"""The committed dvc.lock is current: the code every stage records in it is the code in the tree.

A fresh clone's ``dvc status`` must tell the truth, so dvc.lock is committed and kept current:
after changing code under pipeline/, models/ or configs/, run ``dvc repro`` (the stages whose
code changed rerun; per-video outputs whose digests did not change are skipped, so this is
quick) and commit dvc.lock with the change. DVC itself hashes the deps here (with
``.dvcignore`` applied), exactly as ``dvc status`` does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CODE = ("pipeline", "models", "configs")


def stale_code_deps(root: Path) -> list[str]:
    """``stage: dep (status)`` for every code dep whose hash in dvc.lock differs from the tree."""
    from dvc.repo import Repo

    found = []
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            for dep in stage.deps:
                if Path(dep.def_path).parts[0] in CODE and (status := dep.status()):
                    found.append(f"{stage.name}: {dep.def_path} ({status[dep.def_path]})")
    return found


def test_dvc_lock_records_the_code_in_the_tree() -> None:
    if not (REPO / ".dvc").is_dir() or not (REPO / "dvc.lock").is_file():
        pytest.skip("not a DVC checkout with a dvc.lock")
    stale = stale_code_deps(REPO)
    assert not stale, ("dvc.lock records other code than the tree: run `dvc repro` and commit dvc.lock\n  "
                       + "\n  ".join(stale))


def test_the_check_sees_a_changed_module(tmp_path: Path) -> None:
    """A copy of the repository's DVC files and code with one module edited: the check names that dep."""
    import shutil
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    for name in (".dvc", "dvc.yaml", "dvc.lock", "params.yaml", ".dvcignore"):
        src = REPO / name
        if not src.exists():
            pytest.skip(f"{name} missing")
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / name)
    for name in CODE:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    before = set(stale_code_deps(tmp_path))
    with (tmp_path / "pipeline" / "resample.py").open("a") as f:
        f.write("\n# an edit\n")
    new = set(stale_code_deps(tmp_path)) - before
    assert new == {f"resample@{ds}: pipeline/resample.py (modified)" for ds in ("synth_casme2", "synth_samm")}
