"""The project's own imports, read from the source (AST, nothing is imported): for the layering
and DVC-deps tests.

A module name resolves to a file of the tree (``a/b.py`` or ``a/b/__init__.py``) or, for a C
extension built by ``setup.py`` (``Extension("a._c", ["a/_c.c"])``), to its sources. Every
import statement counts, wherever it is (module level, inside a function, under
``TYPE_CHECKING``); ``from a import b`` imports ``a`` and, where ``a.b`` is a module, ``a.b``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


@dataclass(frozen=True)
class Import:
    """One imported module name, absolute (relative imports resolved), with where it is imported."""

    file: Path        # the importing file
    line: int
    module: str       # the module imported (``a.b``), or for ``from a import x`` also ``a.x`` (maybe not a module)
    maybe_attr: bool  # True for the ``a.x`` of ``from a import x``: may name a function, not a module

    def where(self, root: Path) -> str:
        return f"{self.file.relative_to(root)}:{self.line}"


def module_name(path: Path, root: Path) -> str:
    """``a/b/c.py`` -> ``a.b.c``; ``a/b/__init__.py`` -> ``a.b``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_of(path: Path, root: Path) -> str:
    name = module_name(path, root)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports_of(path: Path, root: Path) -> Iterator[Import]:
    """Every module name the file imports (absolute; relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, alias.name, False)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(path, root).split(".") if _package_of(path, root) else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module:
                yield Import(path, node.lineno, module, False)
            for alias in node.names:
                if alias.name != "*":
                    yield Import(path, node.lineno, f"{module}.{alias.name}" if module else alias.name, True)


def extension_sources(root: Path) -> dict[str, list[Path]]:
    """``{module: [source files]}`` of the C extensions ``setup.py`` builds (``Extension(name, [sources])``
    with literal arguments)."""
    setup = root / "setup.py"
    if not setup.is_file():
        return {}
    out: dict[str, list[Path]] = {}
    for node in ast.walk(ast.parse(setup.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Extension":
            args = list(node.args) + [k.value for k in node.keywords if k.arg in ("name", "sources")]
            if len(args) >= 2 and isinstance(args[0], ast.Constant) and isinstance(args[1], (ast.List, ast.Tuple)):
                out[args[0].value] = [root / e.value for e in args[1].elts if isinstance(e, ast.Constant)]
    return out


class Tree:
    """The Python packages of a source tree (``top``: the top-level names that are the project's)."""

    def __init__(self, root: Path, top: tuple[str, ...]):
        self.root = root
        self.top = top
        self.extensions = extension_sources(root)

    def is_project(self, module: str) -> bool:
        return module.split(".")[0] in self.top

    def files_of(self, module: str) -> list[Path] | None:
        """The files behind ``module`` (its ``.py``, its package's ``__init__.py``, or an extension's
        sources); None where it is not a module of the tree."""
        base = self.root.joinpath(*module.split("."))
        if base.with_suffix(".py").is_file():
            return [base.with_suffix(".py")]
        if (base / "__init__.py").is_file():
            return [base / "__init__.py"]
        if module in self.extensions:
            return list(self.extensions[module])
        return None

    def files(self) -> list[Path]:
        """Every ``.py`` file of the project's top-level packages."""
        return sorted(p for t in self.top for p in (self.root / t).rglob("*.py") if "__pycache__" not in p.parts)

    def project_imports(self, path: Path) -> list[Import]:
        """The imports of ``path`` that name the project's modules (a ``from a import x`` whose ``a.x`` is
        not a module is dropped: it names a function or class)."""
        return [i for i in imports_of(path, self.root)
                if self.is_project(i.module) and not (i.maybe_attr and self.files_of(i.module) is None)]

    def closure(self, module: str) -> tuple[set[Path], list[str]]:
        """The files that importing ``module`` runs or needs: the module, its packages' ``__init__.py``,
        and the same for every project module it imports, transitively. Also the imports that name no
        module of the tree (``file:line: module``)."""
        files: set[Path] = set()
        unresolved: list[str] = []
        todo = [(module, None)]
        seen: set[str] = set()
        while todo:
            name, where = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            parts = name.split(".")
            for k in range(1, len(parts)):      # importing a.b.c runs a/__init__.py and a/b/__init__.py
                todo.append((".".join(parts[:k]), where))
            found = self.files_of(name)
            if found is None:
                unresolved.append(f"{where or '(stage command)'}: {name}")
                continue
            files.update(found)
            for path in found:
                if path.suffix == ".py":
                    todo.extend((i.module, i.where(self.root)) for i in self.project_imports(path))
        return files, sorted(unresolved)
