"""What every stage's ``main()`` shares: arguments, logging, context, error handling.

A stage module defines ``run(ctx: StageContext) -> None`` and
``main = stage_main("name", run)``; DVC calls ``python -m pipeline.<stage> --dataset NAME``.
User errors (:class:`~pipeline.errors.M2esError`) end as one clear message and exit
code 2; nothing already written is removed. Every run, failed or not, appends its duration
to ``data/<ds>/stage_timings.jsonl`` (:func:`record_stage_run`), which ``m2es summary`` reads.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.core.params import (PRESET_DIR, SHIPPED_PARAMS, load_dataset, load_params, read_yaml,
                                  require_dataset_entry, stage_params, stage_sources)
from pipeline.core.paths import DataPaths
from pipeline.core.runner import ParallelParams
from pipeline.errors import M2esError
from pipeline.io.jsonl import append_jsonl

log = logging.getLogger("m2es")

EXIT_USER_ERROR = 2
#: the keys of a stage run's record in ``data/<ds>/stage_timings.jsonl`` (status: ok, failed = a user
#: error, exit 2, or error = any other exception); ``finished`` is UTC, ISO 8601
STAGE_TIMING_KEYS = ("stage", "dataset", "seconds", "status", "finished")


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
        """Params of ``stage`` (default: this stage) with ``per_dataset.<dataset>.<stage>`` merged in."""
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
    require_dataset_entry(params, stage, dataset)
    par = ParallelParams.from_params(stage_params(params, "parallel", preset) if "parallel" in params else {},
                                     fail_fast=fail_fast or None)
    # absolute: tasks sent to workers in another directory (a dask cluster) must write into this project
    return StageContext(stage=stage, dataset=preset, params=params,
                        paths=DataPaths(dataset, Path(data_root).resolve()),
                        parallel=par)


def log_params(ctx: StageContext, shipped_path: str | Path = SHIPPED_PARAMS) -> None:
    """Log where the stage's effective params come from (one line), the full values at DEBUG, and a
    WARNING naming every params.yaml value, changed from the shipped one (``shipped_path``, the
    commented reference; every value counts as changed without it), that a different ``per_dataset``
    value shadows."""
    if ctx.stage not in ctx.params:   # a stage with no section of its own
        return
    shipped = read_yaml(shipped_path) if Path(shipped_path).is_file() else None
    info, shadowed = stage_sources(ctx.params, ctx.stage, ctx.dataset, shipped)
    log.info("%s", info)
    log.debug("%s@%s effective params: %s", ctx.stage, ctx.name, ctx.section())
    if shadowed:
        log.warning("%s", shadowed)


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


def record_stage_run(path: Path, stage: str, dataset: str, seconds: float, status: str) -> None:
    """Append this run's record (:data:`STAGE_TIMING_KEYS`) to ``path``, outside every DVC output (times
    differ on every run and must change no output's hash). A run that failed writes only into an existing
    dataset folder (a misspelt dataset name makes none); a record that cannot be written is a warning."""
    record = dict(zip(STAGE_TIMING_KEYS, (stage, dataset, round(seconds, 3), status,
                                          datetime.now(timezone.utc).isoformat(timespec="seconds"))))
    try:
        if status == "ok":
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.parent.is_dir():
            return
        append_jsonl(path, record)
    except OSError as exc:
        log.warning("%s@%s: could not record the run's duration in %s: %s", stage, dataset, path, exc)


def stage_main(stage: str, run: Callable[[StageContext], None]) -> Callable[[Sequence[str] | None], int]:
    """Wrap ``run`` into a ``main(argv) -> exit code`` with the common arguments."""

    def main(argv: Sequence[str] | None = None) -> int:
        args = stage_parser(stage, stage_description(run)).parse_args(argv)
        setup_logging(args.verbose)
        start = time.monotonic()
        status = "error"   # any exception but M2esError propagates, recorded as this
        try:
            ctx = make_context(stage, args.dataset, args.params, args.data_root, fail_fast=args.fail_fast)
            log_params(ctx)
            run(ctx)
            status = "ok"
        except M2esError as exc:
            status = "failed"
            log.error("%s@%s: %s", stage, args.dataset, exc)
        finally:
            seconds = time.monotonic() - start
            record_stage_run(DataPaths(args.dataset, Path(args.data_root)).stage_timings, stage, args.dataset,
                             seconds, status)
        if status != "ok":
            return EXIT_USER_ERROR
        log.info("%s@%s: done in %.1f s", stage, args.dataset, seconds)
        return 0

    main.__doc__ = f"Entry point of stage '{stage}': ``python -m pipeline.{stage} --dataset NAME``."
    return main
