"""IAENet (Li et al., ACCV 2024) assembled from the registered blocks of :mod:`models.blocks`.

A model preset (``configs/iaenet_<dataset>.yaml``, read and resolved by
:mod:`pipeline.learning.presets`) holds the window geometry, the architecture, the levels,
the loss, the training recipe and the inference settings; this module only builds, saves and
loads the network it describes.

Input: features ``[B, T, D]`` (T = 64 feature steps per window, D = rgb + flow width);
output: class logits ``[B, P, 2]`` and distances ``[B, P, 2]`` in units of the point's
level stride, P = 28 (CAS(ME)^2) or 56 (SAMM-LV) points per window.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .blocks import make_block
from .errors import ModelConfigError, ModelInputError

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


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
        raise ModelConfigError(f"model preset {preset.get('name')}: levels.strides/ranges need one entry "
                               f"per encoder level ({len(enc)}).")
    expected, acc = [], fstride * pool
    for s in enc:
        acc *= s
        expected.append(acc)
    if strides != expected:
        raise ModelConfigError(f"model preset {preset.get('name')}: levels.strides {strides} do not match "
                               f"the network (feature_stride x pooling x encoder strides = {expected}).")
    if frames % fstride or any(frames % s for s in strides):
        raise ModelConfigError(f"model preset {preset.get('name')}: window.frames {frames} must be a "
                               "multiple of every level stride.")
    return [frames // s for s in strides], strides


class IAENet(nn.Module):
    """IAENet: base → encoder (+TAM) → top-down decoder (+TAM) → CSFM per level → heads."""

    def __init__(self, in_dim: int, preset: Mapping[str, Any]) -> None:
        super().__init__()
        m = preset["model"]
        self.in_dim = int(in_dim)
        self.points_per_level, self.strides = level_geometry(preset)
        self.window_steps = int(preset["window"]["frames"]) // int(preset["window"]["feature_stride"])
        norm = m.get("input_norm")
        self.input_norm = make_block("input_norm", in_dim=in_dim, **norm) if norm is not None else None
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
        x = x.transpose(1, 2)
        if self.input_norm is not None:
            x = self.input_norm(x)
        feats = self.encoder(self.base(x))
        feats = self.decoder(feats)
        feats = [c(f) for c, f in zip(self.csfm, feats)]
        return self.heads(feats)

    @property
    def num_points(self) -> int:
        """Points per window over all levels."""
        return sum(self.points_per_level)


def mean_outputs(outputs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Average several models' outputs (logits, distances): the class probabilities are averaged and
    returned as logits (clamped to 1e-6..1 - 1e-6), the distances averaged. One output is returned as it is."""
    if len(outputs) == 1:
        return outputs[0]
    prob = torch.stack([torch.sigmoid(lg.float()) for lg, _ in outputs]).mean(0).clamp(1e-6, 1 - 1e-6)
    return torch.log(prob / (1 - prob)), torch.stack([d.float() for _, d in outputs]).mean(0)


class IAENetEnsemble(nn.Module):
    """``model.ensemble`` IAENets of one preset, trained independently (other seeds), predicting
    together: :func:`mean_outputs` of the members (not in the paper; it evens out how much one
    training run's scores depend on its seed, which moves LOSO F1 on small datasets)."""

    def __init__(self, members: Sequence[IAENet]) -> None:
        super().__init__()
        if len({m.in_dim for m in members}) != 1:
            raise ModelConfigError("IAENetEnsemble: members must share one input width.")
        self.in_dim = members[0].in_dim
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [B, T, D] → the members' averaged (logits [B, P, classes], distances [B, P, 2])."""
        return mean_outputs([m(x) for m in self.members])

    @property
    def num_points(self) -> int:
        """Points per window over all levels (as each member)."""
        return self.members[0].num_points


def ensemble_size(preset: Mapping[str, Any]) -> int:
    """``model.ensemble`` of a preset: how many IAENets are trained and averaged (1: one, as published)."""
    k = preset["model"].get("ensemble", 1)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ModelConfigError(f"model preset {preset.get('name')}: model.ensemble must be an integer >= 1, "
                               f"got {k!r}.")
    return k


def build_model(preset: Mapping[str, Any], in_dim: int) -> IAENet | IAENetEnsemble:
    """Build IAENet for features of width ``in_dim`` (rgb + flow) from a model preset; with
    ``model.ensemble`` K > 1, an :class:`IAENetEnsemble` of K of them."""
    if int(in_dim) <= 0:
        raise ModelConfigError(f"build_model: feature width must be positive, got {in_dim}.")
    k = ensemble_size(preset)
    return IAENet(int(in_dim), preset) if k == 1 else IAENetEnsemble([IAENet(int(in_dim), preset) for _ in range(k)])


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_checkpoint(path: str | Path, model: nn.Module, preset: Mapping[str, Any], params: Mapping[str, Any],
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


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`: (model in eval mode, the checkpoint dict).

    Loaded with ``weights_only=True``; the state dict's keys and shapes are checked
    against the model its preset builds.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelInputError(f"{path}: checkpoint not found. Run the train stage "
                              "(dvc repro train@<dataset>) first.")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ModelInputError(f"{path}: not a readable m2es checkpoint ({exc}). "
                              "Retrain or restore the file.") from exc
    for key in ("state_dict", "in_dim", "preset"):
        if not isinstance(blob, dict) or key not in blob:
            raise ModelInputError(f"{path}: checkpoint lacks '{key}'; it was not written by m2es train. "
                                  "Retrain.")
    model = build_model(blob["preset"], blob["in_dim"])
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in blob["state_dict"].items()}
    if expected != got:
        diff = sorted(set(expected.items()) ^ set(got.items()))[:5]
        raise ModelInputError(f"{path}: weights do not match the model of its preset "
                              f"(first differences: {diff}). Retrain with the current code.")
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval(), blob
