"""Stage ``train``: IAENet, leave-one-subject-out, out-of-fold predictions, checkpoints.

``python -m pipeline.train --dataset NAME`` reads ``data/<ds>/features/<video>.h5``
(``rgb`` and ``flow`` [N, D], concatenated), ``data/<ds>/resample/annotations.csv``
and, when present, ``data/<ds>/resample/videos.csv`` (subjects of videos without
annotations), and writes under ``data/<ds>/runs/``:

* ``fold_<subject>/model.pt`` per LOSO fold, ``final/model.pt`` trained on every subject
  (state_dict, resolved preset, params, feature provenance; :func:`models.iaenet.load_checkpoint`);
* ``fold_<subject>/predictions.csv`` and the union ``predictions.csv``: video, subject,
  fold, epoch, onset, offset, type, score for every epoch from the end of warm-up
  (``epoch`` counts epochs trained, 1-based);
* ``live/<fold>/``: dvclive logs per epoch (train/loss, train/cls, train/reg, lr);
and, outside ``runs/`` (times differ on every run; no DVC output's hash may change with them),
``data/<ds>/train_timings.jsonl``: one JSON record per model this run trained (model, windows,
seconds, device, final_loss, pid), begun afresh at the start of every run
(:mod:`pipeline.learning.timings`).

Speed: every video's features live on the device as one tensor and every window is a
row of indices into it; labels of all training windows are assigned once. A fold's
seed is derived from ``train.seed`` and its subject, so its result does not depend on
the order of folds. A fold whose checkpoint and predictions exist with the same digest
is skipped (resume after a kill). ``train.fold_workers`` > 1 trains folds in parallel
processes (one GPU each, round-robin, when several are visible; the dask cluster when
``parallel.backend`` is ``dask``) with the same results as one after another.
``train.cuda_graphs`` replays each model's training step as a CUDA graph
(:mod:`pipeline.learning.step`): eager steps leave a GPU mostly idle at this model size.
A model's checkpoint is written in a background thread while the next model trains.

The machinery is in :mod:`pipeline.learning`: the recipe (``recipe``, ``params``,
``presets``), the inputs (``data``), the loop (``loop``, ``step``) and the folds (``folds``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from models.errors import ModelConfigError
from models.iaenet import build_model, count_parameters

from pipeline.core.device import resolve_device
from pipeline.core.params import dataset_layer, digest
from pipeline.core.stage import StageContext, stage_main
from pipeline.errors import ConfigError
from pipeline.io.artifacts import PREDICTION_COLUMNS
from pipeline.io.tables import write_table
from pipeline.learning.data import load_inputs, prepare
from pipeline.learning.folds import FoldJob, model_name, train_folds, train_in_processes
from pipeline.learning.params import TrainParams
from pipeline.learning.recipe import VERSION, model_recipe
from pipeline.learning.timings import start_timings

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> None:
    """LOSO training of IAENet on one dataset, then a final model on every subject.

    ``train.fold_workers`` > 1 trains that many folds at once in separate processes (loky, one
    GPU each round-robin when several are visible), or on the dask cluster when
    ``parallel.backend`` is ``dask``; every fold has its own seed, so the results are those of
    the sequential run.
    """
    section = ctx.section()
    # a bad key or value fails before any input is read, named where it is written: the section (even a
    # value per_dataset shadows, e.g. epochs: 0), the dataset's per_dataset entry, then the merged keys
    TrainParams.from_params(ctx.params.get("train"))
    TrainParams.from_params(dataset_layer(ctx.params, "train", ctx.name),
                            where=f"params.yaml: per_dataset.{ctx.name}.train")
    p = TrainParams.from_params(section)
    preset, cfg = model_recipe(ctx)
    device = resolve_device(str(p.device or "auto"))
    features, annotations, subjects, provenance = load_inputs(ctx, int(preset["window"]["feature_stride"]))
    width = int(next(iter(features.values())).shape[1])
    runs = ctx.paths.runs
    # on a dask cluster the workers resolve the device: the driver's may not be theirs
    on_cuda = device.type == "cuda" or (p.workers > 1 and ctx.parallel.backend == "dask")
    run_id = digest({"preset": preset, "cfg": cfg.identity(on_cuda), "seed": p.seed, "provenance": provenance,
                     "annotations": annotations.to_dict("list"), "subjects": subjects, "version": VERSION})
    folds = sorted(set(subjects.values()))
    if p.only_folds:
        folds = [f for f in folds if f in p.only_folds]
    if len(set(subjects.values())) < 2:
        raise ConfigError(f"{ctx.name}: leave-one-subject-out needs at least 2 subjects with features, "
                          f"found {len(set(subjects.values()))}.")
    try:
        n_params = count_parameters(build_model(preset, width))
    except ModelConfigError as exc:   # a preset the network cannot be built from: the user's to fix
        raise ConfigError(str(exc)) from exc
    log.info("IAENet preset %s, %d parameters, input width %d, %d folds on %s, %s%s, %d at a time", preset["name"],
             n_params, width, len(folds), device, cfg.precision,
             ", CUDA graphs" if cfg.graphs_on(device.type == "cuda") else "", p.workers)
    job = FoldJob(ctx=ctx, preset=preset, cfg=cfg, seed=p.seed, run_id=run_id, provenance=provenance,
                  ckpt_params=_checkpoint_params(ctx, section, p.seed), device=str(device))
    preds_of, todo = _completed(runs, folds + (["final"] if p.final_model else []), run_id)
    start_timings(ctx.paths.train_timings)
    if p.workers == 1 or len(todo) <= 1:
        if todo:
            preds_of.update(train_folds(prepare(features, annotations, subjects, preset, device), job, todo,
                                        progress=True))
    else:
        del features   # each fold process reads its own copy
        preds_of.update(train_in_processes(job, todo, p.workers, device, str(p.device or "auto")))
    all_preds = [preds_of[f] for f in folds if preds_of.get(f) is not None]
    preds = pd.concat(all_preds, ignore_index=True) if all_preds else pd.DataFrame(columns=PREDICTION_COLUMNS)
    write_table(preds[PREDICTION_COLUMNS], runs / "predictions.csv")
    log.info("wrote %d predictions of %d folds to %s", len(preds), len(all_preds), runs / "predictions.csv")


def _checkpoint_params(ctx: StageContext, section: dict[str, Any], seed: int) -> dict[str, Any]:
    """What a checkpoint records of the params: the ``train`` section as written, the seed, and the
    recipe of the features the model was trained on, so a copied model.pt spots new videos alone."""
    pipeline_recipe = {stage: ctx.section(stage) for stage in ("crop", "flow", "features")}
    pipeline_recipe["target_fps"] = ctx.dataset.get("target_fps") or ctx.section("resample").get("target_fps")
    pipeline_recipe["color"] = ctx.dataset.get("color")
    return {"train": section, "seed": seed, "pipeline": pipeline_recipe}


def _completed(runs: Path, folds: list[str], run_id: str) -> tuple[dict[str, pd.DataFrame | None], list[str]]:
    """({fold: its predictions} of the folds complete with ``run_id``, which are skipped; the folds to train)."""
    preds_of: dict[str, pd.DataFrame | None] = {}
    todo = []
    for fold in folds:
        name = model_name(fold)
        pred_path = runs / name / "predictions.csv"
        if _done(runs / name / "model.pt", run_id) and (fold == "final" or pred_path.is_file()):
            log.info("%s: complete with the same inputs and params, skipped", name)
            if fold != "final":
                preds_of[fold] = pd.read_csv(pred_path, dtype={"video": str, "subject": str, "fold": str})
            continue
        todo.append(fold)
    return preds_of, todo


def _done(path: Path, run_id: str) -> bool:
    """True when the checkpoint at ``path`` was written by a run with digest ``run_id``."""
    if not path.is_file():
        return False
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable means not done
        return False
    return isinstance(blob, dict) and (blob.get("extra") or {}).get("run_digest") == run_id


main = stage_main("train", run)

if __name__ == "__main__":
    raise SystemExit(main())
