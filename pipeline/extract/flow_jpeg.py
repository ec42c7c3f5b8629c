"""The published store-and-read path of optical flow: 0-255 levels, one grayscale JPEG per component.

``features.flow_quantize: jpeg`` makes the features backbone read the flow as the published
tooling's I3D extractor read it; ``none`` reads the stored float16 flow as it is. The
published path (LGSNet's tooling, which IAENet's code builds on; public repository
``williamlee91/LGSNet``):

* ``extract_optical_flow.py``, ``compute_TVL1(prev, curr, bound=15)``: the float32 TV-L1 field
  becomes ``np.round((flow + bound) * (255.0 / (2 * bound))).astype(int)``, then values
  ``>= 255`` are set to 255 and ``<= 0`` to 0 (NumPy rounds half to even: 0 px -> 127.5 -> 128;
  -14 px -> 8.5 -> 8; 2 px -> 144.5 -> 144; beyond ±15 px clipped to 0 / 255);
  ``save_flow``: ``cv2.imwrite(u/%06d.jpg, flow[:, :, 0])`` and ``v/...`` ``flow[:, :, 1]``:
  x and y as separate one-channel JPEGs at OpenCV's default quality, 95;
* ``pytorch-i3d-feature-extraction/extract_features.py``, ``load_frame``: PIL opens the JPEG,
  (``sample_mode resize``) resizes it to 224x224 in 8 bits, and scales it by
  ``data * 2 / 255 - 1`` (float64, then float32 for the network): level 128, i.e. 0 px,
  reads as +1/255, not 0.

Here (:func:`quantize_flow`): the levels as above at ``features.flow_bound`` (15), each
component of each field encoded and decoded with OpenCV at quality 95, on the CPU before
the video moves to the device; the backbone then reads the decoded levels through
:func:`level_values` (the published ``k * 2 / 255 - 1``, for I3D) or :func:`dequantize`
(those values x bound in pixels, for roi_flow). Not reproduced: the published tooling
quantised the flow of its 400x400 / 600x600 crops and resized the decoded 8-bit JPEG to 224
with PIL; m2es quantises the flow of its own crops and resizes float values, when at all,
after this step. Decoding with OpenCV instead of PIL gives the same pixels, and the published
``int`` array through ``cv2.imwrite`` the same file (both checked in
tests/extract/test_flow_jpeg.py). Cost: about 2-3.5 ms per 112-px field (two JPEGs) and 7 ms
per 224-px field on one busy CPU core, in the reader thread, before the video moves to the device.
"""

from __future__ import annotations

import cv2
import numpy as np

FLOW_QUANTIZE: tuple[str, ...] = ("jpeg", "none")  # features.flow_quantize
JPEG_QUALITY = 95  # cv2.imwrite's default, what the published tooling wrote with
LEVELS = 256


def flow_levels(flow: np.ndarray, bound: float = 15.0) -> np.ndarray:
    """Flow [..., 2] in pixels -> the published uint8 levels: round-half-even((f + bound) * 255 / (2 bound)), clipped.

    Computed in float32, as the published code did on OpenCV's float32 field.
    """
    f = np.asarray(flow, dtype=np.float32)
    scaled = (f + np.float32(bound)) * np.float32(255.0 / (2 * bound))
    return np.clip(np.round(scaled), 0, LEVELS - 1).astype(np.uint8)


def jpeg_roundtrip(levels: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """Each component of each field of uint8 levels [T, H, W, 2] through a one-channel JPEG and back."""
    out = np.empty_like(levels)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    for t in range(levels.shape[0]):
        for c in range(levels.shape[-1]):
            ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(levels[t, :, :, c]), params)
            if not ok:
                raise RuntimeError(f"OpenCV could not encode flow field {t} component {c} as JPEG.")
            out[t, :, :, c] = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return out


def quantize_flow(flow: np.ndarray, bound: float = 15.0, quality: int = JPEG_QUALITY) -> np.ndarray:
    """Flow [T, H, W, 2] in pixels -> uint8 levels [T, H, W, 2] as the published I3D extractor decoded them."""
    return jpeg_roundtrip(flow_levels(flow, bound), quality)


def level_values() -> np.ndarray:
    """float32 [256]: what the published extractor fed I3D for each level, ``k * 2 / 255 - 1`` (in float64, then
    float32)."""
    return (np.arange(LEVELS, dtype=np.float64) * 2 / 255 - 1).astype(np.float32)


def dequantize(levels: np.ndarray, bound: float = 15.0) -> np.ndarray:
    """uint8 levels -> float32 flow in pixels: :func:`level_values` x ``bound`` (level 128 -> +bound/255)."""
    return (level_values() * np.float32(bound))[np.asarray(levels)]
