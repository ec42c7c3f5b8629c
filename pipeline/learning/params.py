"""The ``train`` section of ``params.yaml``: :class:`TrainParams`.

Two kinds of keys (explained in configs/params.reference.yaml):

* recipe values (``lr``, ``weight_decay``, ``batch_size``, ``epochs``, ``warmup_epochs``,
  ``schedule``, ``reg_weight``, ``micro_weight``, ``ema_decay``): null takes the model preset's value,
  anything else overrides it (:func:`pipeline.learning.presets.resolve_preset`);
* runtime keys: seed, device, precision, which preset, which folds, how many at once.

The resolved recipe, preset and params together, is
:class:`pipeline.learning.recipe.TrainRecipe`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.section import Section, knob
from pipeline.errors import ConfigError

PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("epoch", "step")


@dataclass(frozen=True)
class TrainParams(Section):
    """The ``train`` section of params.yaml (defaults: what the stage did with a key left out)."""

    SECTION = "train"

    seed: int = knob(0)
    device: str | None = knob("auto")
    precision: str | None = knob("fp32", choices=PRECISIONS)
    model_preset: str | None = knob(None)
    preset_dir: str | None = knob("configs")
    lr: float | None = knob(None, min=0.0)
    weight_decay: float | None = knob(None, min=0.0)
    batch_size: int | None = knob(None, min=1)
    epochs: int | None = knob(None, min=1)
    warmup_epochs: int | None = knob(None, min=0)
    schedule: str | None = knob(None, choices=SCHEDULES)
    reg_weight: float | None = knob(None, min=0.0)
    micro_weight: float | None = knob(None, min=0.0)
    ema_decay: float | None = knob(None, min=0.0)
    predict_from_epoch: int | None = knob(None, min=1)
    eval_batch_size: int | None = knob(512, min=1)
    final_model: bool = knob(True)
    folds: list[str] | None = knob(None)
    fold_workers: int | None = knob(1)
    cuda_graphs: bool | None = knob(False)

    def check(self, where: str) -> None:
        """At least one fold process (``fold_workers``)."""
        if self.workers < 1:
            raise ConfigError(f"{where}.fold_workers must be >= 1 (1: folds one after another), "
                              f"got {self.workers}.")

    @property
    def workers(self) -> int:
        """Folds trained at once (``fold_workers``; null: 1)."""
        return 1 if self.fold_workers is None else int(self.fold_workers)

    @property
    def only_folds(self) -> set[str]:
        """The subjects of ``folds`` as strings (empty: every subject)."""
        return {str(s) for s in self.folds or ()}
