"""The training recipe of a run: the model preset with ``params.yaml: train`` applied.

:class:`TrainRecipe` is what decides a trained model besides the data and the seed; its
:meth:`TrainRecipe.identity` and :data:`VERSION` enter the train stage's run digest.
:func:`lr_factor` is the published learning-rate schedule, :func:`fold_seed` a fold's seed.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.core.params import dataset_layer
from pipeline.core.stage import StageContext
from pipeline.errors import ConfigError
from pipeline.learning.params import TrainParams
from pipeline.learning.presets import OVERRIDABLE, load_model_preset, resolve_preset
from pipeline.learning.step import LossSpec

log = logging.getLogger(__name__)

#: the training code's version: a change that alters trained models bumps it (enters the run digest)
VERSION = 1


@dataclass
class TrainRecipe:
    """The resolved training recipe of one run (model preset + params.yaml ``train`` and ``per_dataset``)."""

    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    warmup_epochs: int
    schedule: str = "epoch"
    precision: str = "fp32"
    eval_batch_size: int = 512
    predict_from_epoch: int | None = None
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    micro_weight: float = 4.0
    reg_weight: float = 0.05
    cuda_graphs: bool = False
    ema_decay: float = 0.0

    @classmethod
    def from_preset(cls, preset: Mapping[str, Any],
                    train_params: TrainParams | Mapping[str, Any]) -> "TrainRecipe":
        """Build from a resolved preset (``train``, ``loss``) and the runtime keys of params ``train``
        (a :class:`TrainParams`, or a mapping of its keys, validated here)."""
        p = train_params if isinstance(train_params, TrainParams) else TrainParams.from_params(train_params)
        t, lo = preset["train"], preset["loss"]
        cfg = cls(lr=float(t["lr"]), weight_decay=float(t.get("weight_decay", 0.0)),
                  batch_size=int(t["batch_size"]), epochs=int(t["epochs"]),
                  warmup_epochs=int(t.get("warmup_epochs", 0)), schedule=str(t.get("schedule", "epoch")),
                  precision=str(p.precision or "fp32"),
                  eval_batch_size=int(p.eval_batch_size or 512),
                  predict_from_epoch=p.predict_from_epoch,
                  focal_alpha=float(lo.get("focal_alpha", 0.25)), focal_gamma=float(lo.get("focal_gamma", 2.0)),
                  micro_weight=float(lo.get("micro_weight", 4.0)), reg_weight=float(lo["reg_weight"]),
                  cuda_graphs=bool(p.cuda_graphs or False), ema_decay=float(t.get("ema_decay") or 0.0))
        if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
            raise ConfigError("train: epochs and batch_size must be >= 1 and lr > 0 (params.yaml train / preset).")
        if not 0 <= cfg.warmup_epochs < cfg.epochs:
            raise ConfigError(f"train: warmup_epochs={cfg.warmup_epochs} must be in [0, epochs={cfg.epochs}).")
        if cfg.schedule not in ("epoch", "step"):
            raise ConfigError(f"train.schedule '{cfg.schedule}' is not one of epoch, step.")
        if cfg.precision not in ("fp32", "bf16"):
            raise ConfigError(f"train.precision '{cfg.precision}' is not one of fp32, bf16.")
        if not 0.0 <= cfg.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay={cfg.ema_decay} must be in [0, 1) (0: no weight average).")
        return cfg

    def identity(self, cuda: bool) -> dict[str, Any]:
        """The fields that decide a trained model, for the run's digest. ``cuda_graphs`` counts only
        where it takes effect, on and training on CUDA (``cuda``): a graphed run draws other dropout
        masks. Elsewhere the steps are eager, those of runs made before the setting existed, whose
        checkpoints stay valid. ``ema_decay`` counts only when on (runs from before it existed had none)."""
        return {k: v for k, v in self.__dict__.items()
                if (k != "cuda_graphs" or self.graphs_on(cuda)) and (k != "ema_decay" or self.ema_decay)}

    def graphs_on(self, cuda: bool) -> bool:
        """Whether training steps are CUDA graphs: the setting on and training on CUDA (``cuda``)."""
        return self.cuda_graphs and cuda

    def loss_spec(self) -> LossSpec:
        """The loss settings and precision of a training step."""
        return LossSpec(alpha=self.focal_alpha, gamma=self.focal_gamma, micro_weight=self.micro_weight,
                        reg_weight=self.reg_weight, precision=self.precision)

    @property
    def first_predicted_epoch(self) -> int:
        """First epoch (1-based count of epochs trained) whose predictions are written."""
        if self.predict_from_epoch is None:
            return self.warmup_epochs + 1
        return max(1, int(self.predict_from_epoch))


def lr_factor(t: float, warmup: int, epochs: int) -> float:
    """Published schedule at (fractional) epoch ``t`` (0-based): t / warmup during warm-up
    (``t <= warmup``), then 0.5 * (1 + cos(pi * (t - warmup) / (epochs - warmup)))."""
    if warmup > 0 and t <= warmup:
        return t / warmup
    return 0.5 * (math.cos(math.pi * (t - warmup) / max(epochs - warmup, 1)) + 1)


def fold_seed(seed: int, fold: str) -> int:
    """A fold's seed from the run seed and the fold's name (independent of fold order)."""
    return int(hashlib.sha256(f"{int(seed)}:{fold}".encode()).hexdigest()[:8], 16)


def model_recipe(ctx: StageContext, preset_dir: str | Path | None = None,
                 model_preset: str | None = None) -> tuple[dict[str, Any], TrainRecipe]:
    """The resolved IAENet preset and training recipe of the dataset: its model preset (``model_preset``,
    else ``train.model_preset`` or the dataset's ``model_preset``, from ``preset_dir``, default
    ``train.preset_dir`` or ``configs``) with the ``train`` params applied.

    The section is validated (:class:`TrainParams`: unknown keys, types, choices); the preset
    takes its overrides as written in params.yaml, which is what the run digest has always seen.
    """
    section = ctx.section("train")
    p = TrainParams.from_params(section)
    preset_name = model_preset or p.model_preset or ctx.dataset.get("model_preset")
    if not preset_name:
        raise ConfigError(f"configs/datasets/{ctx.name}.yaml: no model_preset (e.g. iaenet_casme2).")
    raw = load_model_preset(preset_name, preset_dir or p.preset_dir or "configs")
    preset = resolve_preset(raw, section)
    cfg = TrainRecipe.from_preset(preset, p)
    log.info("%s", recipe_sources(raw, section, dataset_layer(ctx.params, "train", ctx.name), ctx.name))
    return preset, cfg


def recipe_sources(raw: Mapping[str, Any], section: Mapping[str, Any], layer: Mapping[str, Any], name: str) -> str:
    """One line saying where each recipe value of the run comes from: the model preset ``raw`` (its key
    null in ``section``, the merged ``train`` params), ``per_dataset.<name>.train`` (``layer``) or params.yaml."""
    from_model, from_params = [], []
    for key, (part, sub) in OVERRIDABLE.items():
        if section.get(key) is None:
            from_model.append(f"{key}={(raw.get(part) or {}).get(sub)}")
        else:
            where = f"per_dataset.{name}.train" if key in layer else "params.yaml train"
            from_params.append(f"{key}={section[key]} ({where})")
    return (f"train@{name} recipe: from model preset {raw.get('name')}: {', '.join(from_model) or 'nothing'}"
            + (f"; from params: {', '.join(from_params)}" if from_params else ""))
