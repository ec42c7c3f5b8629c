"""Second backbone: pytorchvideo's I3D ResNet-50 (Kinetics 8x8), 2048 features per clip.

Built with ``pytorchvideo.models.hub.resnet.i3d_r50`` (no download); the Kinetics
checkpoint (``I3D_8x8_R50.pyth``) comes from a user path. Only RGB weights exist, so
the flow stream's first convolution is inflated to 2 input channels by averaging the
RGB kernel over its channels and repeating it (cross-modality initialisation).
pytorchvideo is imported only when this module is, i.e. when ``features.backbone`` is
``i3d_r50``.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .errors import ModelConfigError

FEATURE_DIM = 2048


class I3DR50(nn.Module):
    """pytorchvideo I3D-R50 (under ``net``) with a ``features`` method like InceptionI3d's."""

    feature_dim: int = FEATURE_DIM

    def __init__(self, in_channels: int = 3, num_classes: int = 400) -> None:
        super().__init__()
        try:
            from pytorchvideo.models.hub.resnet import i3d_r50
        except ImportError as exc:
            raise ModelConfigError("features.backbone is 'i3d_r50' but pytorchvideo is not installed: "
                                   "pip install pytorchvideo==0.1.5, or use backbone: i3d.") from exc
        self.net = i3d_r50(pretrained=False, input_channel=in_channels, model_num_class=num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-clip features [B, 2048]: the last stage's output averaged over time and space."""
        for block in self.net.blocks[:-1]:
            x = block(x)
        return x.float().mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Kinetics logits [B, num_classes] (pytorchvideo's head)."""
        return self.net(x)


def build_i3d_r50(in_channels: int, num_classes: int = 400) -> I3DR50:
    """An I3D-R50 taking ``in_channels`` (3 RGB, 2 flow), default init."""
    return I3DR50(in_channels, num_classes)


def inflate_first_conv(state: Mapping[str, torch.Tensor], key: str, channels: int) -> dict[str, torch.Tensor]:
    """Give the first conv ``key`` of an RGB state_dict ``channels`` inputs by channel-averaging."""
    state = dict(state)
    weight = state.get(key)
    if weight is not None and weight.ndim == 5 and weight.shape[1] != channels:
        state[key] = weight.mean(dim=1, keepdim=True).repeat(1, channels, 1, 1, 1).contiguous()
    return state
