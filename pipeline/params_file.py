"""``params.yaml`` as plain data, and its commented knob reference ``configs/params.reference.yaml``.

``dvc exp run -S key=value`` rewrites params.yaml with DVC's YAML writer (a ruamel round trip:
lists in block style, null written as nothing, comments between keys dropped). params.yaml is
therefore kept in exactly that form, with no comment but its header, so an experiment's diff is
the lines it changed. The reference, a comment on every knob, is ``configs/params.reference.yaml``:
the same keys and values (``tests/core/test_params_file.py`` checks both).

``python -m pipeline.params_file`` rewrites params.yaml from the reference (after a value or a
knob was added or changed there); ``--check`` only says whether the two hold the same data and
params.yaml is in DVC's form (exit 1 if not).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from pipeline.core.params import SHIPPED_PARAMS

PARAMS = Path("params.yaml")
REFERENCE = SHIPPED_PARAMS
HEADER = ("# The pipeline's params as plain data, in the form `dvc exp run -S` writes them (an experiment's\n"
          "# diff is the lines it changed). Every knob is explained in configs/params.reference.yaml (same\n"
          "# keys and values): edit that file, then `python -m pipeline.params_file` rewrites this one.\n")


def plain_text(data: Mapping[str, Any]) -> str:
    """``data`` as params.yaml holds it: :data:`HEADER`, then DVC's own YAML dump."""
    from dvc.utils.serialize import dumps_yaml

    text = HEADER + dumps_yaml(dict(data))
    if yaml.safe_load(text) != data:   # PyYAML (the stages' reader) must read back what DVC wrote
        raise ValueError("params: DVC's YAML dump does not read back the same with PyYAML; quote the value.")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or ``--check``) params.yaml from configs/params.reference.yaml."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.params_file", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when params.yaml would change")
    ap.add_argument("--params", type=Path, default=PARAMS)
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    args = ap.parse_args(argv)
    want = plain_text(yaml.safe_load(args.reference.read_text()))
    have = args.params.read_text() if args.params.is_file() else ""
    if have == want:
        print(f"{args.params}: same data as {args.reference}, in DVC's form")
        return 0
    if args.check:
        same = bool(have) and yaml.safe_load(have) == yaml.safe_load(want)
        print(f"{args.params}: {'not in DVC form' if same else 'other values than'} {args.reference}; run "
              f"`python -m pipeline.params_file` (or copy the changed values into the reference first)",
              file=sys.stderr)
        return 1
    args.params.write_text(want)
    print(f"{args.params}: rewritten from {args.reference}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
