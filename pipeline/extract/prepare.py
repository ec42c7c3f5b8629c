"""Device-side preparation of a video for the model: normalise, resize, cut into clip views.

Frames arrive on the device as uint8 and flow as float16 (or as the published uint8 levels,
``features.flow_quantize: jpeg``); each is normalised and resized
there once per frame (:func:`prepare_rgb`, :func:`prepare_flow`), and clips are strided
views of the result (:func:`clip_views`), ``clip_count(T)`` of them per video.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.extract.flow_jpeg import level_values

PREPARE_CHUNK = 256  # frames normalised/resized at a time on the device (bounds fp32 scratch memory)


def clip_count(n_frames: int, clip: int = 8, stride: int = 2) -> int:
    """Clips in a video of ``n_frames`` frames: (T - 1 - clip) // stride + 1, or 0 when T - 1 < clip."""
    usable = n_frames - 1
    return 0 if usable < clip else (usable - clip) // stride + 1


def _resize_frames(x: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    """Resize [T, H, W, C] float frames to [T, size, size, C] (bilinear)."""
    if x.shape[1] == size and x.shape[2] == size:
        return x
    y = F.interpolate(x.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False,
                      antialias=antialias and (x.shape[1] > size or x.shape[2] > size))
    return y.permute(0, 2, 3, 1)


def prepare_rgb(frames: torch.Tensor, size: int, dtype: torch.dtype = torch.float32,
                antialias: bool = True, chunk: int = PREPARE_CHUNK) -> torch.Tensor:
    """uint8 frames [T, H, W, C] -> model input frames [T-1, size, size, 3] in [-1, 1].

    The last frame is dropped (RGB and flow then give the same clip count); grayscale
    (C = 1) is replicated to 3 channels; work is done in float32 ``chunk`` frames at a time.
    """
    n = frames.shape[0] - 1
    out = torch.empty((max(n, 0), size, size, 3), dtype=dtype, device=frames.device)
    for a in range(0, n, chunk):
        x = frames[a:min(a + chunk, n)].float().mul_(1.0 / 127.5).sub_(1.0)
        if x.shape[-1] == 1:
            x = x.expand(-1, -1, -1, 3)
        out[a:a + x.shape[0]] = _resize_frames(x, size, antialias)
    return out


def prepare_flow(flow: torch.Tensor, size: int, bound: float = 15.0, dtype: torch.dtype = torch.float32,
                 antialias: bool = True, chunk: int = PREPARE_CHUNK) -> torch.Tensor:
    """Flow fields [T-1, H, W, 2] (pixels) -> [T-1, size, size, 2] clipped to ±bound, divided by bound.

    uint8 flow is the published 0-255 levels (:func:`pipeline.extract.flow_jpeg.quantize_flow`,
    already at ±bound): each level becomes the published ``k * 2 / 255 - 1`` instead.
    """
    n = flow.shape[0]
    out = torch.empty((n, size, size, 2), dtype=dtype, device=flow.device)
    table = torch.from_numpy(level_values()).to(flow.device) if flow.dtype == torch.uint8 else None
    for a in range(0, n, chunk):
        if table is not None:
            x = table[flow[a:a + chunk].long()]
        else:
            x = flow[a:a + chunk].float().clamp_(-bound, bound).div_(bound)
        out[a:a + x.shape[0]] = _resize_frames(x, size, antialias)
    return out


def clip_views(x: torch.Tensor, clip: int, stride: int) -> torch.Tensor:
    """Strided clip views [N, C, clip, H, W] of prepared frames [T, H, W, C] (no copy)."""
    if x.shape[0] < clip:
        return x.new_empty((0, x.shape[3], clip, x.shape[1], x.shape[2]))
    return x.unfold(0, clip, stride).permute(0, 3, 4, 1, 2)


def host_tensor(array: np.ndarray | torch.Tensor, dtype: type) -> torch.Tensor:
    """A host tensor of ``array`` (kept as is when it is already a tensor, e.g. pinned)."""
    if isinstance(array, torch.Tensor):
        return array
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
