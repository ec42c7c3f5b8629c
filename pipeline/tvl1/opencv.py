"""Dual TV-L1 optical flow through OpenCV: the reference implementation, and the flow stage's
``opencv`` backend (:func:`opencv_video`, one video per worker process).

The algorithm's parameters are :class:`pipeline.tvl1.params.TVL1Params`, shared with the
``torch`` backend (:mod:`pipeline.tvl1.solver`) and re-exported here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.core.runner import VideoTask
from pipeline.errors import ConfigError, InputError
from pipeline.io.artifacts import read_faces
from pipeline.tvl1.params import PARAM_KEYS, FlowParams, TVL1Params
from pipeline.tvl1.writer import to_float16, write_flow

__all__ = ["PARAM_KEYS", "TVL1Params", "check_pair", "create_opencv_tvl1", "opencv_flow_pair", "opencv_flow_video",
           "opencv_remap_subpixel", "opencv_video", "to_gray"]

log = logging.getLogger(__name__)


def to_gray(frames: np.ndarray, channel_order: str = "rgb", source: str = "frames") -> np.ndarray:
    """Frames ``[T, H, W, C]`` (C 3 or 1) or ``[T, H, W]`` uint8 -> grayscale ``[T, H, W]`` uint8.

    Colour frames go through ``cv2.cvtColor`` (``RGB2GRAY`` or ``BGR2GRAY`` by
    ``channel_order``), i.e. OpenCV's fixed-point luma exactly as the published tooling.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise InputError(f"{source}: frames are {frames.dtype}, expected uint8. Recreate the faces file (crop stage).")
    if frames.ndim == 3:
        return np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise InputError(f"{source}: frames have shape {frames.shape}, expected [T, H, W, C] with C = 1 or 3. "
                         "Recreate the faces file (crop stage).")
    if frames.shape[-1] == 1:
        return np.ascontiguousarray(frames[..., 0])
    if channel_order not in ("rgb", "bgr"):
        raise ConfigError(f"params.yaml: flow.channel_order '{channel_order}' must be rgb or bgr.")
    code = cv2.COLOR_RGB2GRAY if channel_order == "rgb" else cv2.COLOR_BGR2GRAY
    return np.stack([cv2.cvtColor(np.ascontiguousarray(f), code) for f in frames])


def check_pair(i0: np.ndarray, i1: np.ndarray, source: str = "pair") -> None:
    """Refuse a pair that OpenCV would assert on: different sizes, not 2-D, too small."""
    if i0.ndim != 2 or i1.ndim != 2:
        raise InputError(f"{source}: frames must be 2-D grayscale, got shapes {i0.shape} and {i1.shape}.")
    if i0.shape != i1.shape:
        raise InputError(f"{source}: the two frames differ in size ({i0.shape} vs {i1.shape}); all frames of a "
                         "video must have the crop size. Recreate the faces file (crop stage).")
    if min(i0.shape) < 3:
        raise InputError(f"{source}: frames of {i0.shape} are too small for TV-L1 (need at least 3x3).")


def create_opencv_tvl1(params: TVL1Params) -> Any:
    """``cv2.optflow.DualTVL1OpticalFlow_create`` with every parameter set from ``params``."""
    try:
        factory = cv2.optflow.DualTVL1OpticalFlow_create
    except AttributeError as exc:
        raise ConfigError("cv2.optflow is missing: install opencv-contrib-python (or -headless), "
                          "not plain opencv-python.") from exc
    # positional: the keyword names differ between bindings (lambda_, innnerIterations)
    return factory(float(params.tau), float(params.lambda_), float(params.theta), int(params.nscales),
                   int(params.warps), float(params.epsilon), int(params.inner_iterations),
                   int(params.outer_iterations), float(params.scale_step), float(params.gamma),
                   int(params.median_filtering), bool(params.use_initial_flow))


def opencv_flow_pair(i0: np.ndarray, i1: np.ndarray, params: TVL1Params, algo: Any = None) -> np.ndarray:
    """Flow ``[H, W, 2]`` float32 (u, v) from grayscale uint8 ``i0`` to ``i1`` with OpenCV."""
    check_pair(i0, i1)
    algo = algo if algo is not None else create_opencv_tvl1(params)
    return algo.calc(np.ascontiguousarray(i0), np.ascontiguousarray(i1), None)


def opencv_flow_video(gray: np.ndarray, params: TVL1Params, source: str = "video", progress: bool = False
                      ) -> np.ndarray:
    """Flow ``[T-1, H, W, 2]`` float32 between consecutive grayscale frames ``[T, H, W]``."""
    if gray.ndim != 3:
        raise InputError(f"{source}: expected grayscale frames [T, H, W], got shape {gray.shape}.")
    if gray.shape[0] < 2:
        raise InputError(f"{source}: has {gray.shape[0]} frame(s); flow needs at least 2. Drop the video from "
                         "the dataset or fix its frames.")
    algo = create_opencv_tvl1(params)
    out = np.empty((gray.shape[0] - 1, *gray.shape[1:], 2), dtype=np.float32)
    pairs = range(gray.shape[0] - 1)
    if progress:
        from tqdm.auto import tqdm
        pairs = tqdm(pairs, desc=f"flow {source}", unit="pair", leave=False)
    for t in pairs:
        check_pair(gray[t], gray[t + 1], f"{source} frames {t}-{t + 1}")
        out[t] = algo.calc(gray[t], gray[t + 1], None)
    return out


def opencv_remap_subpixel() -> int:
    """How the installed OpenCV positions ``remap(INTER_CUBIC)`` taps: 32 (1/32-pixel fixed point,
    OpenCV 4.x) or 0 (exact float coordinates, OpenCV 5.x). Measured, not guessed from the version.
    """
    rng = np.random.default_rng(0)
    img = (rng.random((8, 8)) * 255).astype(np.float32)
    # x = 3 + 0.515: the 1/32 grid rounds it to 0.5 (16/32); the exact position differs by 0.015
    mx = np.full((1, 1), 3.515, np.float32)
    my = np.full((1, 1), 3.0, np.float32)
    got = float(cv2.remap(img, mx, my, cv2.INTER_CUBIC)[0, 0])

    def cubic(x: float) -> np.ndarray:
        a = -0.75
        return np.array([((a * (x + 1) - 5 * a) * (x + 1) + 8 * a) * (x + 1) - 4 * a,
                         ((a + 2) * x - (a + 3)) * x * x + 1,
                         ((a + 2) * (1 - x) - (a + 3)) * (1 - x) ** 2 + 1,
                         0.0])

    def predict(frac: float) -> float:
        w = cubic(frac)
        w[3] = 1 - w[:3].sum()
        return float(img[3, 2:6] @ w)

    exact, quantised = predict(0.515), predict(0.5)
    mode = 0 if abs(got - exact) < abs(got - quantised) else 32
    log.debug("OpenCV %s remap INTER_CUBIC positions: %s", cv2.__version__, "exact" if mode == 0 else "1/32 pixel")
    return mode


def opencv_video(task: VideoTask) -> int:
    """The flow stage's per-video function for ``opencv`` (runs in a worker process): reads the faces
    file ``payload["faces"]``, solves every pair on one thread and writes the flow file; returns the pair count."""
    cv2.setNumThreads(1)
    pl = task.payload
    tvl1 = TVL1Params.from_params(pl["section"], others=(FlowParams,))
    frames = read_faces(Path(pl["faces"]), task.video)
    gray = to_gray(frames, pl["channel_order"], f"{pl['faces']} (video {task.video})")
    algo = create_opencv_tvl1(tvl1)
    flow = np.empty((len(gray) - 1, *gray.shape[1:], 2), dtype=np.float16)
    for t in range(len(gray) - 1):
        flow[t] = to_float16(algo.calc(gray[t], gray[t + 1], None), task.video)
    write_flow(task, flow, pl["attrs"], pl["section"], pl["compression"])
    return len(flow)
