"""Who may import whom, read from the source (nothing is imported).

* ``models/`` (the networks) imports nothing from ``pipeline``.
* ``pipeline/io/`` imports only ``pipeline.errors`` and ``pipeline.io``.
* ``pipeline/core/`` imports only ``pipeline.errors``, ``pipeline.core`` and ``pipeline.io``.
  Neither imports ``models``.
* The machinery packages (every other package of ``pipeline/``: synthetic, cropping, tvl1,
  extract, learning, scoring, layouts, and any new one) import no stage module: no module at
  ``pipeline/``'s root but ``errors`` (synth, ingest, resample, crop, flow, features, train,
  evaluate, overlap, cli, ...) and not ``pipeline.spot`` (a stage-level package).

Every import counts, a lazy one inside a function too. A violation fails naming ``file:line``.
"""

from __future__ import annotations

from pathlib import Path

from helpers.imports import Tree

REPO = Path(__file__).resolve().parents[1]

FOUNDATIONS = {  # package -> the pipeline modules (with their submodules) it may import
    "pipeline.io": ("pipeline.errors", "pipeline.io"),
    "pipeline.core": ("pipeline.errors", "pipeline.core", "pipeline.io"),
}
STAGE_PACKAGES = ("spot",)   # packages at pipeline/'s root that are stage-level, not machinery
NOT_STAGES = ("__init__", "errors")


def _within(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def stage_modules(root: Path) -> list[str]:
    """``pipeline.<x>`` for every module at ``pipeline/``'s root but errors, and the stage-level packages."""
    names = {p.stem for p in (root / "pipeline").glob("*.py") if p.stem not in NOT_STAGES}
    names |= {s for s in STAGE_PACKAGES if (root / "pipeline" / s).is_dir()}
    return sorted(f"pipeline.{n}" for n in names)


def machinery_packages(root: Path) -> list[str]:
    """Every package of ``pipeline/`` but the foundations and the stage-level packages."""
    return sorted(f"pipeline.{p.parent.name}" for p in (root / "pipeline").glob("*/__init__.py")
                  if f"pipeline.{p.parent.name}" not in FOUNDATIONS and p.parent.name not in STAGE_PACKAGES)


def violations(root: Path) -> list[str]:
    """Every import breaking the rules above, as ``file:line: rule``."""
    tree = Tree(root, ("pipeline", "models"))
    stages = stage_modules(root)
    machinery = machinery_packages(root)
    found: list[str] = []
    for path in tree.files():
        rel = path.relative_to(root).as_posix()
        owner = ".".join(path.relative_to(root).parts[:2]) if rel.startswith("pipeline/") else "models"
        for imp in tree.project_imports(path):
            m = imp.module
            if owner == "models" and _within(m, ("pipeline",)):
                found.append(f"{imp.where(root)}: models/ imports {m} (the networks import nothing from pipeline)")
            elif m == "pipeline":   # the namespace itself (``from pipeline import x``: x is checked on its own)
                continue
            elif owner in FOUNDATIONS and not _within(m, FOUNDATIONS[owner]):
                found.append(f"{imp.where(root)}: {owner} imports {m} (it may import only "
                             f"{', '.join(FOUNDATIONS[owner])})")
            elif owner in machinery and _within(m, stages):
                found.append(f"{imp.where(root)}: machinery package {owner} imports the stage module {m} "
                             f"(stages use machinery, not the other way round)")
    return sorted(set(found))


def test_imports_follow_the_layers() -> None:
    found = violations(REPO)
    assert not found, "layering violations:\n  " + "\n  ".join(found)


def test_the_checker_catches_planted_violations(tmp_path: Path) -> None:
    """A small tree with one violation of each rule (module-level, lazy, relative, ``from pipeline import
    x``) and allowed imports that must not be flagged."""
    files = {
        "pipeline/__init__.py": "",
        "pipeline/errors.py": "",
        "pipeline/crop.py": "from pipeline.cropping import finder\nfrom pipeline.core import stage\n",
        "pipeline/overlap.py": "from pipeline import crop\n",
        "pipeline/spot/__init__.py": "from pipeline.crop import x\n",
        "pipeline/io/__init__.py": "",
        "pipeline/io/h5io.py": "from pipeline.errors import E\nfrom pipeline.io import _ext\nfrom . import tables\n",
        "pipeline/io/tables.py": ("import numpy\nfrom pipeline import errors\n\n\n"
                                  "def f():\n    from pipeline.core.params import digest\n"),
        "pipeline/core/__init__.py": "",
        "pipeline/core/stage.py": "from pipeline.io.h5io import x\nfrom ..crop import run\n",
        "pipeline/core/params.py": "import models.iaenet\n",
        "pipeline/cropping/__init__.py": "",
        "pipeline/cropping/finder.py": "from pipeline.core.runner import VideoTask\nfrom pipeline import spot\n",
        "pipeline/cropping/video.py": "import pipeline.cropping.finder\n\n\ndef g():\n    import pipeline.flow\n",
        "pipeline/flow.py": "",
        "models/__init__.py": "",
        "models/iaenet.py": "from .blocks import b\nfrom pipeline.errors import ConfigError\n",
        "models/blocks.py": "import torch\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = violations(tmp_path)
    expected = {
        "pipeline/io/tables.py:6": "pipeline.io imports pipeline.core.params",
        "pipeline/core/stage.py:2": "pipeline.core imports pipeline.crop",
        "pipeline/core/params.py:1": "pipeline.core imports models.iaenet",
        "pipeline/cropping/finder.py:2": "imports the stage module pipeline.spot",
        "pipeline/cropping/video.py:5": "imports the stage module pipeline.flow",
        "models/iaenet.py:2": "models/ imports pipeline.errors",
    }
    for where, what in expected.items():
        assert any(f.startswith(where + ":") and what in f for f in found), f"missed {where} ({what}): {found}"
    assert len(found) == len(expected), f"flagged more than planted: {found}"


def test_tests_import_nothing_from_conftest() -> None:
    """Shared test code lives in tests/helpers/: with several conftest.py files (tests/, tests/scaling/),
    ``from conftest import x`` gets whichever one pytest loaded last."""
    from helpers.imports import imports_of

    found = [i.where(REPO) for p in sorted((REPO / "tests").rglob("*.py")) if "__pycache__" not in p.parts
             for i in imports_of(p, REPO) if i.module == "conftest"]
    assert not found, "tests importing from conftest (import from helpers/ instead):\n  " + "\n  ".join(found)
