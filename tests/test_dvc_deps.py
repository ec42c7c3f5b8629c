"""Every stage of dvc.yaml depends on all the code it runs, so `dvc repro` reruns it when that code changes.

For each stage, the module its command runs (``python -m pipeline.<x>``) is followed through its
imports of the project's own modules (``pipeline``, ``models``), transitively, with the packages'
``__init__.py`` and the C sources of an extension ``setup.py`` builds: each such file must lie in a
dep of the stage (a file dep, or under a folder dep). The walk reads what exists, so a module added
to a package listed as a folder dep is covered with no change to dvc.yaml.

Folder deps are hashed whole by DVC: a file git ignores there (``__pycache__``, a built ``.so``) must
be ignored by ``.dvcignore`` too, else a stage looks changed after merely running or building.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers.imports import Tree

REPO = Path(__file__).resolve().parents[1]
CODE_TOP = ("pipeline", "models")


def stages(root: Path = REPO) -> dict[str, dict]:
    """``{name: {"cmd": ..., "deps": [...]}}`` of dvc.yaml (a foreach stage's ``do`` body, unexpanded)."""
    raw = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {name: body.get("do", body) for name, body in raw.items()}


def command_modules(cmd: str) -> list[str]:
    """The modules a stage command runs: ``python -m a.b`` -> ``a.b``; ``python a/b.py`` -> ``a.b``."""
    mods = re.findall(r"python3?\s+-m\s+([\w.]+)", cmd)
    mods += [p[:-3].replace("/", ".") for p in re.findall(r"python3?\s+([\w/]+\.py)\b", cmd)]
    return mods


def dep_paths(body: dict) -> list[str]:
    """The stage's deps as repository-relative paths (a dep with options is a one-key mapping)."""
    return [(d if isinstance(d, str) else next(iter(d))).rstrip("/") for d in body.get("deps", [])]


def uncovered(root: Path, name: str, body: dict) -> tuple[list[str], list[str]]:
    """(files the stage's command imports that no dep covers, imports that resolve to no module)."""
    tree = Tree(root, CODE_TOP)
    deps = dep_paths(body)
    modules = command_modules(body["cmd"])
    assert modules, f"stage {name}: cannot tell which module `{body['cmd']}` runs"
    missing: set[str] = set()
    unresolved: list[str] = []
    for module in modules:
        files, bad = tree.closure(module)
        unresolved += bad
        for f in files:
            rel = f.relative_to(root).as_posix()
            if not any(rel == d or rel.startswith(d + "/") for d in deps):
                missing.add(rel)
    return sorted(missing), unresolved


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_depends_on_all_the_code_it_imports(name: str) -> None:
    body = stages()[name]
    missing, unresolved = uncovered(REPO, name, body)
    assert not unresolved, f"stage {name}: imports naming no module of the tree:\n  " + "\n  ".join(unresolved)
    assert not missing, (f"stage {name} (`{body['cmd']}`) runs code no dep in dvc.yaml covers; add the "
                         f"package folder (or file) to its deps:\n  " + "\n  ".join(missing))


@pytest.mark.parametrize("name", sorted(stages()))
def test_code_deps_exist(name: str) -> None:
    """A dep on code or configs that is not there (a moved module) makes `dvc repro` fail."""
    gone = [d for d in dep_paths(stages()[name]) if "${" not in d and not d.startswith("data/")
            and not (REPO / d).exists()]
    assert not gone, f"stage {name}: deps that do not exist: {gone}"


def test_train_depends_on_every_model_preset() -> None:
    """The model preset (``configs/<model_preset>.yaml``, named by a dataset preset) is read by train;
    each one is a dep (DVC takes no glob, and a folder dep ``configs`` would take the dataset presets too)."""
    deps = dep_paths(stages()["train"])
    presets = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").glob("*.yaml")
                     if p.name != "params.reference.yaml")   # params.yaml's commented copy, not a model preset
    assert presets, "no model preset in configs/"
    assert not [p for p in presets if p not in deps], f"train: model presets not in its deps: {presets}"


def test_folder_deps_hash_no_build_byproducts() -> None:
    """Files git ignores inside a code folder dep (bytecode, built extensions) are ignored by DVC too."""
    from dvc.fs import LocalFileSystem
    from dvc.ignore import DvcIgnoreFilter

    fs = LocalFileSystem()
    ignore = DvcIgnoreFilter(fs, str(REPO))
    folders = sorted({d for body in stages().values() for d in dep_paths(body)
                      if "${" not in d and not d.startswith("data/") and (REPO / d).is_dir()})
    probes = []   # what exists now, and what a run or a build would put there
    for folder in folders:
        probes += [p for p in (REPO / folder).rglob("*") if p.is_file()]
        probes += [REPO / folder / "__pycache__" / "m.cpython-311.pyc",
                   REPO / folder / "_m.cpython-311-x86_64-linux-gnu.so"]
    rel = [p.relative_to(REPO).as_posix() for p in probes]
    git = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, input="\n".join(rel),
                         capture_output=True, text=True)
    git_ignored = set(git.stdout.split())
    hashed = [p for p in sorted(git_ignored) if not ignore.is_ignored(fs, str(REPO / p))]
    assert not hashed, (".dvcignore lets DVC hash files git ignores in code folder deps (a stage would look "
                        "changed after a run or a build); add their patterns (e.g. __pycache__/, "
                        "/pipeline/**/*.so) to .dvcignore:\n  " + "\n  ".join(hashed))


def test_the_walk_catches_an_uncovered_module(tmp_path: Path) -> None:
    """A planted tree: a stage whose deps miss a lazily imported module, a package ``__init__``, a
    relative import's target and an extension's C source, and one whose folder deps cover all."""
    files = {
        "pipeline/__init__.py": "",
        "pipeline/errors.py": "",
        "pipeline/stage_a.py": "from pipeline.pkg import mod\n\n\ndef run():\n    import pipeline.lazy\n",
        "pipeline/lazy.py": "from pipeline.io import _native\n",
        "pipeline/pkg/__init__.py": "",
        "pipeline/pkg/mod.py": "from .helper import h\nfrom pipeline.errors import E\n",
        "pipeline/pkg/helper.py": "import models.net\n",
        "pipeline/io/__init__.py": "",
        "pipeline/io/_native.c": "",
        "models/__init__.py": "",
        "models/net.py": "import torch\n",
        "setup.py": 'from setuptools import Extension, setup\n'
                    'setup(ext_modules=[Extension("pipeline.io._native", ["pipeline/io/_native.c"])])\n',
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    cmd = "python -m pipeline.stage_a --dataset ${item}"
    missing, unresolved = uncovered(tmp_path, "a", {"cmd": cmd, "deps": ["data/${item}/x", "pipeline/stage_a.py",
                                                                          "pipeline/pkg/mod.py", "models"]})
    assert unresolved == []
    assert missing == ["pipeline/__init__.py", "pipeline/errors.py", "pipeline/io/__init__.py",
                       "pipeline/io/_native.c", "pipeline/lazy.py", "pipeline/pkg/__init__.py",
                       "pipeline/pkg/helper.py"]
    full = ["pipeline/__init__.py", "pipeline/stage_a.py", "pipeline/lazy.py", "pipeline/errors.py", "pipeline/pkg",
            "pipeline/io/", "models"]
    assert uncovered(tmp_path, "a", {"cmd": cmd, "deps": full}) == ([], [])
    (tmp_path / "pipeline/pkg/helper.py").write_text("from pipeline.gone import x\n")
    assert uncovered(tmp_path, "a", {"cmd": cmd, "deps": full})[1] == ["pipeline/pkg/helper.py:1: pipeline.gone"]
