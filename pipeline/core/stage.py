"""What every stage's ``main()`` shares: arguments, logging, context, error handling.

A stage module defines ``run(ctx: StageContext) -> None`` and
``main = stage_main("name", run)``; DVC calls ``python -m pipeline.<stage> --dataset NAME``.
User errors (:class:`~pipeline.errors.M2esError`) end as one clear message and exit
code 2; nothing already written is removed.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.core.params import PRESET_DIR, load_dataset, load_params, stage_params
from pipeline.core.paths import DataPaths
from pipeline.core.runner import ParallelParams
from pipeline.errors import M2esError

log = logging.getLogger("m2es")

EXIT_USER_ERROR = 2


@dataclass
class StageContext:
    """Everything a stage needs to know about one run for one dataset."""

    stage: str
    dataset: dict[str, Any]
    params: dict[str, Any]
    paths: DataPaths
    parallel: ParallelParams
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The dataset's name (its preset's file stem)."""
        return self.dataset["name"]

    def section(self, stage: str | None = None) -> dict[str, Any]:
        """Params of ``stage`` (default: this stage) with the dataset's overrides applied."""
        return stage_params(self.params, stage or self.stage, self.dataset)


def make_context(
    stage: str,
    dataset: str,
    params_path: str | Path = "params.yaml",
    data_root: str | Path = "data",
    preset_dir: str | Path = PRESET_DIR,
    fail_fast: bool | None = None,
) -> StageContext:
    """Build the context of ``stage`` for ``dataset`` from params and the dataset preset."""
    params = load_params(params_path)
    preset = load_dataset(dataset, preset_dir)
    par = ParallelParams.from_params(stage_params(params, "parallel", preset) if "parallel" in params else {},
                                     fail_fast=fail_fast or None)
    # absolute: tasks sent to workers in another directory (a dask cluster) must write into this project
    return StageContext(stage=stage, dataset=preset, params=params,
                        paths=DataPaths(dataset, Path(data_root).resolve()),
                        parallel=par)


def setup_logging(verbose: bool = False) -> None:
    """Plain one-line log records on stderr (tqdm bars share the stream)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


def stage_parser(stage: str, description: str = "") -> argparse.ArgumentParser:
    """The arguments every stage takes; ``description`` says what the stage does."""
    p = argparse.ArgumentParser(prog=f"m2es {stage}", description=(
        f"{description}\n\nRun by `dvc repro` as {stage}@<dataset>; also `python -m pipeline.{stage}`."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset preset name (configs/datasets/<name>.yaml)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--data-root", default="data", help="where stage outputs go (default: data); "
                   "evaluate's metrics then go to DATA_ROOT/metrics/ instead of metrics/")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed video")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def summary_line(docstring: str | None) -> str:
    """The first line of a module docstring as plain text (no ``Stage ``x``:`` prefix, no rST quotes)."""
    line = (docstring or "").strip().split("\n")[0]
    line = re.sub(r"^(Stage )?``[^`]*``:\s*", "", line)
    return line.replace("``", "")


def stage_description(run: Callable[..., Any]) -> str:
    """What a stage does: the first line of the docstring of the module that defines ``run``."""
    return summary_line(getattr(sys.modules.get(run.__module__), "__doc__", None))


def stage_main(stage: str, run: Callable[[StageContext], None]) -> Callable[[Sequence[str] | None], int]:
    """Wrap ``run`` into a ``main(argv) -> exit code`` with the common arguments."""

    def main(argv: Sequence[str] | None = None) -> int:
        args = stage_parser(stage, stage_description(run)).parse_args(argv)
        setup_logging(args.verbose)
        start = time.monotonic()
        try:
            ctx = make_context(stage, args.dataset, args.params, args.data_root, fail_fast=args.fail_fast)
            run(ctx)
        except M2esError as exc:
            log.error("%s@%s: %s", stage, args.dataset, exc)
            return EXIT_USER_ERROR
        log.info("%s@%s: done in %.1f s", stage, args.dataset, time.monotonic() - start)
        return 0

    main.__doc__ = f"Entry point of stage '{stage}': ``python -m pipeline.{stage} --dataset NAME``."
    return main
