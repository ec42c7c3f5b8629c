"""The training loop of one model, and its dvclive log.

:func:`train_model` trains IAENet on a set of training windows with the published schedule
(:func:`pipeline.learning.recipe.lr_factor`), one :class:`pipeline.learning.step.TrainStep`
per batch, and predicts the held-out windows after every epoch from the recipe's first
predicted epoch. :class:`DvcLive` writes each epoch's losses and learning rate with dvclive.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch

from models.iaenet import IAENet, IAENetEnsemble, ensemble_size, mean_outputs

from pipeline.errors import ConfigError
from pipeline.learning.data import Prepared
from pipeline.learning.ema import WeightAverage
from pipeline.learning.postprocess import check_inference, predictions_from_outputs, run_windows
from pipeline.learning.recipe import TrainRecipe, lr_factor
from pipeline.learning.step import StepTensors, TrainStep
from pipeline.learning.windows import WindowSet

log = logging.getLogger(__name__)

#: called after every epoch with (epochs trained, {"loss", "cls", "reg", "lr"})
EpochCallback = Callable[[int, dict[str, float]], None]


def member_seed(seed: int, member: int) -> int:
    """The training seed of ensemble member ``member`` of a model seeded ``seed`` (member 0: ``seed``)."""
    return seed + 7919 * member


def train_model(prep: Prepared, train_idx: np.ndarray, preset: Mapping[str, Any], cfg: TrainRecipe, seed: int,
                test_idx: np.ndarray | None = None, on_epoch: EpochCallback | None = None,
                desc: str = "fold") -> tuple[torch.nn.Module, pd.DataFrame, list[dict[str, float]]]:
    """Train one model on the training windows ``train_idx``; predict test windows ``test_idx``
    after every epoch from ``cfg.first_predicted_epoch``. With ``model.ensemble`` K > 1 the preset's
    K IAENets are trained one after another (seeds :func:`member_seed`) and each epoch's predictions
    come from their averaged outputs (:func:`models.iaenet.mean_outputs`, as the returned
    :class:`models.iaenet.IAENetEnsemble` predicts); ``on_epoch`` and the history follow member 0.

    Returns (model, predictions with an ``epoch`` column, per-epoch history).
    """
    check_inference(preset["inference"])   # a bad suppression switch fails before training, not after an epoch
    k = ensemble_size(preset)
    wins = prep.test.subset(np.asarray(test_idx)) if test_idx is not None and len(test_idx) else None
    outputs: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    scored: list[torch.nn.Module] = []
    history: list[dict[str, float]] = []
    for j in range(k):
        s = member_seed(seed, j)
        torch.manual_seed(s)                 # the member's initial weights, then its dropout, from its seed
        member = IAENet(prep.bank.width, preset)
        model_j, hist = train_member(prep, member, train_idx, cfg, s, wins, outputs, on_epoch if j == 0 else None,
                                     desc if k == 1 else f"{desc} member {j}")
        scored.append(model_j)               # the module that predicted (with ema_decay: the weight average)
        history = history or hist
    model = scored[0] if k == 1 else IAENetEnsemble(scored)
    preds = []
    for epoch, outs in sorted(outputs.items()):
        logits, dists = mean_outputs(outs)
        df = predictions_from_outputs(logits, dists, wins, prep.spec, prep.grid, preset["inference"], epoch)
        df.insert(1, "epoch", epoch)
        preds.append(df)
    out = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(columns=["video", "epoch", "onset",
                                                                                  "offset", "type", "score"])
    return model, out, history


def train_member(prep: Prepared, model: torch.nn.Module, train_idx: np.ndarray, cfg: TrainRecipe, seed: int,
                 wins: WindowSet | None, outputs: dict[int, list[tuple[torch.Tensor, torch.Tensor]]],
                 on_epoch: EpochCallback | None = None, desc: str = "fold") -> tuple[torch.nn.Module,
                                                                                   list[dict[str, float]]]:
    """Train one IAENet ``model`` (freshly built) on ``train_idx`` with ``seed``; after every epoch from
    ``cfg.first_predicted_epoch`` append its raw outputs on the test windows ``wins`` to
    ``outputs[epoch]``. The caller seeds torch's global generator (which drew ``model``'s weights and
    draws its dropout); ``seed`` orders the batches. Returns (the model that predicts: the weight
    average with ``ema_decay``, else ``model``; per-epoch history)."""
    device = prep.bank.data.device
    gen = torch.Generator().manual_seed(seed)
    model = model.to(device)
    if getattr(model, "input_norm", None) is not None:
        model.input_norm.fit(prep.training_rows(train_idx))
    model.train()
    idx_all = torch.as_tensor(np.asarray(train_idx, np.int64))
    n = len(idx_all)
    if n == 0:
        raise ConfigError(f"{desc}: no training windows (no annotated interval fits a window). "
                          "Check annotations.csv and the features.")
    graph = cfg.graphs_on(device.type == "cuda")
    step = TrainStep(model, prep.bank, StepTensors(prep.train_rows, prep.train_cls, prep.train_reg, prep.train_mask),
                     cfg.loss_spec(), cfg.lr, cfg.weight_decay, cfg.batch_size, static=graph,
                     warm_idx=idx_all[:cfg.batch_size].to(device) if graph else None)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None
    scored = ema.shadow if ema is not None else model   # the model that predicts and is returned
    history = []
    for epoch in range(cfg.epochs):
        perm = idx_all[torch.randperm(n, generator=gen)].to(device)
        lr_epoch = cfg.lr * lr_factor(epoch, cfg.warmup_epochs, cfg.epochs)
        for b in range(steps_per_epoch):
            t = epoch + (b / steps_per_epoch if cfg.schedule == "step" else 0.0)
            step.step(perm[b * cfg.batch_size:(b + 1) * cfg.batch_size], cfg.lr * lr_factor(t, cfg.warmup_epochs,
                                                                                            cfg.epochs))
            if ema is not None:
                ema.update(model)
        mean = step.take_sums(steps_per_epoch)
        rec = {"loss": mean[0], "cls": mean[1], "reg": mean[2], "lr": lr_epoch}
        history.append(rec)
        if on_epoch is not None:
            on_epoch(epoch + 1, rec)
        if wins is not None and epoch + 1 >= cfg.first_predicted_epoch:
            outputs.setdefault(epoch + 1, []).append(run_windows(scored, prep.bank, wins, prep.spec.steps,
                                                                 cfg.eval_batch_size, cfg.precision))
        log.debug("%s epoch %d: loss %.4f cls %.4f reg %.4f lr %.2e", desc, epoch + 1, *mean, lr_epoch)
    return scored, history


#: dvclive's step signal file (see :meth:`DvcLive.close`)
STEP_SIGNAL = "DVCLIVE_STEP_COMPLETED"


class DvcLive:
    """dvclive logging of one fold (losses and lr per epoch) into ``directory``."""

    def __init__(self, directory: Path) -> None:
        try:
            from dvclive import Live
        except ImportError as exc:  # pragma: no cover - dvclive is a declared dependency
            raise ConfigError("dvclive is not installed: pip install dvclive (or pip install -e .).") from exc
        self.live = Live(dir=str(directory), save_dvc_exp=False, dvcyaml=False)

    def __call__(self, epoch: int, rec: Mapping[str, float]) -> None:
        """Log one epoch's record (an :data:`EpochCallback`)."""
        for key in ("loss", "cls", "reg"):
            self.live.log_metric(f"train/{key}", float(rec[key]))
        self.live.log_metric("lr", float(rec["lr"]))
        self.live.next_step()

    def close(self) -> None:
        """End the log; tolerates another fold process having removed the shared step signal."""
        try:
            self.live.end()
        except FileNotFoundError as exc:
            # the last thing end() does is remove a signal file for DVC's VS Code extension, shared by every
            # Live under one DVC root (.dvc/tmp/exps/run/DVCLIVE_STEP_COMPLETED), after checking that it
            # exists: with folds in parallel processes (train.fold_workers), another fold's end() may have
            # removed it in between. The fold's own logs are complete by then.
            if not str(exc.filename or "").endswith(STEP_SIGNAL):
                raise
