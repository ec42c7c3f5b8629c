"""The ``m2es`` command: ``m2es <stage> --dataset NAME`` runs one stage, like DVC does."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from typing import Sequence

from pipeline.core.stage import summary_line

STAGES = ("synth", "ingest", "resample", "crop", "flow", "features", "train", "baseline", "evaluate")
TOOLS = {"spot": "pipeline.spot", "overlap": "pipeline.overlap", "clean": "pipeline.clean",
         "summary": "pipeline.summary"}


def describe(module: str) -> str:
    """One line saying what ``module`` does, read from its docstring without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return ""
    with open(spec.origin, encoding="utf-8") as f:
        return summary_line(ast.get_docstring(ast.parse(f.read())))


def usage() -> str:
    """``m2es --help``: every command with one line on what it does."""
    modules = {**{s: f"pipeline.{s}" for s in STAGES}, **TOOLS}
    width = max(map(len, modules))
    lines = [f"  {name:<{width}}  {describe(module)}" for name, module in modules.items()]
    return ("usage: m2es COMMAND [ARGS]\n\nstages (what `dvc repro` runs, in order; each takes --dataset NAME):\n"
            + "\n".join(lines[:len(STAGES)]) + "\n\ntools:\n" + "\n".join(lines[len(STAGES):])
            + "\n\n`m2es COMMAND --help` for a command's arguments.")


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to ``pipeline.<stage>.main`` (or a tool such as ``spot``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = list(STAGES) + list(TOOLS)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in commands:
        print(f"m2es: unknown command '{command}'. Commands: {', '.join(commands)}", file=sys.stderr)
        return 2
    module = importlib.import_module(TOOLS.get(command, f"pipeline.{command}"))
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
