"""LOSO folds: training one fold, a list of folds in one process, or groups of folds in several.

A fold is a held-out subject (``fold_<subject>``: trained on every other subject, predicting
the held-out one's windows) or ``final`` (every subject, nothing held out). :func:`train_fold`
trains one and writes its dvclive log, its out-of-fold predictions, its timing record
(:mod:`pipeline.learning.timings`) and its checkpoint, last. :func:`train_folds` trains a list
one after another, writing each checkpoint in a background thread while the next model trains.
:func:`train_in_processes` spreads the folds over ``train.fold_workers`` processes (loky, or
the dask cluster) as :class:`FoldGroup` work items, each process reading the features itself.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from models.iaenet import save_checkpoint

from pipeline.core.device import resolve_device
from pipeline.core.paths import DataPaths
from pipeline.core.runner import ParallelParams, map_items
from pipeline.core.stage import StageContext
from pipeline.errors import InputError
from pipeline.io.artifacts import PREDICTION_COLUMNS
from pipeline.io.jsonl import append_jsonl
from pipeline.io.tables import write_table
from pipeline.learning.data import Prepared, load_inputs, prepare
from pipeline.learning.loop import DvcLive, train_model
from pipeline.learning.recipe import TrainRecipe, fold_seed
from pipeline.learning.timings import timing_record

log = logging.getLogger(__name__)

#: the human line logged per trained model (the same figures go to the timing records)
MODEL_LOG = "%s: %d training windows, %.1f s on %s, final loss %.4f"


@dataclass
class FoldJob:
    """What training one fold needs besides the features (small, so it pickles to fold processes).

    ``ctx`` has absolute paths, so that a process with another working directory (a dask
    worker) reads and writes the same files; ``device`` is the device of that fold.
    """

    ctx: StageContext
    preset: dict[str, Any]
    cfg: TrainRecipe
    seed: int
    run_id: str
    provenance: dict[str, Any]
    ckpt_params: dict[str, Any]
    device: str


def model_name(fold: str) -> str:
    """The folder and record name of fold ``fold``: ``fold_<subject>``, or ``final``."""
    return "final" if fold == "final" else f"fold_{fold}"


def train_fold(prep: Prepared, job: FoldJob, fold: str,
               writer: ThreadPoolExecutor | None = None) -> tuple[pd.DataFrame | None, Future | None]:
    """Train fold ``fold`` (a held-out subject, or ``final``): write its dvclive logs, its timing
    record and, for a LOSO fold, its out-of-fold predictions, then its checkpoint, in ``writer``'s
    thread when given.

    Returns (the out-of-fold predictions, None for ``final``; the checkpoint write's future, None
    when it was written here).
    """
    runs = job.ctx.paths.runs
    name = model_name(fold)
    out_dir = runs / name
    train_idx, test_idx = prep.fold_windows(fold)
    live = DvcLive(runs / "live" / name)
    t0 = time.perf_counter()
    try:
        model, preds, hist = train_model(prep, train_idx, job.preset, job.cfg, fold_seed(job.seed, fold), test_idx,
                                         on_epoch=live, desc=name)
    finally:
        live.close()
    seconds = time.perf_counter() - t0
    device = prep.bank.data.device
    log.info(MODEL_LOG, name, len(train_idx), seconds, device, hist[-1]["loss"])
    append_jsonl(job.ctx.paths.train_timings, timing_record(name, len(train_idx), seconds, str(device), hist[-1]["loss"]))
    if fold != "final":
        preds.insert(1, "subject", fold)
        preds.insert(2, "fold", fold)
        preds = preds[PREDICTION_COLUMNS]
        write_table(preds, out_dir / "predictions.csv")
    # the checkpoint comes last: a fold is complete (skipped on rerun) only once it is on disk
    write = partial(save_checkpoint, out_dir / "model.pt", model.cpu(), job.preset, job.ckpt_params, job.provenance,
                    extra={"run_digest": job.run_id, "fold": fold, "history": hist,
                           "train_subjects": sorted(set(prep.train_subject[train_idx]))})
    result = None if fold == "final" else preds
    if writer is None:
        write()
        return result, None
    return result, writer.submit(write)


def train_folds(prep: Prepared, job: FoldJob, folds: list[str],
                progress: bool = False) -> dict[str, pd.DataFrame | None]:
    """Train ``folds`` one after another (:func:`train_fold`). Each checkpoint (120 MB for the
    CAS(ME)^2 model, ~0.3-0.5 s to write) is written in a background thread while the next model
    trains (``torch.save`` releases the GIL). Returns {fold: out-of-fold predictions} once every
    checkpoint is on disk; a failed write raises, and a failed fold still lets the others'
    checkpoints finish."""
    out: dict[str, pd.DataFrame | None] = {}
    writes: list[Future] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="m2es-checkpoint") as writer:
        for fold in tqdm(folds, desc="train folds", unit="fold", disable=not progress):
            for done in writes:      # a failed write stops the run at the next fold, not after the last
                if done.done():
                    done.result()
            out[fold], done = train_fold(prep, job, fold, writer)
            writes.append(done)
    for done in writes:
        done.result()
    return out


@dataclass
class FoldGroup:
    """The folds one process trains, one after another: a work item of the runner
    (:func:`pipeline.core.runner.map_items`), reported by its ``name``. A group is never skipped
    as a whole: its folds are those still to train (each was checked before, by the run's digest).
    """

    name: str
    job: FoldJob
    folds: list[str] = field(default_factory=list)

    def is_done(self) -> bool:
        """Never: the folds of a group are those still to train."""
        return False


def train_group(group: FoldGroup) -> dict[str, pd.DataFrame | None]:
    """Train the folds of ``group`` one after another in this process (a runner task): the process
    reads the features itself, once, instead of receiving them pickled, and refuses features that
    changed since the driver computed the run's digest. Returns {fold: out-of-fold predictions
    (None for ``final``)}."""
    job = group.job
    features, annotations, subjects, provenance = load_inputs(job.ctx, int(job.preset["window"]["feature_stride"]),
                                                              report=False)
    if provenance.get("features_digest") != job.provenance.get("features_digest"):
        raise InputError(f"{job.ctx.paths.features}: features changed while the train stage ran. "
                         "Rerun the train stage (dvc repro train).")
    prep = prepare(features, annotations, subjects, job.preset, resolve_device(job.device))
    return train_folds(prep, job, list(group.folds))


def fold_groups(models: list[str], workers: int) -> list[list[str]]:
    """The models each of ``workers`` fold processes trains, in order: process i takes models
    i, i + n, ... (n = the processes that have a model). ``benchmarks/`` extrapolates by the
    same split."""
    n = min(workers, len(models))
    return [models[i::n] for i in range(n)]


def fold_devices(device: torch.device, n: int, backend: str, requested: str = "auto") -> list[str]:
    """The device of each of ``n`` fold processes: ``cuda:i`` round-robin over the visible GPUs when
    training on CUDA with local processes; on a dask cluster each worker resolves ``requested``
    (``train.device``) itself (start one worker per GPU, e.g. ``CUDA_VISIBLE_DEVICES=i dask worker``)."""
    if backend == "dask":
        return [requested] * n
    if device.type == "cuda" and torch.cuda.device_count() > 1 and device.index is None:
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(n)]
    return [str(device)] * n


def train_in_processes(job: FoldJob, folds: list[str], workers: int, device: torch.device,
                       requested: str) -> dict[str, pd.DataFrame | None]:
    """Train ``folds`` in ``workers`` processes (:func:`fold_groups`, :func:`fold_devices`): loky,
    or the dask cluster when ``parallel.backend`` is ``dask``. ``requested`` is ``train.device``
    (what a dask worker resolves). Returns {fold: out-of-fold predictions}."""
    ctx = job.ctx
    backend = "dask" if ctx.parallel.backend == "dask" else "loky"
    absolute = replace(ctx, paths=DataPaths(ctx.paths.name, Path(ctx.paths.root).resolve()))
    groups = fold_groups(folds, workers)
    n = len(groups)
    devices = fold_devices(device, n, backend, requested)
    items = [FoldGroup("folds " + ", ".join(group), replace(job, ctx=absolute, device=devices[i]), group)
             for i, group in enumerate(groups)]
    par = ParallelParams(backend=backend, n_jobs=n, address=ctx.parallel.address, fail_fast=ctx.parallel.fail_fast)
    log.info("%d folds in %d %s processes on %s", len(folds), n, backend, ", ".join(sorted(set(devices))))
    out: dict[str, pd.DataFrame | None] = {}
    for result in map_items(train_group, items, stage="train folds", parallel=par, unit="process").values():
        out.update(result)
    return out
