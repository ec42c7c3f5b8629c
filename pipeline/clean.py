"""``m2es clean STAGE --dataset NAME [--video V ...]``: remove a stage's outputs so that it really recomputes.

Per-video stages skip every video whose output is complete and made with the same params and
inputs, so ``dvc repro -s crop@NAME`` (even with ``-f``) recomputes nothing while its inputs
are unchanged. To recompute on purpose (a suspect file, a changed library, a timing run),
remove the outputs first, then run the stage again::

    m2es clean crop --dataset synth_casme2 --video 15_0101disgustingteeth   # one video's faces file
    m2es clean flow --dataset synth_casme2                                  # every flow file
    dvc repro -s flow@synth_casme2                                          # recomputes what is missing

``--video`` applies to the per-video stages (crop, flow, features); the others are removed as
a whole (``evaluate`` with its metrics file). Later stages are not touched: DVC reruns them
when the recomputed outputs differ. Only folders under the data root are removed; a folder
that is a link (e.g. a dataset linked into ``data/``) is refused.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Sequence

from pipeline.core.paths import DataPaths
from pipeline.core.stage import EXIT_USER_ERROR, setup_logging
from pipeline.errors import M2esError

log = logging.getLogger(__name__)

PER_VIDEO = {"crop": "faces", "flow": "flow", "features": "features"}
WHOLE = {"ingest": "ingest", "resample": "resample", "train": "runs", "baseline": "baseline", "evaluate": "evaluate"}
STAGES = ("ingest", "resample", "crop", "flow", "features", "train", "baseline", "evaluate")


def targets(stage: str, paths: DataPaths, videos: Sequence[str] = ()) -> list[Path]:
    """The files and folders ``m2es clean`` removes for ``stage`` (those that exist)."""
    if stage not in STAGES:
        raise M2esError(f"m2es clean: unknown stage '{stage}'. Stages: {', '.join(STAGES)}.")
    if videos and stage not in PER_VIDEO:
        raise M2esError(f"m2es clean: --video applies to {', '.join(PER_VIDEO)}; {stage} is removed as a whole.")
    if stage in PER_VIDEO:
        folder = getattr(paths, PER_VIDEO[stage])
        if not videos:
            found = [folder]
        else:
            found = [paths.h5(folder, v) for v in videos]
            found += [p for v in videos for p in folder.glob(f".{v}.h5.*partial")]
    else:
        found = [getattr(paths, WHOLE[stage])] + ([paths.metrics] if stage == "evaluate" else [])
    return [p for p in found if p.exists() or p.is_symlink()]


def remove(found: Sequence[Path], paths: DataPaths) -> None:
    """Remove ``found``; each must lie inside the data root (or be the metrics file) and not be a link."""
    allowed = (Path(paths.root).resolve(), paths.metrics.parent.resolve())
    for p in found:
        if p.is_symlink():
            raise M2esError(f"{p} is a link; m2es clean removes only what the pipeline wrote. Remove it yourself.")
        if not any(p.resolve().is_relative_to(a) for a in allowed):
            raise M2esError(f"{p} is outside the data root {paths.root}; m2es clean leaves it alone.")
    for p in found:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
        log.info("removed %s", p)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``m2es clean``."""
    parser = argparse.ArgumentParser(prog="m2es clean", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--dataset", required=True, help="dataset name (data/<name>/)")
    parser.add_argument("--video", action="append", default=[], help="one video of a per-video stage (repeatable)")
    parser.add_argument("--data-root", default="data", help="where stage outputs are (default: data)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    setup_logging()
    paths = DataPaths(args.dataset, Path(args.data_root))
    try:
        found = targets(args.stage, paths, args.video)
        if not found:
            log.info("nothing to remove for %s@%s", args.stage, args.dataset)
        remove(found, paths)
    except M2esError as exc:
        print(f"m2es clean: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
