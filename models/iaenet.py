"""IAENet (Li et al., ACCV 2024) assembled from the registered blocks of :mod:`models.blocks`.

A model preset (``configs/iaenet_<dataset>.yaml``) holds the window geometry, the
architecture, the levels, the loss, the training recipe and the inference settings.
``params.yaml: train`` values that are not null override the preset's ``train`` and
``loss`` values (:func:`resolve_preset`), so ``dvc exp run -S train.lr=...`` works.

Input: features ``[B, T, D]`` (T = 64 feature steps per window, D = rgb + flow width);
output: class logits ``[B, P, 2]`` and distances ``[B, P, 2]`` in units of the point's
level stride, P = 28 (CAS(ME)^2) or 56 (SAMM-LV) points per window.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from pipeline.errors import ConfigError, InputError
from pipeline.core.params import deep_merge, read_yaml

from .blocks import make_block

log = logging.getLogger(__name__)

MODEL_PRESET_DIR = Path("configs")
REPO_PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"
CHECKPOINT_VERSION = 1
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


def level_geometry(preset: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    """(points per level, stride in frames per level) of a preset, checked against the model.

    The frames between points must equal feature_stride x base pooling x the encoder's
    cumulative stride, and every level must tile the window exactly.
    """
    win, model, levels = preset["window"], preset["model"], preset["levels"]
    frames, fstride = int(win["frames"]), int(win["feature_stride"])
    pool = 4 if model["base"].get("second_pool", True) else 2
    strides = [int(s) for s in levels["strides"]]
    enc = [int(s) for s in model["encoder"]["strides"]]
    if len(strides) != len(enc) or len(levels["ranges"]) != len(enc):
        raise ConfigError(f"model preset {preset.get('name')}: levels.strides/ranges need one entry per encoder level "
                          f"({len(enc)}).")
    expected, acc = [], fstride * pool
    for s in enc:
        acc *= s
        expected.append(acc)
    if strides != expected:
        raise ConfigError(f"model preset {preset.get('name')}: levels.strides {strides} do not match the network "
                          f"(feature_stride x pooling x encoder strides = {expected}).")
    if frames % fstride or any(frames % s for s in strides):
        raise ConfigError(f"model preset {preset.get('name')}: window.frames {frames} must be a multiple of every "
                          "level stride.")
    return [frames // s for s in strides], strides


class IAENet(nn.Module):
    """IAENet: base → encoder (+TAM) → top-down decoder (+TAM) → CSFM per level → heads."""

    def __init__(self, in_dim: int, preset: Mapping[str, Any]) -> None:
        super().__init__()
        m = preset["model"]
        self.in_dim = int(in_dim)
        self.points_per_level, self.strides = level_geometry(preset)
        self.window_steps = int(preset["window"]["frames"]) // int(preset["window"]["feature_stride"])
        self.base = make_block("base", in_dim=in_dim, **m["base"])
        dims = list(m["encoder"]["dims"])
        self.encoder = make_block("encoder", in_dim=self.base.out_dim, **m["encoder"])
        self.decoder = make_block("decoder", dims=dims, **(m.get("decoder") or {}))
        self.csfm = nn.ModuleList(make_block("csfm", dim=d, **(m.get("csfm") or {})) for d in dims)
        self.heads = make_block("heads", in_dims=dims, num_classes=int(m.get("num_classes", 2)), **m["heads"])
        self._init_biases()

    def _init_biases(self) -> None:
        """Zero every Conv1d and Linear bias (as the published code initialises them)."""
        for mod in self.modules():
            if isinstance(mod, (nn.Conv1d, nn.Linear)) and mod.bias is not None:
                nn.init.zeros_(mod.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [B, T, D] features → (logits [B, P, classes], distances [B, P, 2] in strides)."""
        if x.dim() != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"IAENet expects [B, T, {self.in_dim}] features, got {tuple(x.shape)}")
        feats = self.encoder(self.base(x.transpose(1, 2)))
        feats = self.decoder(feats)
        feats = [c(f) for c, f in zip(self.csfm, feats)]
        return self.heads(feats)

    @property
    def num_points(self) -> int:
        """Points per window over all levels."""
        return sum(self.points_per_level)


def build_model(preset: Mapping[str, Any], in_dim: int) -> IAENet:
    """Build IAENet for features of width ``in_dim`` (rgb + flow) from a model preset."""
    if int(in_dim) <= 0:
        raise ConfigError(f"build_model: feature width must be positive, got {in_dim}.")
    return IAENet(int(in_dim), preset)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_checkpoint(path: str | Path, model: IAENet, preset: Mapping[str, Any], params: Mapping[str, Any],
                    provenance: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> None:
    """Write ``{version, state_dict, in_dim, preset, params, provenance, extra}`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    blob = {"version": CHECKPOINT_VERSION, "state_dict": state, "in_dim": model.in_dim,
            "preset": dict(preset), "params": dict(params), "provenance": dict(provenance),
            "extra": dict(extra or {})}
    tmp = path.with_name(f".{path.name}.partial")
    try:
        torch.save(blob, tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[IAENet, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`: (model in eval mode, the checkpoint dict).

    Loaded with ``weights_only=True``; the state dict's keys and shapes are checked
    against the model its preset builds.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found. Run the train stage (dvc repro train@<dataset>) first.")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(f"{path}: not a readable m2es checkpoint ({exc}). Retrain or restore the file.") from exc
    for key in ("state_dict", "in_dim", "preset"):
        if not isinstance(blob, dict) or key not in blob:
            raise InputError(f"{path}: checkpoint lacks '{key}'; it was not written by m2es train. Retrain.")
    model = build_model(blob["preset"], blob["in_dim"])
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in blob["state_dict"].items()}
    if expected != got:
        diff = sorted(set(expected.items()) ^ set(got.items()))[:5]
        raise InputError(f"{path}: weights do not match the model of its preset (first differences: {diff}). "
                         "Retrain with the current code.")
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval(), blob
