"""IAENet building blocks, registered by name and built from config mappings.

In the spirit of ActionFormer's ``libs/modeling``: every block is a small
``nn.Module`` registered under a name; :func:`make_block` builds one from its name
and keyword arguments taken from a model preset (``configs/iaenet_<dataset>.yaml``).
The registry is filled once at import and never changed afterwards.

Blocks (the published IAENet recipe, see ``docs/architecture.md``):

* ``base``     Conv1d(in→C, k9) + Mish + MaxPool2, Conv1d(C→C, k9) + Mish (+ MaxPool2)
* ``encoder``  Conv1d(k3) + Mish per level (strides 1, 2, 2), TAM on every output
* ``tam``      temporal attention: mean over channels → Conv1d(1→1, k1) → sigmoid → multiply
* ``decoder``  ConvTranspose1d(k3, s2) from level l+1 to l, TAM, add the encoder feature of l
* ``csfm``     residual bottleneck (Conv k3, Conv k1 C→C/4, ReLU, Conv k1 C/4→C) + per-time-step
               MLP (LayerNorm, Linear, GELU, Linear, LayerNorm; bias-free Linear, dropout; no residual)
* ``heads``    per-level Conv1d(k1)→512 + Mish; shared classification and regression branches
* ``input_norm`` (not in the paper; only when a preset names it) per-channel standardisation of
               the input features with statistics of the training videos, kept as buffers; its
               ``per_video`` option (each video's own per-channel median subtracted, and with
               ``robust`` its noise scale divided, first) is applied by the feature bank, which
               sees whole videos (:mod:`pipeline.learning.windows`)

All tensors are channel-first ``[B, C, T]``.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import torch
from torch import nn

from .errors import ModelConfigError

M = TypeVar("M", bound=type)

_REGISTRY: dict[str, type[nn.Module]] = {}


def register_block(name: str) -> Callable[[M], M]:
    """Class decorator: register a block class under ``name`` (names are unique)."""

    def wrap(cls: M) -> M:
        if name in _REGISTRY:
            raise ValueError(f"block '{name}' registered twice")
        _REGISTRY[name] = cls
        return cls

    return wrap


def registered_blocks() -> list[str]:
    """Names of all registered blocks."""
    return sorted(_REGISTRY)


def make_block(name: str, **kwargs) -> nn.Module:
    """Build the block registered as ``name`` with ``kwargs`` (from a model preset)."""
    if name not in _REGISTRY:
        raise ModelConfigError(f"model preset: unknown block '{name}'. "
                               f"Known blocks: {', '.join(registered_blocks())}.")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as exc:
        raise ModelConfigError(f"model preset: bad arguments for block '{name}': {exc}. Fix the preset.") from exc


@register_block("tam")
class TemporalAttention(nn.Module):
    """TAM: weight each time step by sigmoid(w * mean_c(x) + b) (a 1→1 Conv1d with k=1)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Conv1d(1, 1, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, C, T] → ``x`` scaled per time step."""
        return x * torch.sigmoid(self.gate(x.mean(dim=1, keepdim=True)))


@register_block("input_norm")
class InputStandardize(nn.Module):
    """Per-channel standardisation ``(x - mean) / std`` of ``[B, C, T]`` features.

    Not part of the published IAENet (whose I3D features share one scale): hand-made
    features such as ``roi_flow``'s mix units whose spreads differ by three orders of
    magnitude. ``mean`` and ``std`` are buffers, set from the training videos before
    training (:meth:`fit`) and saved in the checkpoint, so inference standardises new videos
    with the training statistics. Until fitted it is the identity.

    ``per_video``: ``none``; ``median``: every video's features have their own per-channel median
    subtracted before anything else (a per-video offset, e.g. a subject's resting face against the
    sliding reference, is not a motion); ``robust``: also divided by the video's own per-channel
    noise scale (1.4826 x the median absolute deviation), so a motion counts by how far it stands
    out of its own video's noise, whatever the face's size, texture or the camera. A model sees
    windows, not videos, so the feature bank does it (``pipeline.learning.windows.FeatureBank``); the
    block records the choice, which reaches inference through the preset saved in the checkpoint.
    """

    PER_VIDEO = ("none", "median", "robust")

    def __init__(self, in_dim: int, eps: float = 1e-3, per_video: str = "none") -> None:
        super().__init__()
        if per_video not in self.PER_VIDEO:
            raise ModelConfigError(f"input_norm.per_video '{per_video}' is not one of {', '.join(self.PER_VIDEO)}.")
        self.per_video = per_video
        self.eps = float(eps)
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))

    @torch.no_grad()
    def fit(self, rows: torch.Tensor) -> None:
        """Set the statistics from feature rows ``[N, C]`` (the training videos' steps)."""
        if rows.dim() != 2 or rows.shape[1] != self.mean.numel() or rows.shape[0] < 2:
            raise ModelConfigError(f"input_norm: needs [N >= 2, {self.mean.numel()}] rows, got {tuple(rows.shape)}")
        rows = rows.to(device=self.mean.device, dtype=torch.float64)
        self.mean.copy_(rows.mean(0).to(self.mean.dtype))
        self.std.copy_((rows.std(0) + self.eps).to(self.std.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean[:, None]) / self.std[:, None]


@register_block("base")
class BaseNet(nn.Module):
    """The base: two wide k9 convolutions with Mish, max-pooling by 2 after the first
    and (``second_pool``, CAS(ME)^2) after the second."""

    def __init__(self, in_dim: int, dim: int = 512, kernel_size: int = 9, second_pool: bool = True) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(in_dim, dim, kernel_size, padding=pad)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size, padding=pad)
        self.act = nn.Mish()
        self.pool = nn.MaxPool1d(2, 2)
        self.second_pool = bool(second_pool)
        self.out_dim = dim
        self.downsample = 4 if self.second_pool else 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = self.act(self.conv2(x))
        return self.pool(x) if self.second_pool else x


@register_block("encoder")
class ConvEncoder(nn.Module):
    """Encoder: one Conv1d(k3) + Mish per level with the given strides; a TAM on every output."""

    def __init__(self, in_dim: int, dims: Sequence[int], strides: Sequence[int], kernel_size: int = 3) -> None:
        super().__init__()
        if len(dims) != len(strides):
            raise ModelConfigError(f"encoder: {len(dims)} dims but {len(strides)} strides; give one stride per level.")
        self.convs = nn.ModuleList()
        prev = in_dim
        for dim, stride in zip(dims, strides):
            self.convs.append(nn.Conv1d(prev, dim, kernel_size, stride=stride, padding=kernel_size // 2))
            prev = dim
        self.tams = nn.ModuleList([make_block("tam") for _ in dims])
        self.act = nn.Mish()
        self.dims = list(dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for conv in self.convs:
            x = self.act(conv(x))
            feats.append(x)  # the next level is computed from the raw (pre-TAM) feature
        return [tam(f) for tam, f in zip(self.tams, feats)]


@register_block("decoder")
class TopDownDecoder(nn.Module):
    """Top-down decoder: level l = TAM(ConvTranspose1d(level l+1)) + encoder level l.

    The top level is the encoder's top. ConvTranspose1d(k3, s2, padding 1,
    output_padding 1) exactly doubles the length.
    """

    def __init__(self, dims: Sequence[int], kernel_size: int = 3) -> None:
        super().__init__()
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(dims[i + 1], dims[i], kernel_size, stride=2, padding=kernel_size // 2, output_padding=1)
            for i in range(len(dims) - 1)
        )
        self.tams = nn.ModuleList([make_block("tam") for _ in range(len(dims) - 1)])

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = [None] * len(feats)
        out[-1] = feats[-1]
        for i in range(len(feats) - 2, -1, -1):
            out[i] = self.tams[i](self.ups[i](out[i + 1])) + feats[i]
        return out


@register_block("csfm")
class CSFM(nn.Module):
    """CSFM of one level: residual bottleneck, then a per-time-step MLP shared over time.

    bottleneck: x + Conv1x1(ReLU(Conv1x1_{C→C/r}(Conv_k3(x))))
    MLP (published code: bias-free Linear layers, no residual):
    drop → LayerNorm → Linear → drop → GELU → drop → Linear → drop → LayerNorm.
    """

    def __init__(self, dim: int, reduction: int = 4, kernel_size: int = 3, dropout: float = 0.2,
                 mlp_bias: bool = False) -> None:
        super().__init__()
        self.bottleneck = nn.Sequential(
            nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2),
            nn.Conv1d(dim, dim // reduction, 1),
            nn.ReLU(),
            nn.Conv1d(dim // reduction, dim, 1),
        )
        self.mlp = nn.Sequential(
            nn.Dropout(dropout),
            nn.LayerNorm(dim),
            nn.Linear(dim, dim, bias=mlp_bias),
            nn.Dropout(dropout),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim, dim, bias=mlp_bias),
            nn.Dropout(dropout),
            nn.LayerNorm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.bottleneck(x)
        return self.mlp(x.transpose(1, 2)).transpose(1, 2)


class _Branch(nn.Module):
    """A head branch: ``layers`` × (Conv1d(k3) + Mish), then Conv1d(k3) to ``out_dim``."""

    def __init__(self, dim: int, out_dim: int, layers: int, kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel_size, padding=pad) for _ in range(layers))
        self.out = nn.Conv1d(dim, out_dim, kernel_size, padding=pad)
        self.act = nn.Mish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = self.act(conv(x))
        return self.out(x)


@register_block("heads")
class Heads(nn.Module):
    """Per-level 1x1 projection to ``dim`` + Mish, then classification and regression
    branches shared by all levels. Returns logits [B, P, classes] and distances
    [B, P, 2] (ReLU, in units of the level stride), levels concatenated along P."""

    def __init__(self, in_dims: Sequence[int], dim: int = 512, layers: int = 2, kernel_size: int = 3,
                 num_classes: int = 2) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv1d(d, dim, 1) for d in in_dims)
        self.cls = _Branch(dim, num_classes, layers, kernel_size)
        self.reg = _Branch(dim, 2, layers, kernel_size)
        self.act = nn.Mish()

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, dists = [], []
        for proj, f in zip(self.proj, feats):
            f = self.act(proj(f))
            logits.append(self.cls(f).transpose(1, 2))
            dists.append(self.reg(f).transpose(1, 2))
        return torch.cat(logits, dim=1), torch.relu(torch.cat(dists, dim=1))
