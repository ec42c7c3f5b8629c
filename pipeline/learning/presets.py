"""IAENet model presets: reading ``configs/iaenet_<dataset>.yaml`` and applying ``params.yaml: train``.

A model preset holds the window geometry, the architecture, the levels, the loss, the
training recipe and the inference settings (:mod:`models.iaenet` builds the network it
describes). ``params.yaml: train`` values that are not null override the preset's ``train``
and ``loss`` values (:func:`resolve_preset`), so ``dvc exp run -S train.lr=...`` works.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

from pipeline.core.params import deep_merge, read_yaml
from pipeline.errors import ConfigError

MODEL_PRESET_DIR = Path("configs")
REPO_PRESET_DIR = Path(__file__).resolve().parents[2] / "configs"
# params.yaml `train` keys that override a preset value when not null: key -> (section, key)
OVERRIDABLE = {
    "lr": ("train", "lr"),
    "weight_decay": ("train", "weight_decay"),
    "batch_size": ("train", "batch_size"),
    "epochs": ("train", "epochs"),
    "warmup_epochs": ("train", "warmup_epochs"),
    "schedule": ("train", "schedule"),
    "reg_weight": ("loss", "reg_weight"),
    "micro_weight": ("loss", "micro_weight"),
    "ema_decay": ("train", "ema_decay"),
}
_REQUIRED = ("window", "model", "levels", "loss", "train", "inference")


def load_model_preset(name: str, preset_dir: str | Path = MODEL_PRESET_DIR) -> dict[str, Any]:
    """Read the model preset ``<preset_dir>/<name>.yaml`` and check its sections.

    A relative ``preset_dir`` is tried from the current directory, then from the
    repository (so the installed presets are found from anywhere).
    """
    path = Path(preset_dir) / f"{name}.yaml"
    if not path.is_file() and not Path(preset_dir).is_absolute() and (REPO_PRESET_DIR.parent / path).is_file():
        path = REPO_PRESET_DIR.parent / path
    if not path.is_file():
        known = sorted(p.stem for p in Path(preset_dir).glob("iaenet_*.yaml"))
        raise ConfigError(f"{path}: model preset '{name}' not found (known: {', '.join(known) or 'none'}). "
                          "Set model_preset in the dataset preset or params train.model_preset.")
    preset = read_yaml(path)
    missing = [k for k in _REQUIRED if k not in preset]
    if missing:
        raise ConfigError(f"{path}: missing section(s) {', '.join(missing)}. See configs/iaenet_casme2.yaml.")
    preset.setdefault("name", name)
    return preset


def resolve_preset(preset: Mapping[str, Any], train_params: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``preset`` with the non-null overridable ``train_params`` applied."""
    out = copy.deepcopy(dict(preset))
    for key, (section, sub) in OVERRIDABLE.items():
        value = train_params.get(key)
        if value is not None:
            out[section] = deep_merge(out.get(section) or {}, {sub: value})
    return out
