"""The ``m2es`` command: ``m2es <stage> --dataset NAME`` runs one stage, like DVC does."""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

STAGES = ("synth", "ingest", "resample", "crop", "flow", "features", "train", "baseline", "evaluate")
TOOLS = {"spot": "pipeline.spot", "overlap": "pipeline.overlap", "clean": "pipeline.clean"}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to ``pipeline.<stage>.main`` (or a tool such as ``spot``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = list(STAGES) + list(TOOLS)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: m2es COMMAND [ARGS]\n\ncommands:\n  " + "\n  ".join(commands)
              + "\n\nEach stage takes --dataset NAME; `m2es COMMAND --help` for details.")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in commands:
        print(f"m2es: unknown command '{command}'. Commands: {', '.join(commands)}", file=sys.stderr)
        return 2
    module = importlib.import_module(TOOLS.get(command, f"pipeline.{command}"))
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
